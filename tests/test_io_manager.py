import os
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from upath import UPath

from assets.io_manager import PolarsParquetIOManager, write_frame
from curation.storage import write_parquet


def test_round_trip_frames_and_folders_through_a_real_instance(tmp_path, instance):
    @dg.asset
    def table() -> pl.DataFrame:
        return pl.DataFrame({"a": [1, 2, 3], "b": ["x", "y", None]})

    @dg.asset
    def lazy_table() -> pl.LazyFrame:
        return pl.LazyFrame({"n": list(range(10))}).filter(pl.col("n") > 4)

    @dg.asset
    def tables() -> dict[str, pl.DataFrame]:
        return {"left": pl.DataFrame({"k": [1]}), "right": pl.DataFrame({"k": [2, 3]})}

    @dg.asset
    def downstream(table: pl.DataFrame, lazy_table: pl.DataFrame, tables: dict) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "rows": [
                    table.height,
                    lazy_table.height,
                    tables["left"].height,
                    tables["right"].height,
                ]
            }
        )

    result = dg.materialize(
        [table, lazy_table, tables, downstream],
        instance=instance,
        resources={"io_manager": PolarsParquetIOManager(base_dir=str(tmp_path / "out"))},
    )
    assert result.success
    assert pl.read_parquet(tmp_path / "out" / "downstream.parquet")["rows"].to_list() == [
        3,
        5,
        1,
        2,
    ]
    assert (tmp_path / "out" / "tables" / "right.parquet").exists()
    materialization = result.asset_materializations_for_node("table")[0]
    assert materialization.metadata["dagster/row_count"].value == 3
    assert [c.name for c in materialization.metadata["dagster/column_schema"].schema.columns] == [
        "a",
        "b",
    ]
    assert "| a | b |" in materialization.metadata["preview"].value


def test_partitioned_asset_stores_one_file_per_partition_and_loads_all(tmp_path, instance):
    partitions = dg.StaticPartitionsDefinition(["d1", "d2"])

    @dg.asset(partitions_def=partitions)
    def drops(context: dg.AssetExecutionContext) -> pl.DataFrame:
        return pl.DataFrame({"drop": [context.partition_key] * 2})

    @dg.asset
    def combined(drops: pl.DataFrame) -> pl.DataFrame:
        return drops

    io = PolarsParquetIOManager(base_dir=str(tmp_path))
    for key in ("d1", "d2"):
        assert dg.materialize(
            [drops], partition_key=key, instance=instance, resources={"io_manager": io}
        ).success
    assert dg.materialize(
        [drops.to_source_asset(), combined], instance=instance, resources={"io_manager": io}
    ).success
    assert sorted(pl.read_parquet(tmp_path / "combined.parquet")["drop"].to_list()) == [
        "d1",
        "d1",
        "d2",
        "d2",
    ]


