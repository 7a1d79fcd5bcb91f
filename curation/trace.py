"""Row-level lineage: from a checkpoint back to the raw rows behind it, and from one raw row forward
to every verdict, dataset and checkpoint it reached.

Everything is read from the files the pipeline already writes under the outputs folder (raw
assets with provenance, ledgers, exported datasets, each checkpoint's lineage.json), so a trace
needs no Dagster instance and works on outputs copied to another machine. Recorded absolute
paths that no longer exist are re-anchored under the outputs folder by their longest existing
tail, and the report shows both paths, so relocation is visible rather than silent.

The results are plain dicts (JSON-ready) so the CLI can print them and an asset can attach them
as metadata; ``format_*`` turn them into text tables.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from curation.curate import STATES
from curation.folders import current_folder, set_folders
from curation.schema import LEDGER, REJECTED, stable_id
from curation.storage import MANIFEST, read_manifest

LINEAGE = "lineage.json"
RAW_PREFIX = "raw_"
# Members of a raw asset folder that hold rows that were read, and what kind of row each is.
READ_TABLES = {"conversations": "conversation", "preferences": "preference", "texts": "text"}
# The combined assets, used when the per-source raw folders are absent.
COMBINED_TABLES = {
    "conversations": "conversation",
    "preferences_human": "preference",
    "pretrain_corpus": "text",
}
INGEST_REJECTS = "ingest_rejects"
SKIPPED_DIRS = {"datasets", "checkpoints", "evaluation"}
FILE_LINE = re.compile(r"^(?P<file>.+):(?P<line>\d+)$")


class TraceError(ValueError):
    """What was asked for is not in the outputs; the message says where we looked."""


# --- reading the outputs folder -----------------------------------------------------------------


def _members(folder: Path, member: str) -> list[Path]:
    """``folder/member.parquet``; or, for a table stored as parts, the member in each part its
    manifest names (never a part being written); or the member in each partition sub-folder.

    A set of tables is replaced whole (curation.folders): its current contents are in
    ``current_folder`` (the set a killed write moved aside, when that is all there is), never
    in a ``.NAME.tmp-*`` staging folder or an ``.NAME.old-*`` set already replaced."""
    folder = current_folder(folder) or folder
    direct = folder / f"{member}.parquet"
    if direct.is_file():
        return [direct]
    table = read_manifest(folder)
    if table is not None:
        return table.paths(member) if member in table.members else []
    found = []
    for partition in set_folders(folder):
        path = (current_folder(partition) or partition) / f"{member}.parquet"
        if path.is_file():
            found.append(path)
    return found


def _asset_files(outputs: Path, name: str) -> list[Path]:
    """A frame asset: ``name.parquet``; or the parts its manifest names in ``name/``; or, when
    partitioned, ``name/<partition>.parquet``."""
    single = outputs / f"{name}.parquet"
    if single.is_file():
        return [single]
    folder = outputs / name
    table = read_manifest(folder)
    if table is not None and not table.members:
        return table.paths()
    return sorted(folder.glob("[!.]*.parquet")) if folder.is_dir() else []


def _scan(paths: Sequence[Path], columns: Sequence[str]) -> pl.DataFrame | None:
    frames = []
    for path in paths:
        schema = pl.read_parquet_schema(path)
        present = [c for c in columns if c in schema]
        frames.append(
            pl.read_parquet(path, columns=present).with_columns(
                *(pl.lit(None).alias(c) for c in columns if c not in schema)
            )
        )
    return pl.concat(frames, how="diagonal_relaxed") if frames else None


ROW_COLUMNS = ("id", "source", "source_id", "provenance", "source_ids")


def _read_rows(paths: Sequence[Path], kind: str, asset: str | None) -> pl.DataFrame | None:
    frame = _scan(paths, ROW_COLUMNS)
    if frame is None or frame.height == 0:
        return None
    provenance = pl.col("provenance")
    has_provenance = isinstance(frame.schema["provenance"], pl.Struct)
    return frame.select(
        pl.col("id").cast(pl.String),
        pl.col("source").cast(pl.String),
        pl.col("source_id").cast(pl.String),
        pl.lit(kind).alias("kind"),
        pl.lit(asset, dtype=pl.String).alias("asset"),
        (provenance.struct.field("file") if has_provenance else pl.lit(None))
        .cast(pl.String)
        .alias("file"),
        (provenance.struct.field("line") if has_provenance else pl.lit(None))
        .cast(pl.Int64)
        .alias("line"),
        (provenance.struct.field("ids") if has_provenance else pl.lit(None))
        .cast(pl.List(pl.String))
        .alias("provenance_ids"),
        pl.col("source_ids").cast(pl.List(pl.String)),
    )


def _raw_folders(outputs: Path) -> list[Path]:
    """Each raw asset's folder by its own name, also when a killed write left its set aside."""
    return [p for p in set_folders(outputs) if p.name.startswith(RAW_PREFIX)]


