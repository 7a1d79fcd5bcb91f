"""Positional ids (``FILE:LINE`` for rows without an id of their own) across inputs that share a
file name: two ``train.jsonl`` of one read, or ``flan/a/part.jsonl`` and ``flan/b/part.jsonl`` in
one drop. Real files on disk, read by the real readers, curated and traced."""

import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from assets.ingest import raw_drops
from assets.io_manager import PolarsParquetIOManager
from assets.partitions import DROPS, drop_files, qualify_positional_ids
from curation.curate import build_filters, curate
from curation.ingest import IngestResult, ingest
from curation.readers.common import positional_labels
from curation.readers.text import read_text_corpus
from curation.trace import trace_row

FLAN = [
    {"inputs": "What is two plus two? Answer briefly.", "targets": "Four: two and two make four."},
    {"inputs": "Name the capital of France, please.", "targets": "Paris is the capital of France."},
    {"inputs": "Which planet is called the red one?", "targets": "Mars is called the red planet."},
]
CHAT = [
    {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
    for q, a in (
        ("How many legs does a spider have?", "A spider has eight legs."),
        ("What colour is a clear daytime sky?", "A clear daytime sky is blue."),
    )
]


HH = {
    "chosen": "\n\nHuman: How do I look after a fern?\n\nAssistant: Water it weekly.",
    "rejected": "\n\nHuman: How do I look after a fern?\n\nAssistant: No idea.",
}
ULTRAFEEDBACK = {
    "instruction": "Name a prime number.",
    "completions": [
        {"model": m, "response": r, "overall_score": score}
        for m, r, score in (("m1", "Seven.", 8.0), ("m2", "Six.", 3.0), ("m3", "Nine.", 5.0))
    ],
}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_labels_keep_unique_names_and_tell_shared_names_apart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = [
        Path("d1/train.jsonl"),
        Path("d2/train.jsonl"),
        Path("flan.jsonl"),
        Path("x/a/test.jsonl"),
        Path("y/a/test.jsonl"),
        Path("z/b/test.jsonl"),
        Path("./d1/train.jsonl"),  # the same file again: the same input, the same label
    ]
    labels = positional_labels(paths)
    assert labels == {
        Path("d1/train.jsonl"): "d1/train.jsonl",
        Path("d2/train.jsonl"): "d2/train.jsonl",
        Path("flan.jsonl"): "flan.jsonl",
        Path("x/a/test.jsonl"): "x/a/test.jsonl",
        Path("y/a/test.jsonl"): "y/a/test.jsonl",
        Path("z/b/test.jsonl"): "b/test.jsonl",
    }
    # A path inside another's folder chain still gets a label of its own.
    nested = positional_labels(["a/t.jsonl", "q/a/t.jsonl"])
    assert len(set(nested.values())) == 2
    assert nested["q/a/t.jsonl"] == "q/a/t.jsonl"
    # Relative and absolute spellings of one layout give the same labels.
    absolute = positional_labels([tmp_path / "d1/train.jsonl", tmp_path / "d2/train.jsonl"])
    assert sorted(absolute.values()) == ["d1/train.jsonl", "d2/train.jsonl"]


@pytest.mark.parametrize("fmt", ["flan", "jsonl", "parquet"])
def test_files_sharing_a_name_give_their_rows_distinct_ids(tmp_path, fmt):
    rows = FLAN if fmt == "flan" else CHAT
    paths = []
    for index, folder in enumerate(("d1", "d2")):
        path = write_jsonl(tmp_path / folder / "train.jsonl", rows[index : index + 1])
        if fmt == "parquet":
            parquet = path.with_suffix(".parquet")
            pl.read_ndjson(path).write_parquet(parquet)
            path.unlink()
            path = parquet
        paths.append(path)
    name = paths[0].name
    both = ingest(fmt, paths).conversations
    assert both["source_id"].to_list() == [f"d1/{name}:1", f"d2/{name}:1"]
    assert both["id"].n_unique() == 2
    # Read alone, a file keeps the id it always had: the name and the line.
    alone = ingest(fmt, paths[:1]).conversations
    assert alone["source_id"].to_list() == [f"{name}:1"]
    # And ids are stable from run to run.
    assert ingest(fmt, paths).conversations["id"].to_list() == both["id"].to_list()


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_text_files_sharing_a_name_give_their_documents_distinct_ids(tmp_path, suffix):
    paths = []
    for folder, text in (("d1", "The first corpus document."), ("d2", "The second one.")):
        path = tmp_path / folder / f"train{suffix}"
        if suffix == ".txt":
            path.parent.mkdir(parents=True)
            path.write_text(text + "\n")
        else:
            write_jsonl(path, [{"text": text}])
        paths.append(path)
    texts = read_text_corpus(paths).texts
    assert texts["source_id"].to_list() == [f"d1/train{suffix}:1", f"d2/train{suffix}:1"]
    assert texts["id"].n_unique() == 2
    assert read_text_corpus(paths[:1]).texts["source_id"].to_list() == [f"train{suffix}:1"]


def test_shared_names_are_curated_and_traced_as_two_rows(tmp_path):
    a = write_jsonl(tmp_path / "d1" / "train.jsonl", FLAN[:1])
    b = write_jsonl(tmp_path / "d2" / "train.jsonl", FLAN[1:2])
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    conversations = ingest("flan", [a, b]).conversations
    conversations.write_parquet(outputs / "conversations.parquet")
    result = curate(conversations, build_filters({}))
    assert result.counts()["dropped"] == 0
    assert not result.ledger.filter(pl.col("rule") == "duplicate.same_id").height
    assert result.states["row_id"].n_unique() == 2

    report = trace_row(f"{b}:1", outputs)
    assert [r["source_id"] for r in report["read"]] == ["d2/train.jsonl:1"]
    report = trace_row("d1/train.jsonl:1", outputs)
    assert [r["source_id"] for r in report["read"]] == ["d1/train.jsonl:1"]


def test_a_drop_with_two_files_of_one_name_keeps_both_rows(tmp_path):
    drop = tmp_path / "2026-01-02"
    write_jsonl(drop / "flan" / "a" / "part.jsonl", FLAN[:1])
    write_jsonl(drop / "flan" / "b" / "part.jsonl", FLAN[1:2])
    write_jsonl(drop / "flan.jsonl", FLAN[2:])
    # An Alpaca-style JSON array file (a drop routes .json to the JSONL reader).
    (drop / "chat.json").write_text(json.dumps(CHAT, indent=2))
    files = drop_files(drop)
    result = IngestResult.concat([ingest(fmt, paths) for fmt, paths in files.items()])
    frame = qualify_positional_ids(result.conversations, drop.name)
    assert sorted(frame["source_id"]) == [
        "2026-01-02/a/part.jsonl:1",
        "2026-01-02/b/part.jsonl:1",
        "2026-01-02/chat.json:1",
        "2026-01-02/chat.json:2",
        "2026-01-02/flan.jsonl:1",
    ]
    assert frame["id"].n_unique() == 5
    assert result.rejected.height == 0
    # The same files in another drop are other rows.
    other = qualify_positional_ids(result.conversations, "2026-01-03")
    assert not set(other["id"]) & set(frame["id"])


def test_drop_qualification_tells_positional_ids_from_the_sources_own():
    frame = pl.DataFrame(
        {
            "id": ["i1", "i2", "i3", "i4", "i5"],
            "source_id": [
                "flan.jsonl:5",  # by name
                "a/part.jsonl:1",  # by the path part that told two files apart
                "ultrafeedback.jsonl:7:2>0",  # a pair cut from a positional row
                "msg-123",  # the source's own id
                "a/part.jsonl:1",  # a look-alike own id of a file it does not name
            ],
            "provenance": [
                {"file": f, "line": 1, "ids": []}
                for f in (
                    "drops/d/flan.jsonl",
                    "drops/d/flan/a/part.jsonl",
                    "drops/d/ultrafeedback.jsonl",
                    "drops/d/oasst_trees.jsonl",
                    "drops/d/flan/b/part.jsonl",
                )
            ],
        }
    )
    frame = frame.with_columns(
        pl.Series(
            "source_ids",
            [
                [],
                None,
                ["ultrafeedback.jsonl:7"],  # the conversation the pair was cut from
                ["msg-1", "msg-2", "msg-3"],  # OpenAssistant message ids
                ["a/part.jsonl:1"],  # the look-alike again
            ],
            dtype=pl.List(pl.String),
        )
    )
    qualified = qualify_positional_ids(frame, "d")
    assert qualified["source_ids"].to_list() == [
        [],
        None,
        ["d/ultrafeedback.jsonl:7"],
        ["msg-1", "msg-2", "msg-3"],
        ["a/part.jsonl:1"],
    ]
    assert qualified["source_id"].to_list() == [
        "d/flan.jsonl:5",
        "d/a/part.jsonl:1",
        "d/ultrafeedback.jsonl:7:2>0",
        "msg-123",
        "a/part.jsonl:1",
    ]
    changed = [old != new for old, new in zip(frame["id"], qualified["id"], strict=True)]
    assert changed == [True, True, True, False, False]


def test_a_pair_is_traced_to_its_conversation_inside_a_drop(tmp_path):
    """Two drops deliver the same UltraFeedback and HH-RLHF lines, read by the real drop asset:
    each pair's source_ids name its own drop's conversation, so tracing that conversation finds
    the pairs cut from it, and not the other drop's."""
    root, outputs = tmp_path / "drops", tmp_path / "outputs"
    names = ["2026-02-01", "2026-02-02"]
    for name in names:
        write_jsonl(root / name / "ultrafeedback.jsonl", [ULTRAFEEDBACK])
        write_jsonl(root / name / "hh_rlhf.jsonl", [HH])
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(DROPS.name, names)
        for name in names:
            assert dg.materialize(
                [raw_drops],
                partition_key=name,
                instance=instance,
                resources={"io_manager": PolarsParquetIOManager(base_dir=str(outputs))},
                run_config={"ops": {"raw_drops": {"config": {"root": str(root)}}}},
            ).success
    stored = {
        name: {
            table: pl.read_parquet(outputs / "raw_drops" / name / f"{table}.parquet")
            for table in ("conversations", "preferences")
        }
        for name in names
    }
    first = stored[names[0]]
    for file, count in (("ultrafeedback.jsonl", 3), ("hh_rlhf.jsonl", 1)):
        source_id = f"{names[0]}/{file}:1"
        conversation = first["conversations"].filter(pl.col("source_id") == source_id)
        report = trace_row(conversation["id"].item(), outputs)
        pairs = [row for row in report["read"] if row["kind"] == "preference"]
        assert len(pairs) == count
        assert {row["asset"] for row in pairs} == {"raw_drops"}
        assert all(row["source_ids"] == [source_id] for row in pairs)
    assert sorted(first["preferences"]["source_ids"].to_list()) == [
        [f"{names[0]}/hh_rlhf.jsonl:1"],
        *[[f"{names[0]}/ultrafeedback.jsonl:1"]] * 3,  # three scores, three pairs
    ]
    # The other drop's pairs are rows of their own, linked to that drop's conversation.
    assert not set(stored[names[1]]["preferences"]["id"]) & set(first["preferences"]["id"])


def test_sample_data_ids_are_unchanged():
    """The embedded samples have distinct file names: their ids stay ``name:line``."""
    samples = Path(__file__).resolve().parents[1] / "data" / "samples"
    flan = ingest("flan", [samples / "flan.jsonl", samples / "synthetic_flan.jsonl"])
    names = flan.conversations["source_id"].str.extract(r"^([^:]+):\d+$").unique().to_list()
    assert sorted(names) == ["flan.jsonl", "synthetic_flan.jsonl"]
    hh = ingest("hh", [samples / "hh_rlhf.jsonl"]).preferences
    assert hh["source_id"][0] == "hh_rlhf.jsonl:1"
    assert hh["source_ids"].list.first().to_list() == hh["source_id"].to_list()
