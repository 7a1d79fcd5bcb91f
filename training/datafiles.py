"""Where an exported dataset's rows are on disk, and a digest of them.

One place decides which files a stage reads (``training.common.load_splits``) and which files
say whether the data changed (``content_digest``), so the two cannot disagree. No torch, no
polars: the Dagster assets version their datasets with the same digest, which is how a
checkpoint's fingerprint and its input's data version stay the same thing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

SPLITS = ("train", "test")


class DatasetFiles(NamedTuple):
    """``kind``: ``parts`` (one Parquet pair per drop named by ``parts/_manifest.json``),
    ``saved`` (a ``save_to_disk`` DatasetDict, ``root`` is its folder) or ``parquet``
    (``train.parquet``/``test.parquet``); ``files``: split → the data files, in reading order."""

    kind: str
    root: Path
    files: dict[str, list[str]]


def locate_dataset(path: str | Path) -> DatasetFiles:
    """The files a stage reads for ``path``: an export by parts first (only the parts its
    manifest names: one being written is not read), then a ``save_to_disk`` copy (``hf/`` or
    the folder itself), then whole Parquet files."""
    path = Path(path)
    parts = _part_files(path / "parts")
    if parts is not None:
        return DatasetFiles("parts", path / "parts", parts)
    saved = path / "hf" if (path / "hf").is_dir() else path
    if (saved / "dataset_dict.json").exists():
        return DatasetFiles("saved", saved, _saved_files(saved))
    files = {s: [str(path / f"{s}.parquet")] for s in SPLITS if (path / f"{s}.parquet").exists()}
    if not files:
        raise FileNotFoundError(
            f"{path}: no dataset (expected a save_to_disk folder, parts/ or train.parquet)"
        )
    return DatasetFiles("parquet", path, files)


def content_digest(path: str | Path) -> str:
    """sha256 over the bytes of every data file a stage reads from ``path``, split by split in
    reading order, so rows rewritten under the same ids (a repaired answer, a re-cut mixture)
    change it and a dataset written again with the same rows does not. File names are left
    out: where the same bytes sit does not change what is trained on."""
    located = locate_dataset(path)
    digest = hashlib.sha256(located.kind.encode())
    for split in sorted(located.files):
        for file in located.files[split]:
            digest.update(f"\n{split}\n{Path(file).stat().st_size}\n".encode())
            with open(file, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
    return digest.hexdigest()


def files_digest(path: str | Path) -> str:
    """sha256 over a file, or over every file under a folder (relative name and content): for
    inputs that are not datasets, such as a tokenizer a stage trains from scratch with."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        name = file.relative_to(path).as_posix() if path.is_dir() else file.name
        digest.update(f"\n{name}\n{file.stat().st_size}\n".encode())
        with file.open("rb") as handle:  # a 374M checkpoint's weights are 1.5 GB
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _part_files(folder: Path) -> dict[str, list[str]] | None:
    """Split → the non-empty part files a parts manifest names (read with json: training does
    not import polars, so not through curation.storage)."""
    manifest = folder / "_manifest.json"
    if not manifest.is_file():
        return None
    entries = json.loads(manifest.read_text(encoding="utf-8"))["parts"]
    files = {
        split: [
            str(folder / e["file"] / f"{split}.parquet") for e in entries if e["stats"].get(split)
        ]
        for split in SPLITS
    }
    return {s: f for s, f in files.items() if f or s == "train"}


def _saved_files(folder: Path) -> dict[str, list[str]]:
    """Split → the Arrow files of a ``save_to_disk`` DatasetDict, as each split's state.json
    lists them (the JSON beside them holds no rows)."""
    splits = json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
    files = {}
    for split in splits:
        state = json.loads((folder / split / "state.json").read_text(encoding="utf-8"))
        files[split] = [str(folder / split / f["filename"]) for f in state["_data_files"]]
    return files