def _with_asset(frame: pl.DataFrame | None, asset: str) -> pl.DataFrame | None:
    return None if frame is None else frame.with_columns(asset=pl.lit(asset))


@dataclass
class Catalog:
    """Every row the pipeline read (with its raw file and line), every row it could not read,
    and every ledger entry, gathered once from an outputs folder."""

    outputs: Path
    rows: pl.DataFrame
    rejected: pl.DataFrame
    ledger: pl.DataFrame
    states: pl.DataFrame
    looked_in: list[str] = field(default_factory=list)
    # Pairs made from AI or human feedback (feedback_preferences): their ids are not raw rows.
    feedback_ids: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(schema={"id": pl.String})
    )

    @property
    def sources(self) -> list[str]:
        names = set(self.rows["source"].drop_nulls()) | set(self.states["source"].drop_nulls())
        return sorted(names)


ROWS_SCHEMA = {
    "id": pl.String,
    "source": pl.String,
    "source_id": pl.String,
    "kind": pl.String,
    "asset": pl.String,
    "file": pl.String,
    "line": pl.Int64,
    "provenance_ids": pl.List(pl.String),
    "source_ids": pl.List(pl.String),
}
# The ingest and ledger tables (curation/schema.py), each tagged with the asset it was read from.
REJECTED_SCHEMA = {"asset": pl.String, **REJECTED}
LEDGER_SCHEMA = {"asset": pl.String, **LEDGER}
STATES_SCHEMA = {"asset": pl.String, **STATES}
REJECTED_COLUMNS = tuple(REJECTED)
LEDGER_COLUMNS = tuple(LEDGER)
STATES_COLUMNS = tuple(STATES)


def _concat(frames: Iterable[pl.DataFrame | None], columns: dict[str, Any]) -> pl.DataFrame:
    present = [f for f in frames if f is not None and f.height]
    if not present:
        return pl.DataFrame(schema=columns)
    return pl.concat(present, how="diagonal_relaxed").select(
        pl.col(name).cast(dtype) for name, dtype in columns.items()
    )


FEEDBACK_PAIRS = "feedback_preferences"


def load_catalog(outputs: str | Path) -> Catalog:
    """Read what a trace needs (ids, provenance, ledgers; never message text) from ``outputs``."""
    outputs = Path(outputs)
    if not outputs.is_dir():
        raise TraceError(
            f"{outputs}: outputs folder does not exist (run `make demo`, or pass --outputs)"
        )
    looked_in: list[str] = []
    rows, rejected, ledgers = [], [], []
    for folder in _raw_folders(outputs):
        for member, kind in READ_TABLES.items():
            rows.append(_read_rows(_members(folder, member), kind, folder.name))
        rejected.append(
            _with_asset(_scan(_members(folder, "rejected"), REJECTED_COLUMNS), folder.name)
        )
        ledgers.append(_with_asset(_scan(_members(folder, "ledger"), LEDGER_COLUMNS), folder.name))
        looked_in.append(f"{folder}/")
    for name, kind in COMBINED_TABLES.items():
        rows.append(_read_rows(_asset_files(outputs, name), kind, None))
        looked_in.append(str(outputs / f"{name}.parquet"))
    rejects = outputs / INGEST_REJECTS
    rejected.append(
        _with_asset(_scan(_members(rejects, "rejected"), REJECTED_COLUMNS), INGEST_REJECTS)
    )
    ledgers.append(_with_asset(_scan(_members(rejects, "ledger"), LEDGER_COLUMNS), INGEST_REJECTS))
    looked_in.append(f"{rejects}/")
    states = []
    for folder in _ledger_folders(outputs):
        ledgers.append(_with_asset(_scan(_members(folder, "ledger"), LEDGER_COLUMNS), folder.name))
        states.append(_with_asset(_scan(_members(folder, "states"), STATES_COLUMNS), folder.name))
        looked_in.append(f"{folder}/")
    rows_frame = _concat(rows, ROWS_SCHEMA)
    # The raw folders come first, so a row keeps the asset that read it; the combined tables
    # only fill in rows whose raw folder is gone.
    rows_frame = rows_frame.unique(subset=["id", "kind"], keep="first", maintain_order=True)
    rejected_frame = _concat(rejected, REJECTED_SCHEMA).unique(
        subset=["source", "file", "line", "field", "reason"], keep="first", maintain_order=True
    )
    ledger_frame = _concat(ledgers, LEDGER_SCHEMA).unique(
        subset=["row_id", "stage", "rule", "verdict", "reason"], keep="first", maintain_order=True
    )
    states_frame = _concat(states, STATES_SCHEMA)
    feedback = _scan(_asset_files(outputs, FEEDBACK_PAIRS), ["id"])
    looked_in.append(str(outputs / f"{FEEDBACK_PAIRS}.parquet"))
    return Catalog(
        outputs,
        rows_frame,
        rejected_frame,
        ledger_frame,
        states_frame,
        looked_in,
        feedback if feedback is not None else pl.DataFrame(schema={"id": pl.String}),
    )


