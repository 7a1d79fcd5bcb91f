"""FLAN collection reader: ``inputs``/``targets`` pairs with their task fields.

Built for a million rows: records are decoded by msgspec in C, columns come out with list
comprehensions, and the message lists, option detection, ids and meta are polars expressions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import msgspec
import polars as pl

from curation.filters.options import OPTIONS_PATTERN
from curation.filters.options import has_options as has_options  # the flag, for one prompt
from curation.ingest import IngestResult, ReadOptions
from curation.readers.common import (
    meta_for_groups,
    positional_labels,
    read_each,
    rejected_frame,
    source_name,
    text_messages,
    with_ids,
)
from curation.records import read_records

# The option detection (OPTIONS_PATTERN, has_options) lives with the options filter: one pattern
# for the reader's ``has_options`` meta flag and the filter's ``options.explicit`` rule, so the
# two never disagree. Its Python regex compiles on first use, not when this reader is imported.

META_KEYS = ("task_source", "task_name", "template_type", "has_options")


class FlanRow(msgspec.Struct, gc=False):  # gc=False: a million structs, no GC traversal cost
    inputs: str
    targets: str
    task_source: str | None = None
    task_name: str | None = None
    template_type: str | None = None
    lang: str | None = None
    id: str | int | None = None


def read_flan(paths: Sequence[Path], options: ReadOptions) -> IngestResult:
    source = source_name(options, "flan")
    labels = positional_labels(paths)
    return read_each(paths, lambda path: _read_file(path, source, labels[path]))


def _read_file(path: Path, source: str, label: str) -> IngestResult:
    """One file; ``label`` names its rows that have no id (``label:line``)."""
    records = read_records(path, FlanRow, source)
    items = records.items
    ids = [row.id for row in items]
    # Most FLAN exports carry no id: skip the per-row str() when none does.
    has_ids = any(value is not None for value in ids)
    data = pl.DataFrame(
        {
            "inputs": [row.inputs for row in items],
            "targets": [row.targets for row in items],
            "task_source": [row.task_source for row in items],
            "task_name": [row.task_name for row in items],
            "template_type": [row.template_type for row in items],
            "lang": [row.lang for row in items],
            "raw_id": [None if v is None else str(v) for v in ids] if has_ids else None,
            "line": records.lines,
        },
        schema={
            "inputs": pl.String,
            "targets": pl.String,
            "task_source": pl.String,
            "task_name": pl.String,
            "template_type": pl.String,
            "lang": pl.String,
            "raw_id": pl.String,
            "line": pl.Int64,
        },
    )
    data = data.with_columns(has_options=pl.col("inputs").str.contains(OPTIONS_PATTERN))
    data = data.with_columns(meta=meta_for_groups(data, META_KEYS))
    conversations = data.select(
        source_id=pl.coalesce(pl.col("raw_id"), pl.format("{}:{}", pl.lit(label), pl.col("line"))),
        lang=pl.col("lang").fill_null("en"),
        messages=text_messages(data, ("user", "inputs"), ("assistant", "targets")),
        meta=pl.col("meta"),
        line=pl.col("line"),
    )
    conversations = with_ids(conversations, source, str(path))
    return IngestResult.build(
        conversations=conversations, rejected=rejected_frame(records.rejected)
    )
