"""One dataset a stage's lineage names, traced back: whether its row ids and content still hash
to what training recorded, which rows the stage left out and why, and the raw files and drops
behind the rows it used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from curation.storage import MANIFEST
from curation.trace.catalog import Catalog
from curation.trace.datasets import (
    DATASET_PARTS,
    content_check,
    dataset_ids,
    hf_dataset_ids,
    ids_sha256,
    missing_dataset_files,
)
from curation.trace.lineage import left_out_ids
from curation.trace.locate import relocate


def _count_dict(frame: pl.DataFrame, key: str, value: str = "len") -> dict[str, int]:
    return {str(k): int(v) for k, v in frame.select(key, value).iter_rows()}


def _left_out_reasons(entry: dict[str, Any], lineage: dict[str, Any]) -> dict[str, int]:
    """Why the stage left rows of the train split out, as it counted them: ``inputs.dropped``
    (reason → per-split counts: DPO, reward), or SFT's count of conversations with no answer
    within ``max_length``. Counts only: lineage names left-out ids, not each one's reason."""
    reasons: dict[str, int] = {}
    dropped = entry.get("dropped")
    if isinstance(dropped, dict):
        for reason, counts in dropped.items():
            n = counts.get("train") if isinstance(counts, dict) else counts
            if isinstance(n, int) and not isinstance(n, bool) and n > 0:
                reasons[str(reason)] = n
    metrics = lineage.get("metrics")
    if isinstance(metrics, dict):
        for key in LEFT_OUT_METRICS:
            n = metrics.get(key)
            if isinstance(n, int) and not isinstance(n, bool) and n > 0:
                reasons.setdefault(key, n)
    return reasons


# Metrics that count the train rows a stage left out (SFT: no assistant token within max_length).
LEFT_OUT_METRICS = ("without_answer_within_max_length",)


def dataset_report(
    entry: dict[str, Any], lineage: dict[str, Any], catalog: Catalog, digests: dict[Path, str]
) -> dict[str, Any]:
    recorded_data = entry.get("data")
    folder = relocate(recorded_data, catalog.outputs)
    report: dict[str, Any] = {
        "dataset": entry.get("asset") or (Path(recorded_data).name if recorded_data else None),
        "data": str(folder) if folder else None,
        "data_recorded": recorded_data,
        "row_ids_sha256": entry.get("row_ids_sha256"),
        "problems": [],
        "notes": [],
    }
    problems = report["problems"]
    if folder is None:
        problems.append(f"dataset {recorded_data} not found")
        return report
    manifest = folder / DATASET_PARTS / MANIFEST
    problems += [
        f"{path}: named in {manifest} but missing (the split is counted without it)"
        for path in missing_dataset_files(folder)
    ]
    train = dataset_ids(folder, "train")
    if train is None:
        problems.append(f"{folder}: no train.parquet and no parts/{MANIFEST}")
        return report
    test = dataset_ids(folder, "test") or []
    left_out = left_out_ids(entry)
    used = [i for i in train if i not in left_out]
    skipped = [i for i in train if i in left_out]
    report["rows"] = {
        "train": len(train),
        "test": len(test),
        "train_unique": len(set(train)),
        "left_out": len(skipped),
        "used": len(used),
    }
    recorded_hash = entry.get("row_ids_sha256")
    checks = {"parquet": ids_sha256(train)}
    hf = hf_dataset_ids(folder, "train")
    if hf is not None:
        checks["hf"] = ids_sha256(hf)
    report["hash_check"] = {
        form: {"sha256": digest, "ok": digest == recorded_hash} for form, digest in checks.items()
    }
    if not recorded_hash:
        problems.append("lineage records no row_ids_sha256")
    for form, check in report["hash_check"].items():
        if recorded_hash and not check["ok"]:
            problems.append(
                f"row-id hash mismatch: {folder} ({form}) has {check['sha256'][:12]}…, lineage "
                f"recorded {recorded_hash[:12]}…; the dataset changed after training"
            )
    content = content_check(entry, folder, catalog.outputs, digests)
    report["content_check"] = content
    if content is not None and not content["ok"]:
        found = content.get("error") or f"has {str(content['found'])[:12]}…"
        problems.append(
            f"content digest mismatch: {folder} {found}, lineage recorded data_sha256 "
            f"{content['recorded'][:12]}…; the dataset's files changed after training (rows "
            "rewritten under the same ids count)"
        )
    reasons = _left_out_reasons(entry, lineage)
    report["left_out"] = {"rows": len(skipped), "reasons": reasons}
    ids_hold = bool(recorded_hash) and all(c["ok"] for c in report["hash_check"].values())
    report["notes"] += _left_out_notes(entry, len(used), len(skipped), ids_hold)
    report.update(_raw_behind(used, skipped, catalog))
    if report["unresolved_ids"]:
        problems.append(
            f"{report['unresolved_ids']} row ids not found in the raw tables of {catalog.outputs}"
        )
    return report


