"""Datasets exported by parts: one train/test Parquet pair per drop behind a manifest. A second
export writes the new drop's pair only; training loads the parts as one dataset with the same
rows, splits and row-id digest as a whole export of the same rows."""

import polars as pl
import pytest

from assets.resources import SAMPLES
from curation.datasets import PARTS, ExportConfig, export, export_parts, sft_rows
from curation.ingest import ingest
from curation.storage import Part, read_manifest
from training.common import ids_digest, load_splits


@pytest.fixture(scope="module")
def drops():
    rows = sft_rows(ingest("flan", [SAMPLES / "flan.jsonl"]).conversations)
    half = rows.height // 2
    return {"A": rows.head(half), "B": rows.slice(half)}


def parts(drops, names):
    return [(Part(n, f"tag-{n}", rows=drops[n].height), lambda n=n: drops[n]) for n in names]


def as_rows(dataset) -> pl.DataFrame:
    return pl.from_arrow(dataset.data.table).select("id", "source", "messages").sort("id")


def test_a_second_drop_writes_its_own_pair_and_loads_like_a_whole_export(tmp_path, drops):
    out = tmp_path / "datasets"
    config = ExportConfig(eval_fraction=0.2)
    first = export_parts("sft", parts(drops, "A"), out, config)
    folder = out / "sft" / PARTS
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*.parquet")}
    second = export_parts("sft", parts(drops, "AB"), out, config)
    assert first["parts_written"] == ["A"] and second["parts_written"] == ["B"]
    # A's pair was not written again.
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert [p.name for p in read_manifest(folder).parts] == ["A", "B"]

    whole = export("whole", pl.concat(drops.values()), tmp_path / "w", config)
    by_parts, at_once = load_splits(out / "sft"), load_splits(tmp_path / "w" / "whole")
    assert second["rows"] == whole["rows"] and second["by_source"] == whole["by_source"]
    for split in ("train", "test"):
        assert as_rows(by_parts[split]).equals(as_rows(at_once[split]))
    assert ids_digest(by_parts["train"]) == ids_digest(at_once["train"]) != ""


def test_another_split_fraction_rewrites_every_pair_and_a_half_written_part_is_not_read(
    tmp_path, drops
):
    out = tmp_path / "datasets"
    export_parts("sft", parts(drops, "AB"), out, ExportConfig(eval_fraction=0.2))
    again = export_parts("sft", parts(drops, "AB"), out, ExportConfig(eval_fraction=0.5))
    assert again["parts_written"] == ["A", "B"]
    # A crash while a third drop's pair is written: the file exists, the manifest does not
    # name it, and training does not read it.
    stray = out / "sft" / PARTS / "C-0000000000"
    stray.mkdir()
    drops["A"].write_parquet(stray / "train.parquet")
    loaded = load_splits(out / "sft")
    total = sum(f.height for f in drops.values())
    assert loaded["train"].num_rows + loaded["test"].num_rows == total


def test_a_whole_export_replaces_parts_and_the_other_way_round(tmp_path, drops):
    out = tmp_path / "datasets"
    export_parts("sft", parts(drops, "A"), out)
    export("sft", drops["A"], out)
    assert not (out / "sft" / PARTS).exists() and (out / "sft" / "hf").is_dir()
    export_parts("sft", parts(drops, "A"), out)
    assert not (out / "sft" / "train.parquet").exists() and not (out / "sft" / "hf").exists()
    assert load_splits(out / "sft")["train"].num_rows > 0
