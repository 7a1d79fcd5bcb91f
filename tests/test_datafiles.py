"""The content digest that fingerprints a run's data and versions a dataset asset: the same
rows written again keep it, in every layout training reads; other content under the same ids,
or another split, changes it; files training does not read do not."""

from pathlib import Path

import polars as pl
import pytest

from curation.datasets import ExportConfig, export, export_parts
from curation.storage import Part
from training.common import load_splits
from training.datafiles import content_digest, locate_dataset

ROWS = pl.DataFrame(
    {
        "id": [f"row-{i}" for i in range(60)],
        "source": ["s"] * 60,
        "text": [f"document number {i}" for i in range(60)],
    }
)


def write(layout: str, rows: pl.DataFrame, folder: Path, eval_fraction: float = 0.1) -> Path:
    config = ExportConfig(eval_fraction=eval_fraction, save_hf=layout == "saved")
    if layout == "parts":
        summary = export_parts("data", [(Part("all", "t"), lambda: rows)], folder, config)
        return Path(summary["path"])
    return Path(export("data", rows, folder, config)["path"])


@pytest.mark.parametrize("layout", ["saved", "parts", "parquet"])
def test_the_digest_follows_the_rows_training_reads(tmp_path, layout):
    path = write(layout, ROWS, tmp_path / "a")
    assert locate_dataset(path).kind == layout
    digest = content_digest(path)
    # written again, elsewhere: the same rows are the same data
    assert content_digest(write(layout, ROWS, tmp_path / "b")) == digest

    edited = ROWS.with_columns(pl.col("text").str.replace("number 7$", "number seven"))
    assert content_digest(write(layout, edited, tmp_path / "c")) != digest
    assert content_digest(write(layout, ROWS, tmp_path / "d", eval_fraction=0.3)) != digest

    located = locate_dataset(path)
    loaded = load_splits(path)
    assert sorted(located.files) == sorted(loaded)  # the digest covers each split it loads


def test_files_training_does_not_read_leave_the_digest_alone(tmp_path):
    saved = write("saved", ROWS, tmp_path)
    digest = content_digest(saved)
    # the whole-file Parquet beside the save_to_disk copy, and a part no manifest names yet
    pl.DataFrame({"id": ["x"]}).write_parquet(saved / "train.parquet")
    assert content_digest(saved) == digest

    parts = write("parts", ROWS, tmp_path / "p")
    digest = content_digest(parts)
    half_written = parts / "parts" / "next-drop"
    half_written.mkdir()
    ROWS.write_parquet(half_written / "train.parquet")
    assert content_digest(parts) == digest


def test_a_folder_without_a_dataset_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        content_digest(tmp_path)