def _left_out_notes(entry: dict[str, Any], used: int, skipped: int, ids_hold: bool) -> list[str]:
    """Where the lineage's own counts say the stage trained on fewer rows than the split less
    its ``row_ids_left_out``: the trace then attributes rows the stage skipped without naming
    them. Checked only while the split is the one trained on (its row-id hash holds). Notes,
    not problems: the chain is whole, the attribution is what is inexact."""
    if not ids_hold:
        return []
    notes = []
    recorded = entry.get("rows_used")
    if recorded is not None and recorded != used:
        notes.append(
            f"lineage records rows_used {recorded}, but the train split less the {skipped} rows "
            f"in row_ids_left_out holds {used}: which rows make the difference is not recorded"
        )
    dropped = _left_out_reasons(entry, {})
    if "row_ids_left_out" in entry and sum(dropped.values()) > skipped:
        counted = ", ".join(f"{k} {n}" for k, n in dropped.items())
        notes.append(
            f"lineage counts {sum(dropped.values())} train rows dropped ({counted}) but names "
            f"{skipped} in row_ids_left_out: the rest are counted here as used"
        )
    return notes


def _raw_behind(used_ids: list[str], left_out_ids: list[str], catalog: Catalog) -> dict[str, Any]:
    """Raw files and counts behind the train rows the stage used, the rows it left out (by raw
    file), and the rows from those files that the pipeline dropped on the way (unreadable,
    excluded at ingest, dropped by curation)."""
    used = pl.DataFrame({"id": used_ids}, schema={"id": pl.String}).group_by("id").len("uses")
    skipped = pl.DataFrame({"id": left_out_ids}, schema={"id": pl.String}).unique()
    feedback_ids = catalog.feedback.select("id")
    rows = catalog.rows.join(used, on="id", how="inner")
    feedback = used.join(feedback_ids, on="id", how="semi").height
    unresolved = (
        used.join(catalog.rows.select("id"), on="id", how="anti")
        .join(feedback_ids, on="id", how="anti")
        .height
    )
    by_file = (
        rows.group_by("asset", "file", "kind")
        .agg(pl.len().alias("rows"), pl.col("uses").sum().alias("uses"))
        .sort("asset", "file", nulls_last=True)
    )
    files = set(by_file["file"].drop_nulls())
    assets = set(by_file["asset"].drop_nulls())
    kinds = set(by_file["kind"])
    rejected = catalog.rejected.filter(pl.col("file").is_in(files))
    excluded = catalog.ledger.filter(
        (pl.col("stage") == "ingest")
        & (pl.col("verdict") == "drop")
        & pl.col("asset").is_in(assets)
    )
    dropped = (
        catalog.states.filter(pl.col("state") == "dropped")
        .join(catalog.rows.select("id", "file", "kind"), left_on="row_id", right_on="id")
        .filter(pl.col("file").is_in(files) & pl.col("kind").is_in(kinds))
    )
    left_out_files = (
        catalog.rows.join(skipped, on="id", how="semi")
        .group_by("file")
        .len()
        .sort("file", nulls_last=True)
    )
    # Read from the same files, neither dropped, left out, nor in this train split: the test
    # split, rows the dataset does not select (SFT needs a final assistant turn), or left out of
    # a mixture.
    elsewhere = (
        catalog.rows.filter(pl.col("file").is_in(files) & pl.col("kind").is_in(kinds))
        .join(used, on="id", how="anti")
        .join(skipped, on="id", how="anti")
        .join(dropped.select(pl.col("row_id").alias("id")), on="id", how="anti")
    )
    return {
        "raw_files": [
            {"asset": a, "file": f, "kind": k, "rows": r, "uses": u}
            for a, f, k, r, u in by_file.iter_rows()
        ],
        "unresolved_ids": unresolved,
        "feedback_pairs": feedback,
        "left_out_raw_files": {
            str(f): int(n) for f, n in left_out_files.iter_rows() if f is not None
        },
        "dropped": {
            "unreadable": _count_dict(rejected.group_by("file").len().sort("file"), "file"),
            "excluded_at_ingest": _count_dict(excluded.group_by("rule").len().sort("rule"), "rule"),
            "curation": {
                f"{asset}:{rule}": int(n)
                for asset, rule, n in dropped.group_by("asset", "rule")
                .len()
                .sort("asset", "rule")
                .iter_rows()
            },
            "left_out_by_stage": (
                {"left out by the stage": len(left_out_ids)} if left_out_ids else {}
            ),
            "not_in_train": {"test split, not selected or not mixed in": elsewhere.height},
        },
    }