def _ledger_folders(outputs: Path) -> list[Path]:
    """Curation ledgers: any asset folder with a states table (every row's final state)."""
    found = []
    for folder in set_folders(outputs):  # not a writer's hidden staging or set-aside folders
        if folder.name in SKIPPED_DIRS or folder.name.startswith(RAW_PREFIX):
            continue
        if _members(folder, "states"):
            found.append(folder)
    return found


# --- datasets and checkpoints -------------------------------------------------------------------


def ids_sha256(ids: Iterable[Any]) -> str:
    """The digest training.common.ids_digest writes into lineage.json, recomputed here (training
    imports torch; curation must not)."""
    digest = hashlib.sha256()
    for row_id in sorted(ids):
        digest.update(str(row_id).encode() + b"\n")
    return digest.hexdigest()


DATASET_PARTS = "parts"  # curation.datasets.PARTS (an export by parts)


def dataset_files(folder: Path, split: str) -> list[Path] | None:
    """The files of one split of an exported dataset: ``folder/<split>.parquet``, or, for an
    export by parts, that split's file in each part ``folder/parts/_manifest.json`` names (the
    files training's load_splits reads); None if neither is there."""
    path = folder / f"{split}.parquet"
    if path.is_file():
        return [path]
    table = read_manifest(folder / DATASET_PARTS)
    if table is None or split not in table.members:
        return None
    return [p for p in table.paths(split) if p.is_file()]


def dataset_ids(folder: Path, split: str) -> list[str] | None:
    """The ``id`` column of one split (whole file or parts, in file order), or None if absent."""
    paths = dataset_files(folder, split)
    if paths is None:
        return None
    ids: list[str] = []
    for path in paths:
        if "id" not in pl.read_parquet_schema(path):
            return []
        ids += pl.read_parquet(path, columns=["id"])["id"].cast(pl.String).to_list()
    return ids


def hf_dataset_ids(folder: Path, split: str) -> list[str] | None:
    """Ids of the ``save_to_disk`` copy (``folder/hf/<split>``), which is what training loads
    when it exists; None if there is no such copy."""
    split_dir = folder / "hf" / split
    state = split_dir / "state.json"
    if not state.is_file():
        return None
    files = [split_dir / f["filename"] for f in json.loads(state.read_text())["_data_files"]]
    ids: list[str] = []
    for path in files:
        frame = pl.read_ipc_stream(path, columns=["id"]) if path.is_file() else None
        if frame is None:
            return None
        ids += frame["id"].cast(pl.String).to_list()
    return ids


def relocate(recorded: str | None, outputs: Path) -> Path | None:
    """Where a path recorded in lineage.json is now: itself when it lies under ``outputs``; else
    its longest tail (at least two parts, e.g. ``datasets/sft``) that exists under ``outputs``;
    else itself when it still exists; else None."""
    if not recorded:
        return None
    path = Path(recorded)
    root = outputs.resolve()
    if path.exists() and path.resolve().is_relative_to(root):
        return path
    parts = path.parts
    for start in range(1, len(parts) - 1):
        candidate = outputs.joinpath(*parts[start:])
        if candidate.exists():
            return candidate
    return path if path.exists() else None


def checkpoint_folder(path: str | Path) -> Path:
    """A checkpoint folder (with lineage.json) or a stage folder whose ``checkpoint/`` has one."""
    path = Path(path)
    if (path / LINEAGE).is_file():
        return path
    if (path / "checkpoint" / LINEAGE).is_file():
        return path / "checkpoint"
    if not path.exists():
        raise TraceError(f"{path}: no such checkpoint folder")
    raise TraceError(f"{path}: no {LINEAGE} here or in {path / 'checkpoint'}")


