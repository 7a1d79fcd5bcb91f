"""HH-RLHF reader: transcript parsing, the shared-prompt rule, and bad pairs and lines."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from curation.errors import SourceError
from curation.ingest import ReadOptions, ingest
from curation.readers.hh import PairError, parse_transcript, read_hh, split_pair
from curation.schema import CONVERSATIONS, PREFERENCES, stable_id

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"

PROMPT = "\n\nHuman: How do I boil an egg?\n\nAssistant: In water.\n\nHuman: For how long?"
CHOSEN = PROMPT + "\n\nAssistant: About nine minutes for a hard yolk."
REJECTED = PROMPT + "\n\nAssistant: Forever."


def write_lines(path: Path, lines: list[str | dict | bytes]) -> Path:
    data = b""
    for line in lines:
        if isinstance(line, dict):
            line = json.dumps(line)
        data += (line if isinstance(line, bytes) else line.encode()) + b"\n"
    path.write_bytes(data)
    return path


def test_parse_transcript() -> None:
    assert parse_transcript(CHOSEN, "chosen") == [
        ("user", "How do I boil an egg?"),
        ("assistant", "In water."),
        ("user", "For how long?"),
        ("assistant", "About nine minutes for a hard yolk."),
    ]
    # Without the leading blank line, and with an empty last turn, as some HH rows have.
    assert parse_transcript("Human: hi\n\nAssistant:", "chosen") == [
        ("user", "hi"),
        ("assistant", ""),
    ]
    # A line break inside a turn is content, not a new turn.
    assert parse_transcript("\n\nHuman: a\nHuman: b\n\nAssistant: c", "x") == [
        ("user", "a\nHuman: b"),
        ("assistant", "c"),
    ]


def test_pair_becomes_preference_and_conversation(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "hh.jsonl", [{"chosen": CHOSEN, "rejected": REJECTED}])
    result = read_hh([path], ReadOptions())
    assert result.rejected.height == 0
    assert result.preferences.schema == PREFERENCES
    assert result.conversations.schema == CONVERSATIONS

    pair = result.preferences.row(0, named=True)
    prompt = [
        {"role": "user", "content": "How do I boil an egg?"},
        {"role": "assistant", "content": "In water."},
        {"role": "user", "content": "For how long?"},
    ]
    assert pair["prompt"] == prompt
    assert pair["chosen"] == [
        {"role": "assistant", "content": "About nine minutes for a hard yolk."}
    ]
    assert pair["rejected"] == [{"role": "assistant", "content": "Forever."}]
    assert pair["origin"] == "human"
    assert pair["margin"] is None
    assert pair["judge"] is None
    assert pair["source"] == "hh"
    assert pair["source_id"] == "hh.jsonl:1"
    assert pair["id"] == stable_id("hh/pair", "hh.jsonl:1")
    assert pair["source_ids"] == ["hh.jsonl:1"]
    assert pair["provenance"] == {"file": str(path), "line": 1, "ids": []}

    conversation = result.conversations.row(0, named=True)
    assert conversation["messages"] == prompt + pair["chosen"]
    assert json.loads(conversation["meta"]) == {"from": "hh_chosen"}
    assert conversation["lang"] == "en"
    assert conversation["source_id"] == pair["source_id"]
    assert conversation["id"] != pair["id"]  # the ledger's row_id must name one row


def test_two_files_of_one_name_give_their_rows_distinct_ids(tmp_path: Path) -> None:
    """Two ``hh.jsonl`` of one read: their line-1 rows are two pairs and two conversations, each
    pair pointing at its own conversation, so curation keeps both and trace tells them apart."""
    first = tmp_path / "d1"
    second = tmp_path / "d2"
    first.mkdir()
    second.mkdir()
    answer = "\n\nHuman: Hi\n\nAssistant: "
    paths = [
        write_lines(folder / "hh.jsonl", [{"chosen": answer + good, "rejected": answer + "No."}])
        for folder, good in ((first, "Hello!"), (second, "Hi there!"))
    ]
    result = read_hh(paths, ReadOptions())
    pairs, conversations = result.preferences, result.conversations
    assert pairs["source_id"].to_list() == ["d1/hh.jsonl:1", "d2/hh.jsonl:1"]
    assert pairs["source_ids"].to_list() == [["d1/hh.jsonl:1"], ["d2/hh.jsonl:1"]]
    assert conversations["source_id"].to_list() == pairs["source_id"].to_list()
    assert pairs["id"].n_unique() == 2 and conversations["id"].n_unique() == 2
    # Read alone, a file keeps the label it always had.
    alone = read_hh(paths[:1], ReadOptions()).preferences
    assert alone["source_id"].to_list() == ["hh.jsonl:1"]
    assert alone["id"].to_list() == [stable_id("hh/pair", "hh.jsonl:1")]


def test_single_turn_pair_and_ids_from_input(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "hh.jsonl",
        [
            {
                "id": 7,
                "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!",
                "rejected": "\n\nHuman: Hi\n\nAssistant: Go away.",
            }
        ],
    )
    result = ingest("hh", [path], ReadOptions(source="hh_helpful"))
    pair = result.preferences.row(0, named=True)
    assert pair["prompt"] == [{"role": "user", "content": "Hi"}]
    assert (pair["source"], pair["source_id"]) == ("hh_helpful", "7")


@pytest.mark.parametrize(
    ("chosen", "rejected", "reason"),
    [
        (
            "\n\nHuman: Hi\n\nAssistant: Hello",
            "\n\nHuman: Bye\n\nAssistant: Goodbye",
            "chosen and rejected share no common prompt",
        ),
        (
            CHOSEN,
            "\n\nHuman: How do I boil an egg?\n\nAssistant: In oil.\n\nHuman: For how long?"
            "\n\nAssistant: Forever.",
            "chosen and rejected differ before the last Assistant turn",
        ),
        (CHOSEN, CHOSEN, "chosen equals rejected"),
        (CHOSEN, CHOSEN + "  ", "chosen equals rejected"),
        ("\n\nHuman: Hi", "\n\nHuman: Hi there", "chosen has no Assistant turn"),
        (CHOSEN + "\n\nHuman: ok?", REJECTED, "chosen does not end with an Assistant turn"),
        ("Hello\n\nHuman: Hi\n\nAssistant: a", REJECTED, "chosen has text before"),
        ("just text", "other text", "chosen has text before"),
        (
            "\n\nAssistant: a\n\nAssistant: b",
            "\n\nAssistant: a\n\nAssistant: c",
            "prompt does not end with a Human turn",
        ),
    ],
)
def test_unusable_pairs_are_rejected(tmp_path: Path, chosen: str, rejected: str, reason: str):
    with pytest.raises(PairError, match=reason):
        split_pair(chosen, rejected)
    path = write_lines(
        tmp_path / "hh.jsonl",
        [{"chosen": chosen, "rejected": rejected}, {"chosen": CHOSEN, "rejected": REJECTED}],
    )
    result = read_hh([path], ReadOptions())
    assert result.preferences.height == 1
    assert result.conversations.height == 1
    row = result.rejected.row(0, named=True)
    assert row["line"] == 1
    assert row["reason"].startswith(reason)
    assert json.loads(row["raw"]) == {"chosen": chosen, "rejected": rejected, "id": None}


# ---- bad input -------------------------------------------------------------------------------


def test_bad_lines_become_rejected_rows(tmp_path: Path) -> None:
    good = json.dumps({"chosen": CHOSEN, "rejected": REJECTED})
    path = tmp_path / "hh.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf"  # a BOM: read through
        + good.encode()
        + b"\n"
        + good[:40].encode()  # truncated
        + b"\n\n"  # blank
        + json.dumps({"chosen": CHOSEN, "rejected": ["x"]}).encode()  # wrong type
        + b"\n"
        + good.replace("egg", "eg\xff").encode("latin-1")  # invalid UTF-8
        + b"\n"
    )
    result = read_hh([path], ReadOptions())
    assert result.preferences.height == 1
    assert result.rejected["line"].to_list() == [2, 3, 4, 5]
    reasons = result.rejected["reason"].to_list()
    assert "truncated" in reasons[0]
    assert reasons[1] == "blank line"
    assert result.rejected["field"][2] == "rejected"
    assert "UTF-8" in reasons[3]


def test_empty_and_missing_files_are_source_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(SourceError, match="empty"):
        read_hh([empty], ReadOptions())
    with pytest.raises(SourceError, match="no such file"):
        read_hh([tmp_path / "nope.jsonl"], ReadOptions())


def test_parquet_input_and_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "hh.parquet"
    pl.DataFrame({"chosen": [CHOSEN], "rejected": [REJECTED]}).write_parquet(path)
    assert read_hh([path], ReadOptions()).preferences.height == 1
    broken = tmp_path / "broken.parquet"
    pl.DataFrame({"chosen": [CHOSEN]}).write_parquet(broken)
    with pytest.raises(SourceError, match="rejected"):
        read_hh([broken], ReadOptions())


# ---- embedded sample -------------------------------------------------------------------------


@pytest.mark.skipif(not (SAMPLES / "hh_rlhf.jsonl").exists(), reason="sample data not written yet")
def test_sample_file() -> None:
    result = read_hh([SAMPLES / "hh_rlhf.jsonl"], ReadOptions())
    assert result.preferences.height > 0
    assert result.conversations.height == result.preferences.height
    # Every prompt ends with the user's turn; every answer is one assistant turn.
    last_roles = result.preferences["prompt"].list.last().struct.field("role")
    assert set(last_roles) == {"user"}
    assert (result.preferences["chosen"].list.len() == 1).all()
