"""Drops: named or dated snapshot folders of raw data, one Dagster partition each.

A drop is ``<drops root>/<drop>/`` holding source files named after their source
(``oasst_trees.jsonl``, ``flan.jsonl``, ``hh_rlhf.jsonl``, ``ultrafeedback.jsonl``,
``chat.parquet``) or grouped in a folder per source (``<drop>/flan/part-1.jsonl``).

Dynamic partitions rather than a date partition: drops arrive when someone copies them in, with
names people chose (``2026-11-27``, ``oasst-refresh``), and some days bring none or several. A
date partition would invent empty days and could not hold two drops of one day. The watched
folder's sensor (pipelines/automation.py) registers each new folder as a partition.

A drop being copied in should be written under a name starting with ``.`` or ``_`` and renamed
when complete: such folders are never picked up, so a half-copied drop is not ingested. The same
holds for files inside a drop (``_chat.jsonl.part``, ``.flan.jsonl.tmp``): they are not read,
not counted when deciding whether a folder is a drop yet, and not part of its content hash.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import dagster as dg
import polars as pl
from upath import UPath

from assets.io_manager import read_frame
from assets.resources import resolve
from curation.schema import stable_id_expr

DROPS = dg.DynamicPartitionsDefinition(name="drops")
DEFAULT_DROPS_ROOT = os.environ.get("POSTFORGE_DROPS", "data/drops")

# Source name in a drop → reader format; "chat" is any generic chat/instruction file, read by
# its extension.
DROP_SOURCES = {
    "oasst": "oasst",
    "flan": "flan",
    "hh": "hh",
    "ultrafeedback": "ultrafeedback",
    "chat": None,
}
GENERIC_BY_SUFFIX = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
DROP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Metadata key under which a drop's ingest may record ``drop_content_hash`` of what it read; the
# drop sensor also finds the hash in the ingest run's tags (pipelines/automation.py).
DROP_CONTENT = "drop_content"


class DropError(ValueError):
    """A drop that cannot be ingested as a whole (its partition fails, the others do not)."""


def drops_root(root: str | Path | None = None) -> Path:
    return resolve(str(root or DEFAULT_DROPS_ROOT))


def visible_files(folder: Path) -> list[Path]:
    """The drop's files that count, sorted: none under a name (file or folder) starting with
    ``.`` or ``_``, which is how a file still being copied is marked."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and not any(part.startswith((".", "_")) for part in path.relative_to(folder).parts)
    )


def is_ready_drop(folder: Path) -> bool:
    """A visible folder with a valid partition name and at least one visible data file: a
    folder holding only a half-copied ``_chat.jsonl`` is not a drop yet (its ingest would fail
    with "no data files")."""
    return (
        folder.is_dir()
        and DROP_NAME.match(folder.name) is not None
        and any(p.suffix in DATA_SUFFIXES for p in visible_files(folder))
    )


def drop_content_hash(folder: Path) -> str:
    """What the drop's ingest would read, as a digest of its visible files' paths and bytes:
    unlike a size-and-mtime fingerprint, a ``touch`` or an rsync that rewrites the same bytes
    leaves it as it was, so the drop is not ingested again."""
    digest = hashlib.sha256()
    for path in visible_files(folder):
        # Name and size first, so the files' bytes cannot run into one another.
        digest.update(f"{path.relative_to(folder)}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:32]


def find_drops(root: str | Path | None = None) -> list[str]:
    """Names of the drops ready in the watched folder, sorted (dated names sort by date)."""
    folder = drops_root(root)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if is_ready_drop(p))


def source_of(relative: Path) -> str:
    """The source a file belongs to: its top-level folder, else its name up to ``_`` or ``.``."""
    head = relative.parts[0] if len(relative.parts) > 1 else relative.name
    return re.split(r"[_.]", head, maxsplit=1)[0].lower()