def test_write_is_atomic_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "t.parquet"
    write_parquet(pl.DataFrame({"v": [1]}), target)

    def crash(self, path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", crash)
    with pytest.raises(OSError, match="disk full"):
        write_parquet(pl.DataFrame({"v": [2]}), target)
    monkeypatch.undo()
    assert pl.read_parquet(target)["v"].to_list() == [1]
    assert os.listdir(tmp_path) == ["t.parquet"]  # no temporary file left behind


def test_fsspec_memory_url_round_trip():
    path = UPath("memory://postforge-test/table.parquet")
    write_frame(pl.DataFrame({"x": [1, 2]}), path)
    with path.open("rb") as handle:
        assert pl.read_parquet(handle)["x"].to_list() == [1, 2]


def test_rejects_non_frame_outputs(tmp_path, instance):
    @dg.asset
    def not_a_frame() -> int:
        return 3

    with pytest.raises(Exception, match="stores polars frames"):
        dg.materialize(
            [not_a_frame],
            instance=instance,
            resources={"io_manager": PolarsParquetIOManager(base_dir=str(tmp_path))},
        )


def test_a_parted_table_grows_by_parts_and_reads_as_parts_or_rows(tmp_path, instance):
    """An asset returning ``PartUpdate`` keeps its earlier parts' files: a reader annotated
    ``PartSet`` gets the manifest, any other reader the rows of every part in order."""
    from assets.io_manager import previous_table
    from curation.storage import Part, PartSet, PartUpdate

    batches = [pl.DataFrame({"id": ["a", "b"]}), pl.DataFrame({"id": ["c"]})]

    @dg.asset
    def grown(context: dg.AssetExecutionContext) -> PartUpdate:
        base = previous_table(context.instance, dg.AssetKey("grown"))
        parts = list(base.parts) if base is not None else []
        name = f"p{len(parts)}"
        frame = batches[len(parts)]
        return PartUpdate([*parts, Part(name, "t", rows=frame.height)], {name: frame}, base)

    @dg.asset
    def as_parts(grown: PartSet) -> pl.DataFrame:
        return pl.DataFrame({"parts": [[p.name for p in grown.parts]]})

    @dg.asset
    def as_rows(grown: pl.DataFrame) -> pl.DataFrame:
        return grown

    io = {"io_manager": PolarsParquetIOManager(base_dir=str(tmp_path))}
    first = dg.materialize([grown], instance=instance, resources=io)
    (old_file,) = [p for p in (tmp_path / "grown").iterdir() if p.suffix == ".parquet"]
    written = old_file.stat().st_mtime_ns
    second = dg.materialize([grown, as_parts, as_rows], instance=instance, resources=io)
    assert first.success and second.success
    assert old_file.stat().st_mtime_ns == written  # the first part was not written again
    assert second.output_for_node("as_parts")["parts"].to_list() == [["p0", "p1"]]
    assert second.output_for_node("as_rows")["id"].to_list() == ["a", "b", "c"]
    meta = second.asset_materializations_for_node("grown")[0].metadata
    assert meta["dagster/row_count"].value == 3 and meta["parts"].value == 2


def test_a_whole_file_reads_as_one_part_whose_tag_follows_the_file(tmp_path):
    from assets.io_manager import PolarsParquetIOManager as Manager

    path = tmp_path / "t.parquet"
    write_parquet(pl.DataFrame({"id": ["a"]}), path)
    first = Manager._as_parts(tmp_path / "t")
    write_parquet(pl.DataFrame({"id": ["a", "b"]}), path)
    second = Manager._as_parts(tmp_path / "t")
    assert [p.rows for p in (*first.parts, *second.parts)] == [1, 2]
    assert first.parts[0].tag != second.parts[0].tag
    assert second.read()["id"].to_list() == ["a", "b"]


# --- a named set of frames is replaced whole ------------------------------------------------------

# Writes ``new`` over ``raw_hh`` through the IO manager and SIGKILLs itself at one point of the
# write: after the first table (between tables), after the old folder is moved aside (between
# the renames), or after the new folder is in place (before the old one is removed).
KILLED_WRITER = """
import os, shutil, signal, sys
from pathlib import Path
import dagster as dg
import polars as pl
from assets.io_manager import PolarsParquetIOManager

base, point = sys.argv[1], sys.argv[2]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if point == "between_tables":
    write, written = pl.DataFrame.write_parquet, []
    def write_then_die(self, *args, **kwargs):
        if written:
            die()
        write(self, *args, **kwargs)
        written.append(1)
    pl.DataFrame.write_parquet = write_then_die
elif point == "between_renames":
    rename = Path.rename
    def rename_then_die(self, target):
        moved = rename(self, target)
        if self.name == "raw_hh":
            die()
        return moved
    Path.rename = rename_then_die
elif point == "before_cleanup":
    shutil.rmtree = lambda *args, **kwargs: die()
new = {
    "conversations": pl.DataFrame({"id": [f"n{i}" for i in range(300)]}),
    "preferences": pl.DataFrame({"id": [f"p{i}" for i in range(200)]}),
}
context = dg.build_output_context(asset_key=dg.AssetKey("raw_hh"))
PolarsParquetIOManager(base_dir=base).handle_output(context, new)
print("not killed")
"""

ANY_TYPE = dg.DagsterType(lambda _, __: True, name="AnyTables")  # a loader not asking for parts
OLD_SET = {"conversations": 3, "preferences": 3, "ledger": 1}
NEW_SET = {"conversations": 300, "preferences": 200}


def _store(io: PolarsParquetIOManager, rows: dict[str, int]) -> None:
    tables = {
        name: pl.DataFrame({"id": [f"{name}{i}" for i in range(n)]}) for name, n in rows.items()
    }
    io.handle_output(dg.build_output_context(asset_key=dg.AssetKey("raw_hh")), tables)


def _load(io: PolarsParquetIOManager) -> dict[str, int]:
    tables = io.load_input(
        dg.build_input_context(asset_key=dg.AssetKey("raw_hh"), dagster_type=ANY_TYPE)
    )
    return {name: frame.height for name, frame in tables.items()}


@pytest.mark.parametrize(
    ("point", "expected"),
    [("between_tables", OLD_SET), ("between_renames", OLD_SET), ("before_cleanup", NEW_SET)],
)
def test_a_set_killed_mid_write_loads_whole_and_the_next_write_succeeds(tmp_path, point, expected):
    """A real SIGKILL at each point of a set's write: a load then sees the whole previous set
    or the whole new one (never new conversations beside old preferences), and the next write
    replaces it and sweeps what the kill left."""
    import subprocess
    import sys

    from assets.io_manager import PolarsParquetIOManager as Manager

    io = Manager(base_dir=str(tmp_path))
    _store(io, OLD_SET)
    child = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(tmp_path), point],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -9, child.stderr  # killed where we said, not before
    assert _load(io) == expected
    # a reader annotated PartSet sees the same set
    parts = Manager._as_parts(tmp_path / "raw_hh")
    assert {m: parts.read(m).height for m in parts.members} == expected
    if point == "between_renames":
        assert not (tmp_path / "raw_hh").exists()  # the state this test is about
    _store(io, {"conversations": 7})
    assert _load(io) == {"conversations": 7}
    assert os.listdir(tmp_path) == ["raw_hh"]  # no staging or old folder left
    assert os.listdir(tmp_path / "raw_hh") == ["conversations.parquet"]


