"""Reading the columns a trace needs from Parquet files the pipeline wrote. A cut-off or foreign
file becomes a TraceError naming it rather than a traceback from polars, and a column a file
lacks reads as nulls, so tables written before the column existed still trace."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from curation.trace.errors import TraceError


def _unreadable(path: Path, error: Exception) -> TraceError:
    reason = next(iter(str(error).strip().splitlines()), "") or type(error).__name__
    return TraceError(f"{path}: not a readable Parquet file ({reason})")


def parquet_schema(path: Path) -> dict[str, Any]:
    """The file's columns; a cut-off or foreign file is a TraceError naming it, not a traceback
    from polars."""
    try:
        return dict(pl.read_parquet_schema(path))
    except (pl.exceptions.PolarsError, OSError) as error:
        raise _unreadable(path, error) from None


def read_parquet(path: Path, columns: Sequence[str]) -> pl.DataFrame:
    try:
        return pl.read_parquet(path, columns=list(columns))
    except (pl.exceptions.PolarsError, OSError) as error:
        raise _unreadable(path, error) from None


def read_columns(paths: Sequence[Path], columns: Sequence[str]) -> pl.DataFrame | None:
    frames = []
    for path in paths:
        schema = parquet_schema(path)
        present = [c for c in columns if c in schema]
        frames.append(
            read_parquet(path, present).with_columns(
                *(pl.lit(None).alias(c) for c in columns if c not in schema)
            )
        )
    return pl.concat(frames, how="diagonal_relaxed") if frames else None