def drop_files(folder: Path) -> dict[str, list[Path]]:
    """Reader format → the drop's files in that format. Raises ``DropError`` naming the file when
    one belongs to no known source, so a misnamed file fails its drop instead of being skipped."""
    if not folder.is_dir():
        raise DropError(f"{folder}: drop folder does not exist")
    by_format: dict[str, list[Path]] = {}
    for path in visible_files(folder):
        relative = path.relative_to(folder)
        if path.suffix not in DATA_SUFFIXES:
            raise DropError(
                f"{path}: not a data file (expected {', '.join(DATA_SUFFIXES)}) in drop "
                f"{folder.name!r}"
            )
        source = source_of(relative)
        if source not in DROP_SOURCES:
            raise DropError(
                f"{path}: source {source!r} unknown; name the file or its folder after one of "
                f"{', '.join(DROP_SOURCES)}"
            )
        fmt = DROP_SOURCES[source] or GENERIC_BY_SUFFIX[path.suffix]
        by_format.setdefault(fmt, []).append(path)
    if not by_format:
        raise DropError(f"{folder}: drop {folder.name!r} has no data files")
    return by_format


def materialized_drops(instance: dg.DagsterInstance, key: dg.AssetKey) -> list[str]:
    """Registered drops with a stored materialization of ``key``, in registration order. A drop
    whose ingest failed has none, so combining skips it instead of failing on a missing file."""
    done = instance.get_materialized_partitions(key)
    return [d for d in instance.get_dynamic_partitions(DROPS.name) if d in done]