def test_a_reader_never_mixes_two_sets_when_a_write_swaps_them_mid_read(tmp_path, monkeypatch):
    """A write that completes between a reader's first and second table: the reader reads
    again and gets the new set whole."""
    io = PolarsParquetIOManager(base_dir=str(tmp_path))
    _store(io, OLD_SET)
    read, calls = pl.read_parquet, []

    def read_then_replace(source, *args, **kwargs):
        frame = read(source, *args, **kwargs)
        calls.append(frame.height)
        if len(calls) == 1:  # another process replaces the set right now
            _store(io, NEW_SET)
        return frame

    monkeypatch.setattr(pl, "read_parquet", read_then_replace)
    assert _load(io) == NEW_SET
    assert len(calls) > len(NEW_SET)  # it did read the old set first


def test_a_set_write_drops_tables_the_new_set_lacks_and_keeps_lazy_frames(tmp_path):
    io = PolarsParquetIOManager(base_dir=str(tmp_path))
    _store(io, OLD_SET)
    lazy = pl.LazyFrame({"id": ["a", "b"]})
    io.handle_output(dg.build_output_context(asset_key=dg.AssetKey("raw_hh")), {"texts": lazy})
    assert _load(io) == {"texts": 2}


def test_a_write_sweeps_what_dead_writers_left_and_not_a_running_writers_folders(tmp_path):
    """Two runs may write one asset at once: a sweep must not remove (or put back) folders
    of a writer that is still running, only those of writers that died."""
    import subprocess
    import sys

    from curation.folders import current_folder, set_folders, sweep_folder

    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    try:

        def leftover(kind: str, pid: int, at: int) -> Path:
            folder = tmp_path / f".raw_hh.{kind}-{at:020d}-{pid}-0123abcd"
            folder.mkdir()
            write_parquet(pl.DataFrame({"at": [at]}), folder / "conversations.parquet")
            return folder

        dead_tmp, live_tmp = leftover("tmp", finished.pid, 1), leftover("tmp", running.pid, 2)
        dead_old, live_old = leftover("old", finished.pid, 3), leftover("old", running.pid, 4)
        assert current_folder(tmp_path / "raw_hh") == live_old  # readers take the newest
        assert set_folders(tmp_path) == [tmp_path / "raw_hh"]  # listed by its own name
        sweep_folder(tmp_path / "raw_hh")  # the running writer is between its renames
        assert not (tmp_path / "raw_hh").exists() and live_old.exists() and live_tmp.exists()
        assert not dead_tmp.exists() and not dead_old.exists()
        running.kill()
        running.wait()
        sweep_folder(tmp_path / "raw_hh")  # it died there: its old set is put back
        assert os.listdir(tmp_path) == ["raw_hh"]
        assert pl.read_parquet(tmp_path / "raw_hh" / "conversations.parquet")["at"][0] == 4
    finally:
        running.kill()
        running.wait()


def test_a_set_on_an_object_store_becomes_current_when_its_pointer_is_written(monkeypatch):
    """No folder rename on an object store: a write that fails between tables leaves the
    previous set current; a complete one replaces it and removes the older versions."""
    import uuid

    from assets import io_manager

    io = PolarsParquetIOManager(base_dir=f"memory://postforge-sets-{uuid.uuid4().hex}")
    _store(io, OLD_SET)
    write, written = io_manager.write_frame, []

    def write_then_fail(frame, path):
        if written:
            raise OSError("connection reset")
        write(frame, path)
        written.append(path)

    monkeypatch.setattr(io_manager, "write_frame", write_then_fail)
    with pytest.raises(OSError, match="connection reset"):
        _store(io, NEW_SET)
    monkeypatch.undo()
    assert _load(io) == OLD_SET
    _store(io, NEW_SET)
    assert _load(io) == NEW_SET
    root = UPath(io.base_dir) / "raw_hh"
    assert sorted(p.name for p in root.iterdir()) == ["_set.json", "_sets"]
    assert len(list((root / "_sets").iterdir())) == 1
