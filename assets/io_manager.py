"""Polars frames as Parquet, written atomically, with row count, schema and preview as metadata.

dagster-polars 0.27 cannot read back under polars 2.x, and we need little of it: a frame (or a
named set of frames, stored as a folder) per asset and partition. ``base_dir`` is a local path
or any fsspec URL (``s3://bucket/prefix``) through universal-pathlib.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
from upath import UPath

from curation.storage import write_parquet

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


class PolarsParquetIOManager(dg.ConfigurableIOManager):
    """Stores ``pl.DataFrame``/``pl.LazyFrame`` outputs as ``<base_dir>/<asset key>.parquet``
    (``/<partition>.parquet`` when partitioned) and ``dict[str, DataFrame]`` outputs as a folder
    of Parquet files, one per name."""

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
        if isinstance(obj, dict):
            metadata: dict[str, Any] = {}
            for name, frame in obj.items():
                write_frame(frame, path / f"{name}.parquet")
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
        return self._load_path(self._path(context))

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
        if path.is_dir():
            return {p.stem: read_frame(p) for p in sorted(path.glob("*.parquet"))}
        return read_frame(path.with_name(path.name + ".parquet"))
