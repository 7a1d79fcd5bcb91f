"""Word lists the safety filter builds its patterns from.

Kept as Python modules rather than data files so that they ship inside the wheel without any
package-data configuration.
"""
