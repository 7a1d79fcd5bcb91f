import os

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
