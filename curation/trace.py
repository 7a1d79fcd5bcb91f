"""Row-level lineage: from a checkpoint back to the raw rows behind it, and from one raw row forward
to every verdict, dataset and checkpoint it reached.

Everything is read from the files the pipeline already writes under the outputs folder (raw
assets with provenance, ledgers, exported datasets, each checkpoint's lineage.json), so a trace
needs no Dagster instance and works on outputs copied to another machine. Recorded absolute
paths that no longer exist are re-anchored under the outputs folder by their longest existing
tail, and the report shows both paths, so relocation is visible rather than silent.

A checkpoint is credited with a row only as far as its lineage can prove it: the dataset's row
ids and file contents must still hash to what training recorded (``row_ids_sha256``,
``data_sha256``), the row must not be among the stage's ``row_ids_left_out``, and each parent
and reward model must still be the checkpoint the stage was trained with (their lineage digests).
Anything short of that is listed as unverified with the reason, never dropped: a row removed
from a dataset since training keeps the checkpoints that may have learnt from it.

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
from training.datafiles import content_digest

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


def _unreadable(path: Path, error: Exception) -> TraceError:
    reason = next(iter(str(error).strip().splitlines()), "") or type(error).__name__
    return TraceError(f"{path}: not a readable Parquet file ({reason})")


def _parquet_schema(path: Path) -> dict[str, Any]:
    """The file's columns; a cut-off or foreign file is a TraceError naming it, not a traceback
    from polars."""
    try:
        return dict(pl.read_parquet_schema(path))
    except (pl.exceptions.PolarsError, OSError) as error:
        raise _unreadable(path, error) from None


def _read_parquet(path: Path, columns: Sequence[str]) -> pl.DataFrame:
    try:
        return pl.read_parquet(path, columns=list(columns))
    except (pl.exceptions.PolarsError, OSError) as error:
        raise _unreadable(path, error) from None


def _scan(paths: Sequence[Path], columns: Sequence[str]) -> pl.DataFrame | None:
    frames = []
    for path in paths:
        schema = _parquet_schema(path)
        present = [c for c in columns if c in schema]
        frames.append(
            _read_parquet(path, present).with_columns(
                *(pl.lit(None).alias(c) for c in columns if c not in schema)
            )
        )
    return pl.concat(frames, how="diagonal_relaxed") if frames else None


ROW_COLUMNS = ("id", "source", "source_id", "provenance", "source_ids")
# What a trace reads of a feedback pair (never its texts).
FEEDBACK_SCHEMA = {
    "id": pl.String,
    "source": pl.String,
    "source_id": pl.String,
    "origin": pl.String,
    "source_ids": pl.List(pl.String),
}


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
    # Pairs made from AI or human feedback (feedback_preferences): their ids are not raw rows;
    # ``source_ids`` names what each was built from (the prompt row first, then the two
    # candidate answers), which is how a raw prompt row reaches them.
    feedback: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=FEEDBACK_SCHEMA))

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
    feedback = _concat(
        [_scan(_asset_files(outputs, FEEDBACK_PAIRS), tuple(FEEDBACK_SCHEMA))], FEEDBACK_SCHEMA
    )
    looked_in.append(str(outputs / f"{FEEDBACK_PAIRS}.parquet"))
    return Catalog(
        outputs, rows_frame, rejected_frame, ledger_frame, states_frame, looked_in, feedback
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


def missing_dataset_files(folder: Path) -> list[Path]:
    """Part files the manifest of an export by parts names (with rows) that are not on disk: a
    split read without them is short, so a trace reports each rather than counting fewer rows."""
    if (folder / "train.parquet").is_file():
        return []
    table = read_manifest(folder / DATASET_PARTS)
    if table is None:
        return []
    return [
        table.path(part, split)
        for part in table.parts
        for split in table.members
        if part.stats.get(split) != 0 and not table.path(part, split).is_file()
    ]


def dataset_ids(folder: Path, split: str) -> list[str] | None:
    """The ``id`` column of one split (whole file or parts, in file order), or None if absent.
    A part file that is missing is not read (``missing_dataset_files`` names it)."""
    paths = dataset_files(folder, split)
    if paths is None:
        return None
    ids: list[str] = []
    for path in paths:
        if "id" not in _parquet_schema(path):
            return []
        ids += _read_parquet(path, ["id"])["id"].cast(pl.String).to_list()
    return ids


def hf_dataset_ids(folder: Path, split: str) -> list[str] | None:
    """Ids of the ``save_to_disk`` copy (``folder/hf/<split>``), which is what training loads
    when it exists; None if there is no such copy."""
    split_dir = folder / "hf" / split
    state = split_dir / "state.json"
    if not state.is_file():
        return None
    try:
        names = [f["filename"] for f in json.loads(state.read_text())["_data_files"]]
    except (ValueError, KeyError, TypeError) as error:
        raise TraceError(f"{state}: not a datasets state.json ({error!r})") from None
    ids: list[str] = []
    for path in (split_dir / name for name in names):
        if not path.is_file():
            return None
        try:
            frame = pl.read_ipc_stream(path, columns=["id"])
        except (pl.exceptions.PolarsError, OSError) as error:
            reason = next(iter(str(error).strip().splitlines()), "") or type(error).__name__
            raise TraceError(f"{path}: not a readable Arrow stream ({reason})") from None
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
    aside = _set_aside(path)
    note = (
        f"; a publish killed between its two renames left the previous checkpoint set aside "
        f"at {aside} (the stage's next run puts it back; trace that folder to see it now)"
        if aside
        else ""
    )
    if not path.exists():
        raise TraceError(f"{path}: no such checkpoint folder{note}")
    raise TraceError(f"{path}: no {LINEAGE} here or in {path / 'checkpoint'}{note}")


def _set_aside(path: Path) -> Path | None:
    """The newest ``.checkpoint.old-*`` beside where ``checkpoint/`` should be (``path`` is the
    stage folder or its missing ``checkpoint/``) that holds a lineage: what
    training.checkpoint.publish leaves when killed between moving the old checkpoint aside and
    moving the new one in."""
    stage = path.parent if path.name == "checkpoint" else path
    if not stage.is_dir():
        return None
    found = sorted(p for p in stage.glob(".checkpoint.old-*") if (p / LINEAGE).is_file())
    return found[-1] if found else None


# Fields of lineage.json a trace reads, and what each must be when present (null is absent).
LINEAGE_TEXT = ("stage", "parent_checkpoint", "parent_lineage_sha256", "finished_at")
INPUT_TEXT = (
    "asset",
    "data",
    "data_sha256",
    "row_ids_sha256",
    "ptx_data",
    "reward_model",
    "reward_model_lineage_sha256",
    "reference_checkpoint",
    "reference_checkpoint_lineage_sha256",
)


def _refuse(path: Path, name: str, expected: str, value: Any) -> TraceError:
    shown = json.dumps(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return TraceError(f"{path}: field {name}: expected {expected}, found {shown}")


def _check_lineage(lineage: dict[str, Any], path: Path) -> None:
    """Refuse the fields a trace reads when they have the wrong shape, naming file and field,
    rather than fail later with an AttributeError deep in the walk."""
    for key in LINEAGE_TEXT:
        if lineage.get(key) is not None and not isinstance(lineage[key], str):
            raise _refuse(path, key, "a string", lineage[key])
    inputs = lineage.get("inputs")
    if inputs is None:
        return
    if not isinstance(inputs, dict):
        raise _refuse(path, "inputs", "an object", inputs)
    entries = [("inputs", inputs)]
    datasets = inputs.get("datasets")
    if datasets is not None:
        if not isinstance(datasets, list) or not all(isinstance(d, dict) for d in datasets):
            raise _refuse(path, "inputs.datasets", "a list of objects", datasets)
        entries += [(f"inputs.datasets[{i}]", d) for i, d in enumerate(datasets)]
    for where, entry in entries:
        for key in INPUT_TEXT:
            if entry.get(key) is not None and not isinstance(entry[key], str):
                raise _refuse(path, f"{where}.{key}", "a string", entry[key])
        left_out = entry.get("row_ids_left_out")
        if left_out is not None and (
            not isinstance(left_out, list)
            or not all(isinstance(i, str | int) and not isinstance(i, bool) for i in left_out)
        ):
            raise _refuse(path, f"{where}.row_ids_left_out", "a list of row ids", left_out)
        used = entry.get("rows_used")
        if used is not None and (not isinstance(used, int) or isinstance(used, bool) or used < 0):
            raise _refuse(path, f"{where}.rows_used", "a count of rows", used)


def read_lineage(folder: Path) -> dict[str, Any]:
    """A checkpoint's lineage.json, its fields checked (``TraceError`` naming file and field)."""
    path = folder / LINEAGE
    try:
        lineage = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise TraceError(f"{path}: not valid JSON ({error})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise TraceError(f"{path}: cannot be read ({error})") from None
    if not isinstance(lineage, dict):
        raise TraceError(f"{path}: expected a JSON object")
    _check_lineage(lineage, path)
    return lineage


def lineage_inputs(lineage: dict[str, Any]) -> list[dict[str, Any]]:
    """The datasets a stage names: ``inputs`` itself, or each entry of ``inputs.datasets``
    (``read_lineage`` has checked their shape)."""
    inputs = lineage.get("inputs") or {}
    if isinstance(inputs.get("datasets"), list):
        return inputs["datasets"]
    return [inputs] if inputs.get("data") else []


def left_out_ids(entry: dict[str, Any]) -> set[str]:
    """The row ids the stage names as offered and not trained on (``row_ids_left_out``)."""
    return {str(i) for i in entry.get("row_ids_left_out") or ()}


def content_check(
    entry: dict[str, Any], data: Path, outputs: Path, cache: dict[Path, str]
) -> dict[str, Any] | None:
    """The dataset's content digest now (training.datafiles.content_digest, what training
    recorded as ``data_sha256``) against the recorded one: the row-id hash cannot see an answer
    rewritten under the same id, this can. PPO appends the ptx dataset's digest after a space.
    None when the lineage records no digest (older lineages)."""
    recorded = entry.get("data_sha256")
    if not recorded:
        return None
    folders: list[Path | None] = [data]
    if len(recorded.split()) > 1:
        folders.append(relocate(entry.get("ptx_data"), outputs))
    found, errors = [], []
    for folder in folders:
        if folder is None:
            errors.append(f"{entry.get('ptx_data')} not found")
            continue
        key = folder.resolve()
        if key not in cache:
            try:
                cache[key] = content_digest(folder)
            except (OSError, ValueError, KeyError, TypeError) as error:
                errors.append(f"{folder}: {error}")
                continue
        found.append(cache[key])
    digest = " ".join(found) if not errors else None
    check = {"recorded": recorded, "found": digest, "ok": digest == recorded}
    if errors:
        check["error"] = "; ".join(errors)
    return check


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


def _dataset_report(
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


# Checkpoints a stage used besides its parent, as lineage names them: inputs.<key> (a path)
# pinned by inputs.<key>_lineage_sha256 (the sha256 of that checkpoint's lineage.json as the run
# started; null when it had none).
MODEL_INPUTS = {"reward_model": "reward model", "reference_checkpoint": "reference"}


def _lineage_folder(path: Path | None) -> Path | None:
    """``path`` or its ``checkpoint/`` when it holds a lineage.json, else None."""
    if path is None:
        return None
    for folder in (path, path / "checkpoint"):
        if (folder / LINEAGE).is_file():
            return folder
    return None


def model_inputs(lineage: dict[str, Any], outputs: Path) -> list[dict[str, Any]]:
    """The reward model and DPO reference a stage names: where each is now (``checkpoint``,
    None when not found or without lineage) and ``pin`` (recorded against found digest; None
    when the lineage pins nothing: older lineages, or a model without lineage.json then)."""
    inputs = lineage.get("inputs") or {}
    found = []
    for key, role in MODEL_INPUTS.items():
        recorded = inputs.get(key)
        if not recorded:
            continue
        folder = _lineage_folder(relocate(recorded, outputs))
        pinned = inputs.get(f"{key}_lineage_sha256")
        pin = None
        if pinned:
            digest = lineage_sha256(folder)
            pin = {"recorded": pinned, "found": digest, "ok": digest == pinned}
        found.append(
            {
                "input": key,
                "role": role,
                "recorded": recorded,
                "checkpoint": str(folder) if folder else None,
                "pin": pin,
            }
        )
    return found


def _model_problem(model: dict[str, Any], stage: str | None) -> str | None:
    pin, name = model["pin"], stage or "this stage"
    if pin is None or pin["ok"]:
        return None
    if model["checkpoint"] is None:
        return (
            f"{model['role']} {model['recorded']} not found (or has no {LINEAGE}); {name}'s "
            f"lineage pinned its {LINEAGE} at {pin['recorded'][:12]}…"
        )
    return (
        f"{model['role']} {model['checkpoint']} is not the one {name} was trained with: its "
        f"{LINEAGE} has sha256 {str(pin['found'])[:12]}…, {name}'s lineage recorded "
        f"{pin['recorded'][:12]}…; it was retrained (or its {LINEAGE} rewritten) since"
    )


def _stage_report(
    link: dict[str, Any], child: dict[str, Any] | None, catalog: Catalog, digests: dict[Path, str]
) -> dict[str, Any]:
    lineage = link["lineage"]
    if lineage is None:
        return {
            "stage": None,
            "checkpoint": None,
            "checkpoint_recorded": link["recorded"],
            "pin": None,
            "models": [],
            "datasets": [],
            "problems": [f"parent checkpoint {link['recorded']} not found"],
        }
    datasets = [
        _dataset_report(entry, lineage, catalog, digests) for entry in lineage_inputs(lineage)
    ]
    models = model_inputs(lineage, catalog.outputs)
    problems = []
    pin = link["pin"]
    if pin is not None and not pin["ok"] and child is not None:
        problems.append(_pin_problem(link["checkpoint"], lineage, child, pin))
    problems += [p for m in models if (p := _model_problem(m, lineage.get("stage")))]
    problems += [p for d in datasets for p in d["problems"]]
    if not datasets:
        problems.append("lineage names no dataset")
    return {
        "stage": lineage.get("stage"),
        "checkpoint": link["checkpoint"],
        "checkpoint_recorded": link["recorded"],
        "parent_checkpoint": lineage.get("parent_checkpoint"),
        "code_version": lineage.get("code_version"),
        "finished_at": lineage.get("finished_at"),
        "pin": pin,
        "models": models,
        "datasets": datasets,
        "problems": problems,
    }


def trace_checkpoint(checkpoint: str | Path, outputs: str | Path) -> dict[str, Any]:
    """The stages behind ``checkpoint`` (itself, then its parents; then the reward model or
    reference each names, with their parents, unless already on the way: ``input_of`` says
    whose), each with the dataset it trained on, the row-id hash and content digest checks, the
    raw files and counts, the rows left out by the stage and those dropped on the way. ``ok`` is
    false when any parent, dataset, part file or raw row is missing, any hash or digest differs,
    or a parent, reward model or reference is not the one the stage was trained with (``pin``:
    retrained at the same path since)."""
    catalog = load_catalog(outputs)
    digests: dict[Path, str] = {}
    stages: list[dict[str, Any]] = []
    seen: set[Path] = set()
    queue: list[tuple[str | Path, dict[str, Any] | None, dict[str, Any] | None]] = [
        (checkpoint, None, None)
    ]
    while queue:
        start, first_pin, input_of = queue.pop(0)
        chain = checkpoint_chain(start, catalog.outputs)
        chain[0]["pin"] = first_pin
        child = None
        for link in chain:
            key = Path(link["checkpoint"]).resolve() if link["checkpoint"] else None
            if key is not None and key in seen:
                break  # the rest of this chain is in the report already
            if key is not None:
                seen.add(key)
            stage = _stage_report(link, child, catalog, digests)
            stage["input_of"] = input_of
            input_of = None
            stages.append(stage)
            child = link["lineage"]
            for model in stage["models"]:
                if model["checkpoint"] is not None:
                    role = {"role": model["input"], "of": stage["checkpoint"]}
                    queue.append((model["checkpoint"], model["pin"], role))
    return {
        "checkpoint": str(checkpoint_folder(checkpoint)),
        "outputs": str(catalog.outputs),
        "ok": not any(s["problems"] for s in stages),
        "stages": stages,
    }


def checkpoint_records(report: dict[str, Any]) -> list[dict[str, Any]]:
    """``trace_checkpoint``'s report as flat rows, one per stage, dataset and raw file: the shape
    of a table in an asset's metadata. ``pinned_by_child`` is false on a parent (or reward model,
    reference) retrained since its child was trained, None where the child recorded no digest
    (or for the first stage); ``input_of`` names the role of a reward model or reference."""
    records = []
    for stage in report["stages"]:
        pin = stage.get("pin")
        input_of = stage.get("input_of")
        for dataset in stage["datasets"] or [{}]:
            hashes = dataset.get("hash_check", {})
            content = dataset.get("content_check")
            common = {
                "stage": stage["stage"],
                "checkpoint": stage["checkpoint"],
                "input_of": input_of["role"] if input_of else None,
                "dataset": dataset.get("dataset"),
                "train_rows": dataset.get("rows", {}).get("train"),
                "left_out_rows": dataset.get("rows", {}).get("left_out"),
                "row_ids_ok": all(c["ok"] for c in hashes.values()) if hashes else None,
                "content_ok": content["ok"] if content else None,
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


# What a checkpoint's lineage says about a row, best first: trained on it (the dataset's row-id
# hash and content digest are the ones recorded at training); optimised against a reward model
# that was trained on it (PPO, GRPO, RLOO); not verified (the dataset changed since, or a
# parent or the reward model was retrained since); left out by the stage (``row_ids_left_out``).
TRAINED, REWARD, UNVERIFIED, LEFT_OUT = (
    "trained",
    "reward model trained on it",
    "unverified",
    ("left out"),
)
HIT_RANK = {TRAINED: 0, REWARD: 1, UNVERIFIED: 2, LEFT_OUT: 3}
TrainForms = list[tuple[str, set[str]]]
CHANGED = "dataset changed since training"
CONTENT_CHANGED = "dataset content changed since training (rows rewritten under the same ids)"
GONE = (
    "dataset changed since training and does not hold the row now: whether it did then cannot "
    "be checked"
)


@dataclass
class _Datasets:
    """Each dataset folder's train-split forms and content digest, read once per trace however
    many checkpoints name it; the digest only when a claim depends on it."""

    outputs: Path
    forms: dict[Path, TrainForms] = field(default_factory=dict)
    digests: dict[Path, str] = field(default_factory=dict)

    def train_forms(self, folder: Path) -> TrainForms:
        """Each form of a dataset's train split (parquet, and the hf copy training loads when
        there is one) as (ids_sha256, ids)."""
        key = folder.resolve()
        if key not in self.forms:
            forms = (dataset_ids(folder, "train"), hf_dataset_ids(folder, "train"))
            self.forms[key] = [(ids_sha256(ids), set(ids)) for ids in forms if ids is not None]
        return self.forms[key]


def _entry_hit(entry: dict[str, Any], ids: set[str], datasets: _Datasets) -> dict[str, Any] | None:
    """What one dataset a lineage names says about ``ids``: None when it says nothing, else the
    status (TRAINED, UNVERIFIED, LEFT_OUT), why, the dataset's name and whether it holds one of
    ``ids`` now (``in_dataset_now``)."""
    data = relocate(entry.get("data"), datasets.outputs)
    if data is None:
        return None
    forms = datasets.train_forms(data)
    recorded = entry.get("row_ids_sha256")
    left_out = left_out_ids(entry)
    name = entry.get("asset") or data.name
    # The form whose hash the lineage recorded is the split the stage read; when none matches,
    # the current ids only say the row is there now, not that it was there at training.
    trained = next((held for digest, held in forms if recorded and digest == recorded), None)
    present = ids & (trained if trained is not None else set().union(*(f[1] for f in forms)))

    def hit(status: str, why: str | None) -> dict[str, Any]:
        return {"status": status, "why": why, "dataset": name, "in_dataset_now": bool(present)}

    if present and present <= left_out or not present and ids & left_out:
        # row_ids_left_out names rows of the split as the stage read it, wherever it is now
        return hit(LEFT_OUT, "left out by the stage")
    if trained is not None:
        if not present:
            return None  # the split the stage read, and the row is not in it
        content = content_check(entry, data, datasets.outputs, datasets.digests)
        if content is not None and not content["ok"]:
            return hit(UNVERIFIED, CONTENT_CHANGED)
        return hit(TRAINED, None)
    if present:
        return hit(UNVERIFIED, CHANGED if recorded else "lineage records no row-id hash")
    # A row removed from the dataset since training: it may have been trained on, and no
    # record can say; listed as unverified rather than dropped from the trace.
    return hit(UNVERIFIED, GONE) if recorded and forms else None


@dataclass
class _Node:
    """One published checkpoint as the forward trace sees it."""

    folder: str
    stage: str | None
    parent: Path | None = None
    parent_ok: bool = True  # the parent there now is the one this checkpoint was trained from
    reward: Path | None = None
    reward_ok: bool = True
    own: dict[str, Any] | None = None  # best claim of the datasets its lineage names


def _walk(key: Path, nodes: dict[Path, _Node]) -> Iterable[tuple[Path, int, Path | None]]:
    """``key`` and its ancestors among ``nodes``, nearest first, each with its depth and the
    first parent on the way that is not the one its child was trained from (None if none)."""
    yield key, 0, None
    node, depth, seen, retrained = key, 0, {key}, None
    while (parent := nodes[node].parent) is not None and parent not in seen:
        if parent not in nodes:  # outside the checkpoints folder: nothing of ours beyond
            return
        if retrained is None and not nodes[node].parent_ok:
            retrained = parent
        seen.add(parent)
        depth += 1
        yield parent, depth, retrained
        node = parent


def _inherited(key: Path, nodes: dict[Path, _Node]) -> list[tuple[int, dict[str, Any]]]:
    """Claims on ``key`` from its own datasets and its ancestors' (a trained claim past a parent
    retrained since is only unverified; an ancestor that left the row out passes nothing on)."""
    claims = []
    for node, depth, retrained in _walk(key, nodes):
        hit = nodes[node].own
        if hit is None:
            continue
        if node == key:
            claims.append((0, {**hit, "via": "dataset", "ancestor": None}))
            continue
        if hit["status"] == LEFT_OUT:
            continue
        claim = {**hit, "via": "parent", "ancestor": nodes[node].folder}
        if retrained is not None:
            claim.update(status=UNVERIFIED, why=_retrained("parent", nodes[retrained].folder))
        claims.append((depth, claim))
    return claims


def _retrained(what: str, folder: str) -> str:
    return f"{what} retrained since: {folder}"


def _best(claims: list[tuple[int, dict[str, Any]]]) -> dict[str, Any] | None:
    if not claims:
        return None
    return min(claims, key=lambda c: (HIT_RANK[c[1]["status"]], c[0]))[1]


def _checkpoint_hits(outputs: Path, ids: set[str]) -> list[dict[str, Any]]:
    """Every checkpoint whose lineage reaches one of ``ids``: through a dataset it names
    (``via: dataset``), an ancestor that did (``via: parent``), or a reward model (its own or an
    ancestor's) that did (``via: reward model``), each with ``status`` and ``why``. A checkpoint
    is listed once, by its best claim (trained, reward model trained on it, unverified, left
    out; a nearer one first). An ancestor's or reward model's claim reaches it only as far as
    each pin holds (``parent_lineage_sha256``, ``reward_model_lineage_sha256``); past one
    retrained since, the claim is only unverified."""
    datasets = _Datasets(outputs)
    nodes: dict[Path, _Node] = {}
    for folder in all_checkpoints(outputs):
        lineage = read_lineage(folder)
        node = _Node(str(folder), lineage.get("stage"))
        parent = relocate(lineage.get("parent_checkpoint"), outputs)
        if parent is not None:
            pin = parent_pin(lineage, parent)
            node.parent, node.parent_ok = parent.resolve(), pin is None or pin["ok"]
        for model in model_inputs(lineage, outputs):
            if model["input"] == "reward_model" and model["checkpoint"] is not None:
                node.reward = Path(model["checkpoint"]).resolve()
                node.reward_ok = model["pin"] is None or model["pin"]["ok"]
        hits = [h for e in lineage_inputs(lineage) if (h := _entry_hit(e, ids, datasets))]
        node.own = min(hits, key=lambda h: HIT_RANK[h["status"]]) if hits else None
        nodes[folder.resolve()] = node
    base = {key: _best(_inherited(key, nodes)) for key in nodes}
    found = []
    for key, node in nodes.items():
        claims = _inherited(key, nodes)
        for at, depth, retrained in _walk(key, nodes):
            reward = nodes[at].reward
            hit = base.get(reward) if reward is not None else None
            if hit is None or hit["status"] not in (TRAINED, UNVERIFIED):
                continue
            claim = {
                **hit,
                "status": REWARD if hit["status"] == TRAINED else UNVERIFIED,
                "why": f"reward model's claim: {hit['why']}" if hit["why"] else None,
                "via": "reward model" if at == key else "parent's reward model",
                "ancestor": nodes[reward].folder,
            }
            if not nodes[at].reward_ok:
                claim.update(status=UNVERIFIED, why=_retrained("reward model", claim["ancestor"]))
            elif retrained is not None:
                claim.update(status=UNVERIFIED, why=_retrained("parent", nodes[retrained].folder))
            claims.append((depth, claim))
        if (best := _best(claims)) is not None:
            found.append({"checkpoint": node.folder, "stage": node.stage, **best})
    return sorted(found, key=lambda h: h["via"] != "dataset")


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
    checkpoints = _checkpoint_hits(catalog.outputs, found_ids)
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
        input_of = stage.get("input_of")
        if input_of:
            header += f" ({MODEL_INPUTS[input_of['role']]} of {input_of['of']})"
        if stage.get("pin") and not stage["pin"]["ok"]:
            who = "stage" if input_of else "child"
            header += f" (NOT the checkpoint its {who} was trained with: retrained since)"
        lines += ["", header]
        for model in stage.get("models", []):
            pin = model["pin"]
            pinned = "not pinned" if pin is None else "pin ok" if pin["ok"] else "pin MISMATCH"
            lines.append(
                f"  {model['role']} {model['checkpoint'] or model['recorded'] + ' (not found)'}:"
                f" {pinned}"
            )
        for dataset in stage["datasets"]:
            lines += _format_dataset(dataset)
        lines += [f"  PROBLEM: {p}" for p in stage["problems"]]
    return "\n".join(lines)


def _format_dataset(dataset: dict[str, Any]) -> list[str]:
    rows = dataset.get("rows", {})
    hashes = dataset.get("hash_check", {})
    verdict = ", ".join(
        f"{form} {'ok' if check['ok'] else 'MISMATCH'}" for form, check in hashes.items()
    )
    content = dataset.get("content_check")
    lines = [
        f"  dataset {dataset['dataset']} ({dataset['data'] or dataset['data_recorded']}): "
        f"train {rows.get('train', '-')} rows ({rows.get('train_unique', '-')} ids), "
        f"test {rows.get('test', '-')}; row ids {verdict or 'not checked'}; content "
        + ("not recorded" if content is None else "ok" if content["ok"] else "CHANGED")
    ]
    left_out = dataset.get("left_out")
    if left_out and left_out["rows"]:
        reasons = ", ".join(f"{k} {n}" for k, n in left_out["reasons"].items())
        lines.append(
            f"  left out by the stage: {left_out['rows']} of the train split's rows, not counted "
            f"as used below" + (f" (the stage's count: {reasons})" if reasons else "")
        )
    raw = dataset.get("raw_files", [])
    lines.append(
        table(
            ["reader", "kind", "raw file", "rows", "uses"],
            [(r["asset"], r["kind"], r["file"], r["rows"], r["uses"]) for r in raw],
        )
    )
    if dataset.get("feedback_pairs"):
        lines.append(f"  feedback pairs ({FEEDBACK_PAIRS}): {dataset['feedback_pairs']} used")
    dropped = dataset.get("dropped", {})
    drop_rows = [(where, key, n) for where, counts in dropped.items() for key, n in counts.items()]
    lines.append("  dropped on the way from the same raw files:")
    lines.append(table(["where", "rule / file", "rows"], drop_rows, indent="    "))
    lines += [f"  NOTE: {n}" for n in dataset.get("notes", [])]
    return lines


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
    lines += ["", "feedback pairs:"]
    lines.append(
        table(
            ["id", "origin", "source", "built from (prompt, chosen, rejected)"],
            [
                (p["id"], p["origin"], p["source"], p["source_ids"])
                for p in report.get("feedback_pairs", [])
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
    lines += ["", "checkpoints optimised against a reward model trained on it:"]
    lines.append(
        table(
            ["stage", "checkpoint", "via", "reward model", "dataset"],
            [
                (c["stage"], c["checkpoint"], c["via"], c["ancestor"], c["dataset"])
                for c in report.get("checkpoints_via_reward_model", [])
            ],
        )
    )
    lines += ["", "checkpoints that may hold it, not verified as trained on it:"]
    lines.append(
        table(
            UNVERIFIED_COLUMNS,
            [[c[k] for k in UNVERIFIED_COLUMNS] for c in report.get("checkpoints_unverified", [])],
        )
    )
    return "\n".join(lines)
