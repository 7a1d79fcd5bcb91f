"""Every row the pipeline read, every row it could not read, and every ledger verdict, gathered
once from an outputs folder. Only ids, provenance and ledgers are read, never message text, so
tracing a large run stays cheap."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from curation.curate import STATES
from curation.folders import current_folder, set_folders
from curation.schema import LEDGER, REJECTED
from curation.storage import read_manifest
from curation.trace.errors import TraceError
from curation.trace.parquet import read_columns

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
    frame = read_columns(paths, ROW_COLUMNS)
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


def _tagged(folder: Path, member: str, columns: Sequence[str], asset: str) -> pl.DataFrame | None:
    """The ``member`` table of ``folder``, each row tagged with the asset it was read from."""
    return _with_asset(read_columns(_members(folder, member), columns), asset)


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
        rejected.append(_tagged(folder, "rejected", REJECTED_COLUMNS, folder.name))
        ledgers.append(_tagged(folder, "ledger", LEDGER_COLUMNS, folder.name))
        looked_in.append(f"{folder}/")
    for name, kind in COMBINED_TABLES.items():
        rows.append(_read_rows(_asset_files(outputs, name), kind, None))
        looked_in.append(str(outputs / f"{name}.parquet"))
    rejects = outputs / INGEST_REJECTS
    rejected.append(_tagged(rejects, "rejected", REJECTED_COLUMNS, INGEST_REJECTS))
    ledgers.append(_tagged(rejects, "ledger", LEDGER_COLUMNS, INGEST_REJECTS))
    looked_in.append(f"{rejects}/")
    states = []
    for folder in _ledger_folders(outputs):
        ledgers.append(_tagged(folder, "ledger", LEDGER_COLUMNS, folder.name))
        states.append(_tagged(folder, "states", STATES_COLUMNS, folder.name))
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
        [read_columns(_asset_files(outputs, FEEDBACK_PAIRS), tuple(FEEDBACK_SCHEMA))],
        FEEDBACK_SCHEMA,
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
