"""An exported dataset as training read it: a split's ids (one file, parts by manifest, or the
save_to_disk copy training prefers) and the digests training recorded of them, recomputed here
because training imports torch and curation must not."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import polars as pl

from curation.storage import read_manifest
from curation.trace.errors import TraceError
from curation.trace.locate import relocate
from curation.trace.parquet import parquet_schema, read_parquet
from training.datafiles import content_digest


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
        if "id" not in parquet_schema(path):
            return []
        ids += read_parquet(path, ["id"])["id"].cast(pl.String).to_list()
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