def read_lineage(folder: Path) -> dict[str, Any]:
    try:
        lineage = json.loads((folder / LINEAGE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise TraceError(f"{folder / LINEAGE}: not valid JSON ({error})") from None
    if not isinstance(lineage, dict):
        raise TraceError(f"{folder / LINEAGE}: expected a JSON object")
    return lineage


def lineage_inputs(lineage: dict[str, Any]) -> list[dict[str, Any]]:
    """The datasets a stage names: ``inputs`` itself, or each entry of ``inputs.datasets``."""
    inputs = lineage.get("inputs") or {}
    if isinstance(inputs.get("datasets"), list):
        return [d for d in inputs["datasets"] if isinstance(d, dict)]
    return [inputs] if inputs.get("data") else []


def lineage_sha256(folder: Path | None) -> str | None:
    """The sha256 of a checkpoint's lineage.json bytes, the digest training records for a stage's
    parent (``parent_lineage_sha256``): a lineage carries its run's finish time, so a checkpoint
    retrained at the same path has another. None when there is no lineage.json."""
    path = folder / LINEAGE if folder is not None else None
    if path is None or not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def parent_pin(lineage: dict[str, Any], parent: Path | None) -> dict[str, Any] | None:
    """Whether ``parent`` is still the checkpoint ``lineage``'s stage was trained from: the digest
    the stage recorded for its parent's lineage.json against the one there now (``ok``). None
    when the stage recorded none: a lineage older than the field, or a parent without lineage."""
    recorded = lineage.get("parent_lineage_sha256")
    if not isinstance(recorded, str) or not recorded:
        return None
    found = lineage_sha256(parent)
    return {"recorded": recorded, "found": found, "ok": found == recorded}


def checkpoint_chain(path: str | Path, outputs: Path) -> list[dict[str, Any]]:
    """The checkpoint and its parents, newest first: folder, recorded path, lineage and ``pin``
    (``parent_pin`` of the child's lineage against this folder; None for the checkpoint asked
    for). A parent that cannot be found ends the chain with an entry whose folder and lineage are
    None. A parent whose pin fails (retrained since its child was trained) does not end it: the
    walk goes on through the checkpoint now there, so the report shows where the path leads."""
    chain: list[dict[str, Any]] = []
    folder: Path | None = checkpoint_folder(path)
    recorded = str(path)
    pin: dict[str, Any] | None = None
    seen: set[Path] = set()
    while folder is not None:
        if folder.resolve() in seen:
            break
        seen.add(folder.resolve())
        lineage = read_lineage(folder)
        link = {"checkpoint": str(folder), "recorded": recorded, "lineage": lineage, "pin": pin}
        chain.append(link)
        recorded = lineage.get("parent_checkpoint")
        if not recorded:
            break
        found = relocate(recorded, outputs)
        if found is None or not (found / LINEAGE).is_file():
            chain.append({"checkpoint": None, "recorded": recorded, "lineage": None, "pin": None})
            break
        pin = parent_pin(lineage, found)
        folder = found
    return chain


def all_checkpoints(outputs: Path) -> list[Path]:
    """Every published checkpoint under ``outputs/checkpoints`` (not trainer states in runs/, not
    half-written temporary folders)."""
    root = outputs / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for lineage in sorted(root.rglob(LINEAGE)):
        parts = lineage.relative_to(root).parts
        if any(p.startswith(".") or p == "runs" for p in parts):
            continue
        found.append(lineage.parent)
    return found


# --- checkpoint → raw rows ----------------------------------------------------------------------


def _count_dict(frame: pl.DataFrame, key: str, value: str = "len") -> dict[str, int]:
    return {str(k): int(v) for k, v in frame.select(key, value).iter_rows()}


def _dataset_report(entry: dict[str, Any], catalog: Catalog) -> dict[str, Any]:
    recorded_data = entry.get("data")
    folder = relocate(recorded_data, catalog.outputs)
    report: dict[str, Any] = {
        "dataset": entry.get("asset") or (Path(recorded_data).name if recorded_data else None),
        "data": str(folder) if folder else None,
        "data_recorded": recorded_data,
        "row_ids_sha256": entry.get("row_ids_sha256"),
        "problems": [],
    }
    if folder is None:
        report["problems"].append(f"dataset {recorded_data} not found")
        return report
    train = dataset_ids(folder, "train")
    if train is None:
        report["problems"].append(f"{folder}: no train.parquet and no parts/{MANIFEST}")
        return report
    test = dataset_ids(folder, "test") or []
    report["rows"] = {"train": len(train), "test": len(test), "train_unique": len(set(train))}
    recorded_hash = entry.get("row_ids_sha256")
    checks = {"parquet": ids_sha256(train)}
    hf = hf_dataset_ids(folder, "train")
    if hf is not None:
        checks["hf"] = ids_sha256(hf)
    report["hash_check"] = {
        form: {"sha256": digest, "ok": digest == recorded_hash} for form, digest in checks.items()
    }
    if not recorded_hash:
        report["problems"].append("lineage records no row_ids_sha256")
    for form, check in report["hash_check"].items():
        if recorded_hash and not check["ok"]:
            report["problems"].append(
                f"row-id hash mismatch: {folder} ({form}) has {check['sha256'][:12]}…, lineage "
                f"recorded {recorded_hash[:12]}…; the dataset changed after training"
            )
    report.update(_raw_behind(train, catalog))
    if report["unresolved_ids"]:
        report["problems"].append(
            f"{report['unresolved_ids']} row ids not found in the raw tables of {catalog.outputs}"
        )
    return report


def _raw_behind(train: list[str], catalog: Catalog) -> dict[str, Any]:
    """Raw files and counts behind ``train`` ids, and the rows from those files that the
    pipeline dropped on the way (unreadable, excluded at ingest, dropped by curation)."""
    used = pl.DataFrame({"id": train}, schema={"id": pl.String}).group_by("id").len("uses")
    rows = catalog.rows.join(used, on="id", how="inner")
    feedback = used.join(catalog.feedback_ids, on="id", how="semi").height
    unresolved = (
        used.join(catalog.rows.select("id"), on="id", how="anti")
        .join(catalog.feedback_ids, on="id", how="anti")
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
    # Read from the same files, neither dropped nor in this train split: the test split, rows
    # the dataset does not select (SFT needs a final assistant turn), or left out of a mixture.
    elsewhere = (
        catalog.rows.filter(pl.col("file").is_in(files) & pl.col("kind").is_in(kinds))
        .join(used, on="id", how="anti")
        .join(dropped.select(pl.col("row_id").alias("id")), on="id", how="anti")
    )
    return {
        "raw_files": [
            {"asset": a, "file": f, "kind": k, "rows": r, "uses": u}
            for a, f, k, r, u in by_file.iter_rows()
        ],
        "unresolved_ids": unresolved,
        "feedback_pairs": feedback,
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
            "not_in_train": {"test split, not selected or not mixed in": elsewhere.height},
        },
    }


def _pin_problem(
    folder: str, lineage: dict[str, Any], child: dict[str, Any], pin: dict[str, Any]
) -> str:
    """Why ``folder`` is not the parent ``child`` was trained from, with both finish times."""
    name = child.get("stage") or "its child"
    times = [
        f"{who} finished {when}"
        for who, when in (
            ("this one", lineage.get("finished_at")),
            (name, child.get("finished_at")),
        )
        if when
    ]
    return (
        f"{folder} is not the parent {name} was trained from: its {LINEAGE} has sha256 "
        f"{str(pin['found'])[:12]}…, {name}'s lineage recorded {pin['recorded'][:12]}…; it was "
        f"retrained (or its {LINEAGE} rewritten) after {name} was trained"
        + (f" ({', '.join(times)})" if times else "")
    )


def trace_checkpoint(checkpoint: str | Path, outputs: str | Path) -> dict[str, Any]:
    """The stages behind ``checkpoint`` (itself, then its parents), each with the dataset it
    trained on, the row-id hash check, the raw files and counts, and the rows dropped on the way.
    ``ok`` is false when any parent, dataset or raw row is missing, any hash differs, or a parent
    is not the one its child was trained from (``pin``: retrained at the same path since)."""
    catalog = load_catalog(outputs)
    stages = []
    chain = checkpoint_chain(checkpoint, catalog.outputs)
    for index, link in enumerate(chain):
        lineage = link["lineage"]
        if lineage is None:
            stages.append(
                {
                    "stage": None,
                    "checkpoint": None,
                    "checkpoint_recorded": link["recorded"],
                    "pin": None,
                    "datasets": [],
                    "problems": [f"parent checkpoint {link['recorded']} not found"],
                }
            )
            continue
        datasets = [_dataset_report(entry, catalog) for entry in lineage_inputs(lineage)]
        problems = []
        pin = link["pin"]
        if pin is not None and not pin["ok"]:
            child = chain[index - 1]["lineage"]
            problems.append(_pin_problem(link["checkpoint"], lineage, child, pin))
        problems += [p for d in datasets for p in d["problems"]]
        if not datasets:
            problems.append("lineage names no dataset")
        stages.append(
            {
                "stage": lineage.get("stage"),
                "checkpoint": link["checkpoint"],
                "checkpoint_recorded": link["recorded"],
                "parent_checkpoint": lineage.get("parent_checkpoint"),
                "code_version": lineage.get("code_version"),
                "finished_at": lineage.get("finished_at"),
                "pin": pin,
                "datasets": datasets,
                "problems": problems,
            }
        )
    return {
        "checkpoint": str(checkpoint_folder(checkpoint)),
        "outputs": str(catalog.outputs),
        "ok": not any(s["problems"] for s in stages),
        "stages": stages,
    }


def checkpoint_records(report: dict[str, Any]) -> list[dict[str, Any]]:
    """``trace_checkpoint``'s report as flat rows, one per stage, dataset and raw file: the shape
    of a table in an asset's metadata. ``pinned_by_child`` is false on a parent retrained since
    its child was trained, None where the child recorded no digest (or for the first stage)."""
    records = []
    for stage in report["stages"]:
        pin = stage.get("pin")
        for dataset in stage["datasets"] or [{}]:
            hashes = dataset.get("hash_check", {})
            common = {
                "stage": stage["stage"],
                "checkpoint": stage["checkpoint"],
                "dataset": dataset.get("dataset"),
                "train_rows": dataset.get("rows", {}).get("train"),
                "row_ids_ok": all(c["ok"] for c in hashes.values()) if hashes else None,
                "pinned_by_child": pin["ok"] if pin else None,
            }
            for raw in dataset.get("raw_files") or [{}]:
                records.append({**common, "raw_file": raw.get("file"), "raw_rows": raw.get("rows")})
    return records


# --- one raw row → forward ----------------------------------------------------------------------


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
            for row_id, n in present.filter(present.is_in(list(ids))).value_counts().iter_rows():
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


# What a checkpoint's lineage says about a row its dataset holds now, best first: trained on it
# (the dataset's row-id hash is the one recorded at training), not verified (the dataset changed
# since, or a parent was retrained since), left out by the stage (``row_ids_left_out``).
TRAINED, UNVERIFIED, LEFT_OUT = "trained", "unverified", "left out"
HIT_RANK = {TRAINED: 0, UNVERIFIED: 1, LEFT_OUT: 2}
TrainForms = list[tuple[str, set[str]]]


def _train_forms(folder: Path, cache: dict[Path, TrainForms]) -> TrainForms:
    """Each form of a dataset's train split (parquet, and the hf copy training loads when there
    is one) as (ids_sha256, ids), hashed once per folder however many checkpoints name it."""
    key = folder.resolve()
    if key not in cache:
        forms = (dataset_ids(folder, "train"), hf_dataset_ids(folder, "train"))
        cache[key] = [(ids_sha256(ids), set(ids)) for ids in forms if ids is not None]
    return cache[key]


def _entry_hit(
    entry: dict[str, Any], outputs: Path, ids: set[str], cache: dict[Path, TrainForms]
) -> dict[str, Any] | None:
    """What one dataset a lineage names says about ``ids``: None when its train split holds
    none of them, else the status (TRAINED, UNVERIFIED, LEFT_OUT), why, and the dataset's name."""
    data = relocate(entry.get("data"), outputs)
    if data is None:
        return None
    forms = _train_forms(data, cache)
    recorded = entry.get("row_ids_sha256")
    # The form whose hash the lineage recorded is the split the stage read; when none matches,
    # the current ids only say the row is there now, not that it was there at training.
    trained = next((held for digest, held in forms if recorded and digest == recorded), None)
    present = ids & (trained if trained is not None else set().union(*(f[1] for f in forms)))
    if not present:
        return None
    name = entry.get("asset") or data.name
    if present <= set(entry.get("row_ids_left_out") or ()):
        return {"status": LEFT_OUT, "why": "left out by the stage", "dataset": name}
    if trained is not None:
        return {"status": TRAINED, "why": None, "dataset": name}
    why = "dataset changed since training" if recorded else "lineage records no row-id hash"
    return {"status": UNVERIFIED, "why": why, "dataset": name}


def _checkpoint_hits(outputs: Path, ids: set[str]) -> list[dict[str, Any]]:
    """Every checkpoint whose lineage reaches one of ``ids``: through a dataset it names
    (``via: dataset``) or through an ancestor that did (``via: parent``), each with ``status``
    and ``why``. A checkpoint is listed once, by its best claim (trained, then unverified, then
    left out; a nearer one first). An ancestor's claim reaches it only as far as the chain of
    parents holds (each child's ``parent_lineage_sha256`` still matching); past a parent retrained
    since, a trained claim is only unverified. An ancestor that left the row out passes nothing
    on."""
    cache: dict[Path, TrainForms] = {}
    own: dict[Path, dict[str, Any]] = {}
    links: dict[Path, tuple[Path | None, bool]] = {}
    info: dict[Path, tuple[str, Any]] = {}
    for folder in all_checkpoints(outputs):
        lineage = read_lineage(folder)
        key = folder.resolve()
        info[key] = (str(folder), lineage.get("stage"))
        parent = relocate(lineage.get("parent_checkpoint"), outputs)
        pin = parent_pin(lineage, parent) if parent else None
        links[key] = (parent.resolve() if parent else None, pin is None or pin["ok"])
        hits = [h for e in lineage_inputs(lineage) if (h := _entry_hit(e, outputs, ids, cache))]
        if hits:
            own[key] = min(hits, key=lambda h: HIT_RANK[h["status"]])
    found = []
    for key, (checkpoint, stage) in info.items():
        claims = []
        if key in own:
            claims.append((0, {**own[key], "via": "dataset", "ancestor": None}))
        node, depth, seen = key, 0, {key}
        retrained: Path | None = None  # the first parent on the way that is not the trained one
        while (parent := links.get(node, (None, True))[0]) is not None and parent not in seen:
            if parent not in info:  # outside the checkpoints folder: nothing of ours beyond
                break
            if retrained is None and not links[node][1]:
                retrained = parent
            seen.add(parent)
            depth += 1
            hit = own.get(parent)
            if hit is not None and hit["status"] != LEFT_OUT:
                claim = {**hit, "via": "parent", "ancestor": info[parent][0]}
                if retrained is not None:
                    claim["status"] = UNVERIFIED
                    claim["why"] = f"parent retrained since: {info[retrained][0]}"
                claims.append((depth, claim))
            node = parent
        if claims:
            _, best = min(claims, key=lambda c: (HIT_RANK[c[1]["status"]], c[0]))
            found.append({"checkpoint": checkpoint, "stage": stage, **best})
    return sorted(found, key=lambda h: h["via"] != "dataset")


def trace_row(query: str, outputs: str | Path) -> dict[str, Any]:
    """Follow one raw row forward. ``query`` is our row id, a source's own id, a message id
    inside an OpenAssistant thread, or ``FILE:LINE`` of the raw file. Raises ``TraceError``
    naming the places searched when nothing matches."""
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
    # A row that was never read has no id: its raw text may still carry the source's own id.
    reject_match = pl.lit(False)
    if rows.height == 0:
        reject_match = pl.col("raw").str.contains(json.dumps(query), literal=True).fill_null(False)
    by_file = _file_line_filter(query)
    if by_file is not None:
        reject_match = reject_match | by_file.fill_null(False)
    for file, line in rows.select("file", "line").drop_nulls().iter_rows():
        reject_match = reject_match | ((pl.col("file") == file) & (pl.col("line") == line))
    rejected = catalog.rejected.filter(reject_match)
    ledger = catalog.ledger.filter(pl.col("row_id").is_in(ids))
    states = catalog.states.filter(pl.col("row_id").is_in(ids))
    if rows.height == 0 and rejected.height == 0 and ledger.height == 0:
        raise TraceError(
            f"no row with id, source id or FILE:LINE {query!r} in {catalog.outputs}; looked in "
            + ", ".join(catalog.looked_in)
        )
    found_ids = set(rows["id"]) | set(ledger["row_id"]) | set(states["row_id"])
    datasets = _dataset_hits(catalog.outputs, found_ids)
    checkpoints = _checkpoint_hits(catalog.outputs, {d["id"] for d in datasets})
    return {
        "query": query,
        "outputs": str(catalog.outputs),
        "read": _records(
            rows, ["id", "kind", "source", "source_id", "asset", "file", "line", "source_ids"]
        ),
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
        "checkpoints_unverified": [h for h in checkpoints if h["status"] != TRAINED],
    }


# --- text tables --------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], indent: str = "  ") -> str:
    """Left-aligned columns; a long cell widens its column rather than being cut."""
    cells = [[_cell(v) for v in row] for row in rows]
    if not cells:
        return f"{indent}(none)"
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [headers, ["-" * w for w in widths], *cells]
    return "\n".join(
        indent + "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    return str(value).replace("\n", " ")


def format_checkpoint_trace(report: dict[str, Any]) -> str:
    lines = [
        f"checkpoint {report['checkpoint']}",
        f"outputs    {report['outputs']}",
        f"lineage    {'ok' if report['ok'] else 'BROKEN'}",
    ]
    for stage in report["stages"]:
        header = f"== stage {stage['stage'] or '?'}: {stage['checkpoint'] or '-'}"
        if stage.get("pin") and not stage["pin"]["ok"]:
            header += " (NOT the checkpoint its child was trained from: retrained since)"
        lines += ["", header]
        for dataset in stage["datasets"]:
            rows = dataset.get("rows", {})
            hashes = dataset.get("hash_check", {})
            verdict = ", ".join(
                f"{form} {'ok' if check['ok'] else 'MISMATCH'}" for form, check in hashes.items()
            )
            lines.append(
                f"  dataset {dataset['dataset']} ({dataset['data'] or dataset['data_recorded']}): "
                f"train {rows.get('train', '-')} rows ({rows.get('train_unique', '-')} ids), "
                f"test {rows.get('test', '-')}; row ids {verdict or 'not checked'}"
            )
            raw = dataset.get("raw_files", [])
            lines.append(
                table(
                    ["reader", "kind", "raw file", "rows", "uses"],
                    [(r["asset"], r["kind"], r["file"], r["rows"], r["uses"]) for r in raw],
                )
            )
            dropped = dataset.get("dropped", {})
            drop_rows = [
                (where, key, n) for where, counts in dropped.items() for key, n in counts.items()
            ]
            lines.append("  dropped on the way from the same raw files:")
            lines.append(table(["where", "rule / file", "rows"], drop_rows, indent="    "))
        lines += [f"  PROBLEM: {p}" for p in stage["problems"]]
    return "\n".join(lines)


UNVERIFIED_COLUMNS = ["stage", "checkpoint", "via", "dataset", "ancestor", "status", "why"]


def format_row_trace(report: dict[str, Any]) -> str:
    lines = [f"row {report['query']} in {report['outputs']}", "", "read:"]
    lines.append(
        table(
            ["id", "kind", "source", "source_id", "reader", "file", "line"],
            [
                (r["id"], r["kind"], r["source"], r["source_id"], r["asset"], r["file"], r["line"])
                for r in report["read"]
            ],
        )
    )
    rejects = report["ingest_rejects"]
    lines += ["", "ingest rejects:"]
    lines.append(
        table(
            ["what", "reader", "row id", "file", "line", "field / rule", "reason"],
            [
                ("unreadable", r["asset"], None, r["file"], r["line"], r["field"], r["reason"])
                for r in rejects["unreadable"]
            ]
            + [
                ("excluded", r["asset"], r["row_id"], None, None, r["rule"], r["reason"])
                for r in rejects["excluded"]
            ],
        )
    )
    lines += ["", "ledger verdicts:"]
    lines.append(
        table(
            ["ledger", "row id", "stage", "filter", "action", "reason"],
            [
                (v["asset"], v["row_id"], v["stage"], v["rule"], v["verdict"], v["reason"])
                for v in report["verdicts"]
            ],
        )
    )
    lines += ["", "final state after curation:"]
    lines.append(
        table(
            ["ledger", "row id", "state", "rule", "reason"],
            [
                (s["asset"], s["row_id"], s["state"], s["rule"], s["reason"])
                for s in report["states"]
            ],
        )
    )
    lines += ["", "datasets:"]
    lines.append(
        table(
            ["dataset", "split", "row id", "rows"],
            [(d["dataset"], d["split"], d["id"], d["rows"]) for d in report["datasets"]],
        )
    )
    lines += ["", "checkpoints trained on it:"]
    lines.append(
        table(
            ["stage", "checkpoint", "via", "dataset", "trained ancestor"],
            [
                (c["stage"], c["checkpoint"], c["via"], c["dataset"], c["ancestor"])
                for c in report["checkpoints"]
            ],
        )
    )
    lines += ["", "checkpoints whose data holds it, not verified as trained on it:"]
    lines.append(
        table(
            UNVERIFIED_COLUMNS,
            [[c[k] for k in UNVERIFIED_COLUMNS] for c in report.get("checkpoints_unverified", [])],
        )
    )
    return "\n".join(lines)
