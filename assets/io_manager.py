"""Polars frames as Parquet, written atomically, with row count, schema and preview as metadata.

dagster-polars 0.27 cannot read back under polars 2.x, and we need little of it: a frame (or a
named set of frames, stored as a folder) per asset and partition. ``base_dir`` is a local path
or any fsspec URL (``s3://bucket/prefix``) through universal-pathlib.

A named set of frames is one output: a reader must get all of them from the same write, so
it is written into a fresh sibling folder and swapped in whole (curation.folders, shared with
the postforge CLI, which must not import dagster); an object store, which cannot rename a
folder, gets versioned sets behind a pointer instead (below).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
from upath import UPath

from curation.folders import READ_ATTEMPTS, current_folder, read_tables
from curation.folders import write_tables as write_local_tables
from curation.storage import PartSet, PartUpdate, read_manifest, write_parquet, write_parts

PREVIEW_ROWS = 5
PREVIEW_CHARS = 120


def frame_metadata(frame: pl.DataFrame) -> dict[str, Any]:
    """What the UI shows for a stored frame: rows, schema, a short preview."""
    return {
        "dagster/row_count": frame.height,
        "dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(name, str(dtype)) for name, dtype in frame.schema.items()]
        ),
        "preview": dg.MetadataValue.md(preview_markdown(frame)),
    }


def preview_markdown(frame: pl.DataFrame, rows: int = PREVIEW_ROWS) -> str:
    if frame.height == 0:
        return "_empty_"
    head = frame.head(rows)

    def cell(value: Any) -> str:
        text = str(value).replace("\n", " ").replace("|", "\\|")
        return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"

    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * len(head.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in head.iter_rows()]
    return "\n".join(lines)


def write_frame(frame: pl.DataFrame | pl.LazyFrame, path: UPath) -> None:
    """Local: temporary sibling + rename, so readers never see a partial file. Object stores
    already publish an object only once its upload completes."""
    if path.protocol in ("", "file", "local"):
        write_parquet(frame, Path(path.path))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        (frame.collect() if isinstance(frame, pl.LazyFrame) else frame).write_parquet(handle)


def read_frame(path: UPath) -> pl.DataFrame:
    if path.protocol in ("", "file", "local"):
        return pl.read_parquet(path.path)
    with path.open("rb") as handle:
        return pl.read_parquet(handle)


def part_metadata(table: PartSet) -> dict[str, Any]:
    """Rows, schema and a preview of a parted table, read from its manifest and first part
    only (O(parts), not O(rows))."""
    metadata: dict[str, Any] = {"dagster/row_count": table.rows, "parts": len(table.parts)}
    member = table.members[0] if table.members else None
    first = next((p for p in table.parts if p.rows), None)
    if first is not None:
        head = pl.scan_parquet(table.path(first, member)).head(PREVIEW_ROWS).collect()
        metadata["dagster/column_schema"] = dg.TableSchema(
            columns=[dg.TableColumn(name, str(dtype)) for name, dtype in head.schema.items()]
        )
        metadata["preview"] = dg.MetadataValue.md(preview_markdown(head))
    return metadata


def previous_table(instance: dg.DagsterInstance, key: dg.AssetKey) -> PartSet | None:
    """The parted table ``key``'s latest materialization stored (its ``path`` metadata), or
    None: an asset extends the table it wrote last time instead of building every part."""
    event = instance.get_latest_materialization_event(key)
    materialization = event.asset_materialization if event is not None else None
    entry = materialization.metadata.get("path") if materialization is not None else None
    if entry is None:
        return None
    return read_manifest(Path(str(entry.value)))


def wants_parts(context: dg.InputContext) -> bool:
    """An input annotated ``PartSet`` gets the table's manifest (parts read lazily); any other
    annotation gets the rows, as before."""
    dagster_type = context.dagster_type
    return dagster_type is not None and getattr(dagster_type, "typing_type", None) is PartSet


def _file_tag(path: Path) -> str:
    """A whole-table file's tag: it changes whenever the file is written again."""
    stat = path.stat()
    return f"whole {stat.st_mtime_ns} {stat.st_size}"


def write_tables(tables: dict[str, pl.DataFrame | pl.LazyFrame], path: UPath) -> None:
    """A named set of frames, replacing the previous set whole: ``path/<name>.parquet``
    locally (curation.folders), ``path/_sets/<version>/<name>.parquet`` behind
    ``path/_set.json`` on an object store."""
    if path.protocol in ("", "file", "local"):
        write_local_tables(tables, Path(path.path))
        return
    _write_stored_set(tables, path)


# An object store cannot rename a folder: there a set is written under ``_sets/<version>/`` and
# becomes current when ``_set.json`` naming that version is written (one object, written
# whole), after which the other versions are removed.
SET_POINTER = "_set.json"
SET_VERSIONS = "_sets"


def _write_stored_set(tables: dict[str, pl.DataFrame | pl.LazyFrame], path: UPath) -> None:
    version = f"v-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
    for name, frame in tables.items():
        write_frame(frame, path / SET_VERSIONS / version / f"{name}.parquet")
    pointer = {"version": version, "tables": sorted(tables)}
    (path / SET_POINTER).write_text(json.dumps(pointer))
    for entry in path.iterdir():  # tables written before sets had versions
        if entry.name.endswith(".parquet"):
            entry.unlink()
    for entry in (path / SET_VERSIONS).iterdir():
        if entry.name != version:
            entry.fs.rm(entry.path, recursive=True)