def stored_path(instance: dg.DagsterInstance, key: dg.AssetKey, drop: str) -> str:
    """Where the IO manager wrote ``key``'s latest materialization of ``drop`` (its ``path``)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[drop]), limit=1
    ).records
    if not records:
        raise DropError(f"{key.to_user_string()}[{drop}]: no materialization recorded")
    materialization = records[0].asset_materialization
    entry = materialization.metadata.get("path") if materialization else None
    if entry is None:
        raise DropError(f"{key.to_user_string()}[{drop}]: materialization has no path metadata")
    return str(entry.value)


def load_drop_table(
    instance: dg.DagsterInstance, key: dg.AssetKey, table: str
) -> dict[str, pl.DataFrame]:
    """Drop → its stored ``table`` (``conversations``, ``preferences``, ...), for every drop
    materialized so far that has one."""
    loaded = {}
    for drop in materialized_drops(instance, key):
        path = UPath(stored_path(instance, key, drop)) / f"{table}.parquet"
        if path.exists():
            loaded[drop] = read_frame(path)
    return loaded


def replace_by_id(parts: Sequence[pl.DataFrame]) -> tuple[pl.DataFrame, int]:
    """Concatenate in order; a row whose ``id`` comes again in a later part (a drop delivering
    a newer snapshot of it) is replaced by the later one. Returns the frame and how many rows
    were replaced."""
    kept: list[pl.DataFrame] = []
    replaced = 0
    for index, part in enumerate(parts):
        later = [p["id"] for p in parts[index + 1 :] if p.height]
        if later and part.height:
            seen = pl.concat(later).unique()
            stays = ~part["id"].is_in(seen.implode())
            replaced += part.height - int(stays.sum())
            part = part.filter(stays)
        kept.append(part)
    return pl.concat(kept, how="vertical"), replaced


def qualify_positional_ids(frame: pl.DataFrame, drop: str) -> pl.DataFrame:
    """Rows without ids of their own are known by position (``flan.jsonl:5``), and every drop
    has its own ``flan.jsonl``: those get the drop in ``source_id`` and a new ``id``, so two
    drops never claim the same row. Rows with the source's ids (OpenAssistant message ids, an
    ``id`` column) keep them: a later drop delivering one again is a newer version of it.

    A preference pair's ``source_ids`` name the rows it was cut from (an UltraFeedback or HH
    pair: its conversation's ``source_id``), so positional ones are qualified the same way:
    left as ``ultrafeedback.jsonl:5`` they would point at no row of the drop, whose
    conversation is ``<drop>/ultrafeedback.jsonl:5``, and trace could not join the two."""
    if frame.height == 0 or "provenance" not in frame.columns:
        return frame
    files = frame.get_column("provenance").struct.field("file")
    depth = int(files.str.count_matches("/").max() or 0) + 1
    positional = _positional(depth, pl.col("source_id"))
    qualified = frame.with_columns(
        pl.when(positional)
        .then(stable_id_expr(drop, pl.col("id")))
        .otherwise(pl.col("id"))
        .alias("id"),
        _qualified(pl.col("source_id"), positional, drop).alias("source_id"),
    )
    if "source_ids" in frame.columns:
        qualified = qualified.with_columns(_qualified_lists(frame, depth, drop))
    return qualified


def _qualified(value: pl.Expr, positional: pl.Expr, drop: str) -> pl.Expr:
    return pl.when(positional).then(pl.lit(f"{drop}/") + value).otherwise(value)


def _qualified_lists(frame: pl.DataFrame, depth: int, drop: str) -> pl.Series:
    """``source_ids`` with each positional element qualified by the drop. Whether an element is
    positional depends on its row's file, which ``list.eval`` cannot see, so the lists are
    exploded beside the file and gathered back in row order."""
    original = frame.get_column("source_ids")
    element = pl.col("source_ids")
    gathered = (
        frame.select(pl.int_range(pl.len()).alias("row"), "provenance", "source_ids")
        # One row per list, even an empty or null one, so the lists gather back one per row.
        .explode("source_ids", empty_as_null=True, keep_nulls=True)
        .select("row", _qualified(element, _positional(depth, element), drop).alias("source_ids"))
        .group_by("row", maintain_order=True)
        .agg("source_ids")
        .get_column("source_ids")
    )
    # An empty or null list came back as [null]: it stays as it was.
    unchanged = original.list.len().fill_null(0) == 0
    return original.zip_with(unchanged, gathered.cast(original.dtype))


def _positional(depth: int, value: pl.Expr) -> pl.Expr:
    """Whether ``value`` (a row's ``source_id``, or one of its ``source_ids``) is a positional
    id: ``LABEL:...`` where the label is a trailing part of the row's file path. A reader labels
    by the file name, or by more of the path when two files of one read share a name
    (``a/part.jsonl`` and ``b/part.jsonl`` in ``flan/``), so every trailing part up to ``depth``
    (the deepest path's) is tried, not the name alone. Paths are a few folders deep: a handful
    of expressions."""
    parts = pl.col("provenance").struct.field("file").str.split("/")
    found = pl.lit(False)
    for size in range(1, depth + 1):
        label = parts.list.slice(-size).list.join("/")
        found = found | ((parts.list.len() >= size) & value.str.starts_with(label + pl.lit(":")))
    return found.fill_null(False)


class DropRecord(NamedTuple):
    """A drop's latest materialization: a tag naming it, where it was stored, and the row
    counts it reported (``conversations``, ``preferences``, ...; empty when it reported none)."""

    tag: str
    path: str
    counts: dict[str, int]


def drop_records(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, DropRecord]:
    """Drop → its ``DropRecord``, for every drop materialized so far, in registration order: a
    few queries whatever the drop count (the latest event per drop, then those events), no rows
    read."""
    drops = materialized_drops(instance, key)
    if not drops:
        return {}
    latest = instance.get_latest_storage_id_by_partition(
        key, dg.DagsterEventType.ASSET_MATERIALIZATION, set(drops)
    )
    found = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, storage_ids=list(latest.values())),
        limit=max(len(latest), 1),
    ).records
    by_id = {r.storage_id: r for r in found}
    records = {}
    for drop in drops:
        record = by_id.get(latest.get(drop, -1))
        if record is None or record.asset_materialization is None:
            continue
        metadata = record.asset_materialization.metadata
        entry = metadata.get("path")
        if entry is not None:
            counts = {
                name: int(value.value)
                for name, value in metadata.items()
                if isinstance(value, dg.IntMetadataValue) and value.value is not None
            }
            records[drop] = DropRecord(
                f"materialization {record.storage_id}", str(entry.value), counts
            )
    return records


# Not compared when telling a re-delivered row from a changed one: it names the file and line
# a row was read from, which differ for every delivery of the same content.
DELIVERY_COLUMNS = ("provenance",)


class Deliveries(NamedTuple):
    """Parts after ``without_later_ids``, and why rows left them: ``replaced`` (an earlier
    delivery another drop changed) and ``redelivered`` (a later copy of what an earlier part
    already holds)."""

    parts: list[pl.DataFrame]
    replaced: int
    redelivered: int


def without_later_ids(parts: Sequence[pl.DataFrame]) -> Deliveries:
    """Each part without the rows that another part holds instead, for rows whose ``id`` more
    than one part delivers. The row's latest content wins, and it stays where it was first
    delivered as such: the part holding it is the first of the trailing run of parts that
    deliver it with that content (every column but ``DELIVERY_COLUMNS`` equal). So a verbatim
    re-delivery (a drop copied into a new folder) leaves the row in its earlier part and adds
    nothing, and a changed row moves to the drop that changed it, as a newer snapshot should.
    Counting the run from the end keeps the result the same whether parts come one refresh at a
    time or all at once: a part compared with what an earlier refresh kept decides as a run over
    every part would. A part that delivers one id twice with different content holds both rows
    when it is the last part delivering the id (the rule cannot pick one), else loses both.

    Cost: one pass over the ``id`` columns to find ids in several parts; content is read and
    compared (exactly, column by column) for those rows only."""
    present = [(k, part) for k, part in enumerate(parts) if part.height]
    if len(present) < 2:
        return Deliveries(list(parts), 0, 0)
    # Ids a later part delivers again, found as before this rule compared content: each part's
    # ids probed against the later parts' (a hash set of what comes after, usually a drop).
    later = pl.Series("id", [], dtype=pl.String)
    again: list[pl.Series] = []
    for _, part in reversed(present):
        ids = part["id"].cast(pl.String)
        if later.len():
            again.append(ids.filter(ids.is_in(later.implode())))
        later = pl.concat([later, ids])
    repeated = pl.concat(again).unique().to_frame("id")
    if repeated.height == 0:
        return Deliveries(list(parts), 0, 0)
    holders = _holders(present, repeated)
    removed = holders.filter(pl.col("part") != pl.col("holder"))
    replaced = int(removed.filter(pl.col("part") < pl.col("holder"))["rows"].sum())
    redelivered = int(removed.filter(pl.col("part") > pl.col("holder"))["rows"].sum())
    lost = {
        key[0]: group["id"] for key, group in removed.partition_by("part", as_dict=True).items()
    }
    kept = [
        part.filter(~pl.col("id").cast(pl.String).is_in(lost[k].implode())) if k in lost else part
        for k, part in enumerate(parts)
    ]
    return Deliveries(kept, replaced, redelivered)


def _holders(present: list[tuple[int, pl.DataFrame]], repeated: pl.DataFrame) -> pl.DataFrame:
    """(id, part, rows, holder) for every part delivering an id of ``repeated``: ``holder`` is
    the part that keeps the id (see ``without_later_ids``)."""
    rows = pl.concat(
        [
            part.with_columns(pl.col("id").cast(pl.String))
            .join(repeated, on="id", how="semi")
            .select(pl.exclude(DELIVERY_COLUMNS))
            .with_columns(part=pl.lit(k, pl.UInt32), row=pl.int_range(pl.len(), dtype=pl.UInt32))
            for k, part in present
        ],
        how="diagonal_relaxed",
    ).sort("id", "part", "row")
    content = [c for c in rows.columns if c not in ("id", "part", "row")]
    same_as_next = pl.all_horizontal([pl.col(c).eq_missing(pl.col(c).shift(-1)) for c in content])
    # A change between a delivery and the next one of the same id; the last one has none.
    changes = ((pl.col("id") == pl.col("id").shift(-1)) & ~same_as_next).fill_null(False)
    # The change first, over the whole sorted frame: inside ``over`` it would be computed group
    # by group (a list comparison per id, ten times slower at 10k repeated ids).
    rows = rows.with_columns(changes.cast(pl.UInt32).alias("change")).with_columns(
        in_last_run=pl.col("change").cum_sum(reverse=True).over("id") == 0
    )
    first_of_run = pl.col("part").filter(pl.col("in_last_run")).min()
    last_changed = pl.col("part").filter(~pl.col("in_last_run")).max()
    holder = (
        pl.when(last_changed.is_null() | (last_changed < first_of_run))
        .then(first_of_run)
        .otherwise(pl.col("part").max())
    )
    return (
        rows.with_columns(holder=holder.over("id"))
        .group_by("id", "part")
        .agg(pl.len().alias("rows"), pl.col("holder").first())
    )
