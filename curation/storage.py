"""Atomic Parquet writes, and append-only tables of part files: a crash never leaves a
half-written file that a later stage reads."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl


def write_parquet(frame: pl.DataFrame | pl.LazyFrame, path: Path) -> Path:
    """Write to a temporary sibling, then rename over the target (atomic on one filesystem)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        if isinstance(frame, pl.LazyFrame):
            frame.sink_parquet(tmp)
        else:
            frame.write_parquet(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# --- append-only tables: part files and a manifest --------------------------------------------
#
# A table that grows by drops is stored as one Parquet part per drop (or per group of embedded
# sources) plus ``_manifest.json`` listing the parts in order. A refresh writes the new drop's
# part and a new manifest; the other parts stay as they are, so combining costs O(parts), not
# O(rows). Part files get a fresh token in their name, so a rewritten part never overwrites a
# file the current manifest names: parts are written first (temporary name, then rename), the
# manifest last (same), and files no manifest names are removed only after that. A crash at any
# point leaves the previous manifest and every file it names intact.

MANIFEST = "_manifest.json"


@dataclass(frozen=True)
class Part:
    """One part of a table. ``name``: stable within the table (``drop=2026-11-27``);
    ``tag``: what it was built from, so a caller can tell whether it is stale; ``file``: its
    file (or, for a table with members, its folder) relative to the table's folder; ``rows``
    and ``stats``: what metadata needs without reading the part."""

    name: str
    tag: str
    file: str = ""
    rows: int = 0
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class PartSet:
    """A table stored as ordered parts under ``folder``. ``members``: for a table of several
    frames (a ledger and its states), each part is a folder with one file per member."""

    folder: Path
    parts: list[Part]
    members: tuple[str, ...] = ()

    def path(self, part: Part, member: str | None = None) -> Path:
        base = self.folder / part.file
        return base / f"{member}.parquet" if member else base

    def paths(self, member: str | None = None) -> list[Path]:
        return [self.path(p, member) for p in self.parts]

    def scan(self, member: str | None = None) -> pl.LazyFrame:
        """Every part, lazily, in order (an empty table: an empty frame)."""
        paths = [str(p) for p in self.paths(member)]
        if not paths:
            return pl.LazyFrame()
        return pl.scan_parquet(paths)

    def read(self, member: str | None = None) -> pl.DataFrame:
        return self.scan(member).collect()

    def read_part(self, name: str, member: str | None = None) -> pl.DataFrame:
        return pl.read_parquet(self.path(self.by_name()[name], member))

    def by_name(self) -> dict[str, Part]:
        return {p.name: p for p in self.parts}

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.parts)

    def summed(self, stat: str) -> dict[str, int]:
        """A per-part count table (``stats[stat]``: key → count) summed over the parts."""
        total: dict[str, int] = {}
        for part in self.parts:
            for key, count in part.stats.get(stat, {}).items():
                total[key] = total.get(key, 0) + int(count)
        return dict(sorted(total.items(), key=lambda kv: (-kv[1], kv[0])))


Frames = pl.DataFrame | Mapping[str, pl.DataFrame]


@dataclass
class PartUpdate:
    """What an asset returns to grow a table: the parts in their new order, each either kept
    from ``base`` (named in ``parts`` and absent from ``new``) or written from ``new``."""

    parts: list[Part]
    new: dict[str, Frames] = field(default_factory=dict)
    base: PartSet | None = None
    members: tuple[str, ...] = ()


def read_manifest(folder: Path) -> PartSet | None:
    """The table whose manifest is in ``folder``, or None (no manifest, or an unreadable one:
    the caller then builds every part again)."""
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        parts = [Part(**p) for p in data["parts"]]
        return PartSet(folder, parts, tuple(data.get("members", ())))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_parts(folder: Path, update: PartUpdate) -> PartSet:
    """Write ``update``'s new parts, then the manifest, then remove what no manifest names."""
    folder.mkdir(parents=True, exist_ok=True)
    kept = update.base.by_name() if update.base is not None else {}
    written: list[Part] = []
    for part in update.parts:
        if part.name in update.new:
            frames = update.new[part.name]
            file = f"{_slug(part.name)}-{uuid.uuid4().hex[:10]}"
            if isinstance(frames, pl.DataFrame):
                file += ".parquet"
                write_parquet(frames, folder / file)
            else:
                for member, frame in frames.items():
                    write_parquet(frame, folder / file / f"{member}.parquet")
            written.append(dataclasses.replace(part, file=file))
            continue
        old = kept.get(part.name)
        if old is None:
            raise ValueError(f"{folder}: part {part.name!r} is neither new nor in the base table")
        source = update.base.path(old)  # type: ignore[union-attr]
        if source.parent.resolve() != folder.resolve():
            # The table moved (another base_dir): bring the part along.
            target = folder / old.file
            _copy(source, target)
        written.append(dataclasses.replace(part, file=old.file))
    table = PartSet(folder, written, tuple(update.members))
    payload = {"members": list(table.members), "parts": [dataclasses.asdict(p) for p in written]}
    tmp = folder / f".{MANIFEST}.{uuid.uuid4().hex}.tmp"
    tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    os.replace(tmp, folder / MANIFEST)
    named = {p.file for p in written} | {MANIFEST}
    for entry in folder.iterdir():
        if entry.name not in named and not entry.name.startswith("."):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    return table


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "part"


def _copy(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    if source.is_dir():
        shutil.copytree(source, tmp)
    else:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)