def _read_stored_set(path: UPath) -> dict[str, pl.DataFrame]:
    """The set ``_set.json`` names; read again when a newer write removed it mid-read."""
    for attempt in range(READ_ATTEMPTS):
        pointer = json.loads((path / SET_POINTER).read_text())
        folder = path / SET_VERSIONS / pointer["version"]
        try:
            return {name: read_frame(folder / f"{name}.parquet") for name in pointer["tables"]}
        except FileNotFoundError:
            if attempt == READ_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


class PolarsParquetIOManager(dg.ConfigurableIOManager):
    """Stores ``pl.DataFrame``/``pl.LazyFrame`` outputs as ``<base_dir>/<asset key>.parquet``
    (``/<partition>.parquet`` when partitioned) and ``dict[str, DataFrame]`` outputs as a folder
    of Parquet files, one per name.

    A ``PartUpdate`` output is an append-only table (curation.storage): ``<base_dir>/<asset
    key>/`` holds one part per drop and ``_manifest.json``; only the update's new parts are
    written. Inputs annotated ``PartSet`` get the manifest; others get the rows (a frame, or a
    dict of frames), concatenated over the parts."""

    base_dir: str

    def _path(self, context: dg.OutputContext | dg.InputContext) -> UPath:
        root = UPath(self.base_dir)
        for part in context.asset_key.path:
            root = root / part
        if context.has_asset_partitions:
            keys = context.asset_partition_keys
            if len(keys) == 1:
                return root / keys[0]
        return root

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        path = self._path(context)
        if isinstance(obj, PartUpdate):
            if path.protocol not in ("", "file", "local"):
                raise TypeError(f"{context.asset_key.to_user_string()}: parted tables are local")
            table = write_parts(Path(path.path), obj)
            # A frame stored the old way would shadow the parts for readers of the folder.
            Path(path.path + ".parquet").unlink(missing_ok=True)
            context.add_output_metadata({**part_metadata(table), "path": str(path)})
            return
        if isinstance(obj, dict):
            metadata: dict[str, Any] = {}
            write_tables(obj, path)
            for name, frame in obj.items():
                metadata[f"{name}_rows"] = frame.height if isinstance(frame, pl.DataFrame) else None
            metadata["path"] = str(path)
            context.add_output_metadata({k: v for k, v in metadata.items() if v is not None})
            return
        if not isinstance(obj, pl.DataFrame | pl.LazyFrame):
            raise TypeError(
                f"{context.asset_key.to_user_string()}: PolarsParquetIOManager stores polars "
                f"frames or dicts of them, got {type(obj).__name__}"
            )
        target = path.with_name(path.name + ".parquet")
        write_frame(obj, target)
        stored = obj if isinstance(obj, pl.DataFrame) else read_frame(target)
        context.add_output_metadata({**frame_metadata(stored), "path": str(target)})

    def load_input(self, context: dg.InputContext) -> Any:
        if context.has_asset_partitions and len(context.asset_partition_keys) > 1:
            return self._load_partitions(context)
        path = self._path(context)
        if path.protocol in ("", "file", "local"):
            table = read_manifest(Path(path.path))
            if wants_parts(context):
                return table if table is not None else self._as_parts(Path(path.path))
            if table is not None:
                if table.members:
                    return {m: table.read(m) for m in table.members}
                return table.read()
        return self._load_path(path)

    @staticmethod
    def _as_parts(path: Path) -> PartSet:
        """A table stored whole (before parts existed) as a table of one part."""
        from curation.storage import Part

        single = path.with_name(path.name + ".parquet")
        if single.exists():
            rows = pl.scan_parquet(single).select(pl.len()).collect().item()
            return PartSet(path.parent, [Part("all", _file_tag(single), single.name, rows)])
        folder = current_folder(path) or path
        members = tuple(sorted(p.stem for p in folder.glob("[!.]*.parquet")))
        if not members:
            raise FileNotFoundError(f"{path}: no stored table")
        first = folder / f"{members[0]}.parquet"
        rows = pl.scan_parquet(first).select(pl.len()).collect().item()
        return PartSet(folder.parent, [Part("all", _file_tag(first), folder.name, rows)], members)

    def _load_partitions(self, context: dg.InputContext) -> Any:
        root = UPath(self.base_dir).joinpath(*context.asset_key.path)
        parts = [self._load_path(root / key) for key in context.asset_partition_keys]
        if parts and isinstance(parts[0], dict):
            names = sorted({name for part in parts for name in part})
            return {
                name: pl.concat([p[name] for p in parts if name in p], how="vertical")
                for name in names
            }
        return pl.concat(parts, how="vertical")

    def _load_path(self, path: UPath) -> Any:
        if path.protocol in ("", "file", "local"):
            if current_folder(Path(path.path)) is not None:
                return read_tables(Path(path.path))
            return read_frame(path.with_name(path.name + ".parquet"))
        if (path / SET_POINTER).exists():
            return _read_stored_set(path)
        if path.is_dir():
            return {p.stem: read_frame(p) for p in sorted(path.glob("*.parquet"))}
        return read_frame(path.with_name(path.name + ".parquet"))
