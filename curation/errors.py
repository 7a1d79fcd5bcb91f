"""Errors raised for input that cannot be read at all.

Row-level problems never raise: they become rows of the rejected table. A ``SourceError`` is for
the whole input (missing, empty, not the named format) and carries the file so the CLI can print
one clear line instead of a traceback.
"""

from __future__ import annotations


class SourceError(Exception):
    """The input as a whole cannot be read."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
