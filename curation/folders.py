"""A folder of tables replaced as a whole, on the local filesystem.

A named set of tables is one output: a reader must get all of them from the same write. Each
file being atomic is not enough (a run killed after replacing ``conversations.parquet`` left
it beside the previous run's ``preferences.parquet``), so the set is written into a fresh
sibling folder and swapped in whole. The IO manager stores a dict output this way and the
postforge CLI replaces its ``--out`` folder this way; both read a set back with
``read_tables``. Plain filesystem and polars, so the CLI does not pay for importing dagster.

The new set is written into ``.<name>.tmp-*`` beside the target; then the target is renamed to
``.<name>.old-*``, the new folder renamed into its place, and the old one removed. A kill
before the first rename leaves the old set in place; between the renames, the old set aside
(readers read it there; the next write puts it back); after them, the new set. A folder in
place is never written into, so a reader holding it open sees one set or, when it is being
removed, missing files, and reads again. Names starting with a dot are a writer's staging and
set-aside folders: whoever lists a parent of sets skips them (``set_folders``).
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import polars as pl

LEFTOVER = r"\.(?P<kind>tmp|old)-\d{20}-(?P<pid>\d+)-[0-9a-f]{8}"
READ_ATTEMPTS = 5
_ANY_LEFTOVER = re.compile(r"\.(?P<name>.+)" + LEFTOVER)


def _leftover(target: Path, kind: str) -> Path:
    # time first, so the newest of several folders set aside sorts last
    stamp = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return target.with_name(f".{target.name}.{kind}-{stamp}")


def _leftovers(target: Path, kind: str | None = None, dead_only: bool = False) -> list[Path]:
    """What writes of ``target`` left beside it, oldest first; ``dead_only``: only those of
    writers no longer running (another process writing the same target keeps its folders)."""
    if not target.parent.is_dir():
        return []
    pattern = re.compile(re.escape(f".{target.name}") + LEFTOVER)
    found = []
    for entry in target.parent.iterdir():
        match = pattern.fullmatch(entry.name)
        if match is None or kind not in (None, match["kind"]):
            continue
        if not dead_only or not _running(int(match["pid"])):
            found.append(entry)
    return sorted(found, key=lambda p: p.name)


def _running(pid: int) -> bool:
    """Another process with this id is running here (our own leftovers are never in use: a
    write cleans up after itself before it returns or raises)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pid(leftover: Path) -> int:
    return int(leftover.name.rsplit("-", 2)[1])


def current_folder(target: Path) -> Path | None:
    """The folder holding ``target``'s current set: ``target``, or, when a write was killed
    between its two renames, the set it had moved aside; None when neither exists."""
    if target.is_dir():
        return target
    aside = _leftovers(target, "old")
    return aside[-1] if aside else None


def set_folders(parent: Path) -> list[Path]:
    """The folders in ``parent`` by the names their writers gave them, sorted: every folder
    whose name does not start with a dot, and the target of a set a killed write left aside
    (``.NAME.old-*`` with no ``NAME``), which does not exist; read each through
    ``current_folder``. Staging folders and sets already replaced are not listed."""
    if not parent.is_dir():
        return []
    found = set()
    for entry in parent.iterdir():
        if not entry.name.startswith("."):
            if entry.is_dir():
                found.add(entry)
            continue
        match = _ANY_LEFTOVER.fullmatch(entry.name)
        if match is not None and match["kind"] == "old" and entry.is_dir():
            target = parent / match["name"]
            if not target.exists():
                found.add(target)
    return sorted(found)


def sweep_folder(target: Path) -> None:
    """Put back the set a write killed between its renames left aside, and remove every other
    leftover (partial new sets, old sets already replaced). Writers call it; readers never
    move anything."""
    aside = _leftovers(target, "old")
    if not target.exists() and aside and not _running(_pid(aside[-1])):
        aside[-1].rename(target)
    for leftover in _leftovers(target, dead_only=True):
        shutil.rmtree(leftover, ignore_errors=True)


def replace_folder(target: Path, fill: Callable[[Path], None]) -> Path:
    """Make ``target`` hold exactly what ``fill`` writes into the (empty, existing) folder it
    is given, all at once: readers see the previous contents or the new ones, never a mix,
    whenever this process is killed. ``fill`` must write into that folder only and must not
    create it again (polars does not create missing folders)."""
    sweep_folder(target)
    staging = _leftover(target, "tmp")
    staging.mkdir(parents=True)
    # Held open so that its identity can be checked: a folder of that name made again by
    # ``fill`` after a sweep on another machine removed ours would hold part of the set.
    handle = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
    aside = None
    try:
        fill(staging)
        if not os.path.samestat(os.fstat(handle), os.stat(staging)):
            raise FileNotFoundError(f"{staging}: removed while it was written")
        if target.exists():
            aside = _leftover(target, "old")
            target.rename(aside)
        staging.rename(target)
    except BaseException:
        if aside is not None and not target.exists():
            aside.rename(target)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        os.close(handle)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return target


def write_tables(tables: dict[str, pl.DataFrame | pl.LazyFrame], target: Path) -> Path:
    """``target/<name>.parquet`` for each table, and nothing else, replacing the previous set
    whole."""

    def fill(folder: Path) -> None:
        for name, frame in tables.items():
            path = folder / f"{name}.parquet"
            if isinstance(frame, pl.LazyFrame):
                frame.sink_parquet(path)
            else:
                frame.write_parquet(path)

    return replace_folder(target, fill)


def read_tables(target: Path, names: Iterable[str] | None = None) -> dict[str, pl.DataFrame]:
    """``target``'s tables (``<name>.parquet``; all of them, or those of ``names`` present),
    every one from the same set even while a write replaces it. Raises FileNotFoundError when
    there is no set, ValueError naming the file when one cannot be read."""
    wanted = None if names is None else set(names)
    for attempt in range(READ_ATTEMPTS):
        folder = current_folder(target)
        if folder is None:
            raise FileNotFoundError(f"{target}: no stored tables")
        try:
            return _read_one_set(target, folder, wanted)
        except (FileNotFoundError, _Replaced):
            if attempt == READ_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


class _Replaced(Exception):
    """The folder was replaced while it was read."""


def _read_one_set(target: Path, folder: Path, wanted: set[str] | None) -> dict[str, pl.DataFrame]:
    """Listing and files through one handle on the folder, so a rename cannot switch sets
    half-way; the folder is still current afterwards, so none of its files had been removed
    yet when it was listed (a folder is emptied only once it has been replaced)."""
    handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:

        def opener(name: str, flags: int) -> int:
            return os.open(name, flags, dir_fd=handle)

        tables = {}
        for name in sorted(os.listdir(handle)):
            stem = name.removesuffix(".parquet")
            if stem == name or name.startswith(".") or (wanted is not None and stem not in wanted):
                continue
            with open(name, "rb", opener=opener) as file:
                try:
                    tables[stem] = pl.read_parquet(file)
                except Exception as error:  # polars raises several types for a damaged file
                    raise ValueError(
                        f"{folder / name}: not a readable Parquet file ({error})"
                    ) from error
        now = current_folder(target)
        if now is None or not os.path.samestat(os.stat(now), os.fstat(handle)):
            raise _Replaced(str(folder))
        return tables
    finally:
        os.close(handle)
