"""One raw row forward: found by any name a user has for it (our id, a source's own id, a message
id inside a thread, FILE:LINE of the raw file, a feedback pair's id), then every rejection,
verdict, dataset and checkpoint it reached."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from curation.schema import stable_id
from curation.trace.catalog import Catalog, load_catalog
from curation.trace.claims import REWARD, TRAINED, checkpoint_hits
from curation.trace.datasets import dataset_ids
from curation.trace.errors import TraceError

FILE_LINE = re.compile(r"^(?P<file>.+):(?P<line>\d+)$")


def _candidate_ids(query: str, catalog: Catalog) -> set[str]:
    """Our id itself, and the id every known source would give ``query`` as its source id (how
    rows excluded at ingest, which have only a ledger entry, are found by source id)."""
    return {query, *(stable_id(source, query) for source in catalog.sources)}


def _file_line_filter(query: str) -> pl.Expr | None:
    match = FILE_LINE.match(query)
    if not match:
        return None
    name, line = match["file"], int(match["line"])
    file_matches = (pl.col("file") == name) | pl.col("file").str.ends_with("/" + name)
    return file_matches & (pl.col("line") == line)


def _matching_rows(query: str, candidates: set[str], catalog: Catalog) -> pl.DataFrame:
    rows = catalog.rows
    match = (
        pl.col("id").is_in(list(candidates))
        | (pl.col("source_id") == query)
        | pl.col("source_ids").list.contains(query).fill_null(False)
    )
    by_file = _file_line_filter(query)
    if by_file is not None:
        match = match | by_file.fill_null(False)
    found = rows.filter(match)
    if found.height == 0:
        # An OpenAssistant message id inside a thread (provenance ids), only when nothing else
        # matched: every thread through that message, not one row.
        found = rows.filter(pl.col("provenance_ids").list.contains(query).fill_null(False))
    return found


def _records(frame: pl.DataFrame, columns: Sequence[str]) -> list[dict[str, Any]]:
    return frame.select(columns).to_dicts()


def _dataset_hits(outputs: Path, ids: set[str]) -> list[dict[str, Any]]:
    root = outputs / "datasets"
    hits = []
    if not root.is_dir():
        return hits
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for split in ("train", "test"):
            split_ids = dataset_ids(folder, split)
            if not split_ids:
                continue
            present = pl.Series("id", split_ids, dtype=pl.String)
            found = present.filter(present.is_in(list(ids))).value_counts().sort("id")
            for row_id, n in found.iter_rows():  # by id: value_counts' order varies by run
                hits.append(
                    {
                        "dataset": folder.name,
                        "split": split,
                        "id": row_id,
                        "rows": int(n),
                        "path": str(folder),
                    }
                )
    return hits


FEEDBACK_COLUMNS = ["id", "source", "source_id", "origin", "source_ids"]


def _feedback_pairs(query: str, ids: set[str], catalog: Catalog) -> pl.DataFrame:
    """Feedback pairs that are ``query`` itself, or were built from one of ``ids`` (their
    ``source_ids``: the prompt row, then the two candidate answers)."""
    wanted = list(ids | {query})
    return catalog.feedback.filter(
        (pl.col("id") == query)
        | pl.col("source_ids").list.eval(pl.element().is_in(wanted)).list.any().fill_null(False)
    )


def trace_row(query: str, outputs: str | Path) -> dict[str, Any]:
    """Follow one raw row forward. ``query`` is our row id, a source's own id, a message id
    inside an OpenAssistant thread, ``FILE:LINE`` of the raw file, or a feedback pair's id.
    Raises ``TraceError`` naming the places searched when nothing matches."""
    catalog = load_catalog(outputs)
    query = query.strip()
    candidates = _candidate_ids(query, catalog)
    rows = _matching_rows(query, candidates, catalog)
    ids = set(rows["id"]) | candidates
    # Preference pairs built from a matched conversation's source ids (OpenAssistant siblings).
    source_ids = set(rows["source_id"].drop_nulls())
    if source_ids:
        pairs = catalog.rows.filter(
            (pl.col("kind") == "preference")
            & pl.col("source_ids").list.eval(pl.element().is_in(list(source_ids))).list.any()
        )
        ids |= set(pairs["id"])
        rows = pl.concat([rows, pairs]).unique(subset=["id", "kind"], maintain_order=True)
    feedback = _feedback_pairs(query, set(rows["id"]), catalog)
    # A row that was never read has no id: its raw text may still carry the source's own id.
    reject_match = pl.lit(False)
    if rows.height == 0 and feedback.height == 0:
        reject_match = pl.col("raw").str.contains(json.dumps(query), literal=True).fill_null(False)
    by_file = _file_line_filter(query)
    if by_file is not None:
        reject_match = reject_match | by_file.fill_null(False)
    for file, line in rows.select("file", "line").drop_nulls().iter_rows():
        reject_match = reject_match | ((pl.col("file") == file) & (pl.col("line") == line))
    rejected = catalog.rejected.filter(reject_match)
    ledger = catalog.ledger.filter(pl.col("row_id").is_in(ids))
    states = catalog.states.filter(pl.col("row_id").is_in(ids))
    if rows.height == 0 and rejected.height == 0 and ledger.height == 0 and feedback.height == 0:
        raise TraceError(
            f"no row with id, source id or FILE:LINE {query!r} in {catalog.outputs}; looked in "
            + ", ".join(catalog.looked_in)
        )
    found_ids = set(rows["id"]) | set(ledger["row_id"]) | set(states["row_id"])
    found_ids |= set(feedback["id"])
    datasets = _dataset_hits(catalog.outputs, found_ids)
    # Every id found, not only those in a dataset now: a row removed since training must not
    # lose the checkpoints that may have learnt from it.
    checkpoints = checkpoint_hits(catalog.outputs, found_ids)
    return {
        "query": query,
        "outputs": str(catalog.outputs),
        "read": _records(
            rows, ["id", "kind", "source", "source_id", "asset", "file", "line", "source_ids"]
        ),
        "feedback_pairs": _records(feedback, FEEDBACK_COLUMNS),
        "ingest_rejects": {
            "unreadable": _records(
                rejected, ["asset", "source", "file", "line", "field", "reason"]
            ),
            "excluded": _records(
                ledger.filter(pl.col("stage") == "ingest"), ["asset", "row_id", "rule", "reason"]
            ),
        },
        "verdicts": _records(
            ledger, ["asset", "row_id", "stage", "rule", "verdict", "reason", "score"]
        ),
        "states": _records(states, ["asset", "row_id", "state", "rule", "reason"]),
        "datasets": datasets,
        "checkpoints": [h for h in checkpoints if h["status"] == TRAINED],
        "checkpoints_via_reward_model": [h for h in checkpoints if h["status"] == REWARD],
        "checkpoints_unverified": [h for h in checkpoints if h["status"] not in (TRAINED, REWARD)],
    }
