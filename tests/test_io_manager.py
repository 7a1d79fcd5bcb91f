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
