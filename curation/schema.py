"""Canonical tables shared by every stage (see DESIGN.md, "Data model").

Readers produce these exact schemas so that every later stage, and the Parquet files on disk, agree
on column names and types whatever the source was.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import polars as pl

ROLES = ("system", "user", "assistant")

MESSAGE = pl.Struct({"role": pl.String, "content": pl.String})
MESSAGES = pl.List(MESSAGE)

# Where a row came from: the raw file, the 1-based line (the 1-based row index for Parquet and HF
# datasets, the same number rejected rows use), and the source's own ids (OpenAssistant message
# ids along a thread).
PROVENANCE = pl.Struct({"file": pl.String, "line": pl.Int64, "ids": pl.List(pl.String)})

CONVERSATIONS = pl.Schema(
    {
        "id": pl.String,
        "source": pl.String,
        "source_id": pl.String,
        "lang": pl.String,
        "messages": MESSAGES,
        "meta": pl.String,  # JSON object: task, template type, labels, scores...
        "provenance": PROVENANCE,
    }
)

PREFERENCES = pl.Schema(
    {
        "id": pl.String,
        "source": pl.String,
        "source_id": pl.String,
        "lang": pl.String,
        "prompt": MESSAGES,
        "chosen": MESSAGES,
        "rejected": MESSAGES,
        "origin": pl.String,  # human | ai | rule
        "margin": pl.Float64,
        "judge": pl.String,  # JSON: judge model and template version, null for human pairs
        "source_ids": pl.List(pl.String),
        "provenance": PROVENANCE,
    }
)

# Rows that could not be read: nothing is dropped silently, it lands here with the reason.
REJECTED = pl.Schema(
    {
        "source": pl.String,
        "file": pl.String,
        "line": pl.Int64,
        "field": pl.String,
        "reason": pl.String,
        "raw": pl.String,
    }
)

# One row per rule that fired on a row, in any stage (ingest, curate, ...).
LEDGER = pl.Schema(
    {
        "row_id": pl.String,
        "stage": pl.String,
        "rule": pl.String,
        "verdict": pl.String,  # keep | drop | rewrite | flag
        "reason": pl.String,
        "score": pl.Float64,
    }
)

RAW_PREVIEW_CHARS = 2000


def empty(schema: pl.Schema) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


def frame(rows: Iterable[dict], schema: pl.Schema) -> pl.DataFrame:
    """Build a frame of exactly ``schema`` from dict rows (missing keys become null)."""
    rows = list(rows)
    if not rows:
        return empty(schema)
    return pl.DataFrame(
        rows, schema=schema, orient="row" if not isinstance(rows[0], dict) else None
    )


def stable_id(source: str, source_id: str) -> str:
    """A short id that stays the same across runs, machines and library versions."""
    digest = hashlib.blake2b(f"{source}\x1f{source_id}".encode(), digest_size=8)
    return digest.hexdigest()


def stable_id_expr(source: pl.Expr | str, source_id: pl.Expr) -> pl.Expr:
    """``stable_id`` as a polars expression, for whole columns at once."""
    source_expr = pl.lit(source) if isinstance(source, str) else source
    key = pl.concat_str([source_expr, pl.lit("\x1f"), source_id])
    return key.map_batches(
        lambda keys: pl.Series(
            [hashlib.blake2b(k.encode(), digest_size=8).hexdigest() for k in keys],
            dtype=pl.String,
        ),
        return_dtype=pl.String,
    )


def rejected_row(
    source: str,
    file: str,
    line: int | None,
    reason: str,
    raw: str | bytes = "",
    field: str | None = None,
) -> dict:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    return {
        "source": source,
        "file": file,
        "line": line,
        "field": field,
        "reason": reason,
        "raw": raw[:RAW_PREVIEW_CHARS],
    }


def ledger_row(
    row_id: str, stage: str, rule: str, verdict: str, reason: str, score: float | None = None
) -> dict:
    return {
        "row_id": row_id,
        "stage": stage,
        "rule": rule,
        "verdict": verdict,
        "reason": reason,
        "score": score,
    }
