"""Atomic Parquet writes: a crash never leaves a half-written file that a later stage reads."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import polars as pl


def write_parquet(frame: pl.DataFrame | pl.LazyFrame, path: Path) -> Path:
    """Write to a temporary sibling, then rename over the target (atomic on one filesystem)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        if isinstance(frame, pl.LazyFrame):
            frame.sink_parquet(tmp)
        else:
            frame.write_parquet(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
