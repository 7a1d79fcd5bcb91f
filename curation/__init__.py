"""Pure data logic for postforge: schemas, readers, profiling, filters, judging, mixing.

Nothing in this package imports dagster; the assets in ``assets/`` are thin wrappers around it.
"""
