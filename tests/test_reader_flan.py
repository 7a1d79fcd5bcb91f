"""FLAN reader on hand-made files: layout, option detection, ids, and every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from curation.errors import SourceError
from curation.ingest import ReadOptions, ingest, meta_json
from curation.readers.flan import OPTIONS_PATTERN, has_options, read_flan
from curation.schema import CONVERSATIONS, REJECTED, stable_id

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


def flan_row(inputs: str = "Is the sky blue?", targets: str = "yes", **extra: object) -> dict:
    return {
        "inputs": inputs,
        "targets": targets,
        "task_source": "Flan2021",
        "task_name": "sky_color",
        "template_type": "zs_noopt",
        **extra,
    }


def write_lines(path: Path, lines: list[str | dict | bytes]) -> Path:
    data = b""
    for line in lines:
        if isinstance(line, dict):
            line = json.dumps(line)
        data += (line if isinstance(line, bytes) else line.encode()) + b"\n"
    path.write_bytes(data)
    return path


def test_reads_rows_into_canonical_conversations(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "flan.jsonl",
        [
            flan_row(),
            flan_row("Pick one.\nOPTIONS:\n- red\n- blue", "blue", template_type="zs_opt"),
        ],
    )
    result = read_flan([path], ReadOptions())

    conversations = result.conversations
    assert conversations.schema == CONVERSATIONS
    assert result.rejected.height == 0
    first, second = conversations.iter_rows(named=True)
    assert first["source"] == "flan"
    assert first["source_id"] == "flan.jsonl:1"
    assert first["id"] == stable_id("flan", "flan.jsonl:1")
    assert first["lang"] == "en"
    assert first["messages"] == [
        {"role": "user", "content": "Is the sky blue?"},
        {"role": "assistant", "content": "yes"},
    ]
    assert first["provenance"] == {"file": str(path), "line": 1, "ids": []}
    assert json.loads(first["meta"]) == {
        "task_source": "Flan2021",
        "task_name": "sky_color",
        "template_type": "zs_noopt",
        "has_options": False,
    }
    assert json.loads(second["meta"])["has_options"] is True
    # Built per distinct combination, the meta string is still exactly what meta_json writes.
    assert second["meta"] == meta_json(
        {
            "task_source": "Flan2021",
            "task_name": "sky_color",
            "template_type": "zs_opt",
            "has_options": True,
        }
    )


def test_input_id_lang_and_source_override(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "f.jsonl",
        [flan_row(id=17, lang="de"), flan_row(id="abc"), flan_row()],
    )
    result = read_flan([path], ReadOptions(source="flan_v2"))
    rows = result.conversations.select("source", "source_id", "lang", "id").rows()
    assert rows == [
        ("flan_v2", "17", "de", stable_id("flan_v2", "17")),
        ("flan_v2", "abc", "en", stable_id("flan_v2", "abc")),
        ("flan_v2", "f.jsonl:3", "en", stable_id("flan_v2", "f.jsonl:3")),
    ]


def test_missing_task_fields_are_left_out_of_meta(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "f.jsonl", [{"inputs": "a", "targets": "b"}])
    (meta,) = read_flan([path], ReadOptions()).conversations["meta"]
    assert json.loads(meta) == {"has_options": False}


def test_several_files_keep_ids_apart(tmp_path: Path) -> None:
    one = write_lines(tmp_path / "one.jsonl", [flan_row()])
    two = write_lines(tmp_path / "two.jsonl", [flan_row()])
    result = ingest("flan", [one, two])
    assert result.conversations["source_id"].to_list() == ["one.jsonl:1", "two.jsonl:1"]
    assert result.conversations["id"].n_unique() == 2


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("Is it?\n\nOPTIONS:\n- yes\n- no", True),
        ("Which one?\nOPTIONS:\n(A) red\n(B) blue", True),
        ("Which one? Options: (a) red (b) blue", True),
        ("Choose from:\n- cats\n- dogs", True),
        ("Choose your answer from:\n * one\n * two", True),
        ("Select from the following.\n- a\n- b", True),
        ("Possible answers:\n1) a\n2) b", True),
        ("Available choices:\n[a] x\n[b] y", True),
        ("Q: which planet?\n(A) Mars\n(B) Venus\nA:", True),
        ("Translate to French: What are my options?", False),
        ("I have two choices - stay or go. What should I do?", False),
        ("Summarise: the committee (a) met and (b) voted.", False),
        ("Write a poem about options trading.", False),
    ],
)
def test_option_detection(tmp_path: Path, prompt: str, expected: bool) -> None:
    assert has_options(prompt) is expected
    # The vectorised column uses the same pattern through polars' regex engine.
    assert pl.Series([prompt]).str.contains(OPTIONS_PATTERN).item() is expected


def test_parquet_input(tmp_path: Path) -> None:
    path = tmp_path / "flan.parquet"
    pl.DataFrame([flan_row(), flan_row("x\nOPTIONS:\n- a\n- b", "a")]).write_parquet(path)
    result = read_flan([path], ReadOptions())
    assert result.conversations.height == 2
    assert result.conversations["provenance"].struct.field("line").to_list() == [1, 2]
    assert json.loads(result.conversations["meta"][1])["has_options"] is True


def test_parquet_missing_column_is_a_source_error(tmp_path: Path) -> None:
    path = tmp_path / "flan.parquet"
    pl.DataFrame({"inputs": ["a"], "task_name": ["t"]}).write_parquet(path)
    with pytest.raises(SourceError, match="targets"):
        read_flan([path], ReadOptions())


# ---- bad input -------------------------------------------------------------------------------


def test_utf8_bom_is_read_through(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(flan_row()).encode() + b"\n")
    result = read_flan([path], ReadOptions())
    assert result.conversations.height == 1
    assert result.rejected.height == 0


def test_bad_lines_become_rejected_rows(tmp_path: Path) -> None:
    good = json.dumps(flan_row())
    path = write_lines(
        tmp_path / "bad.jsonl",
        [
            good,
            good[:25],  # truncated
            flan_row(targets=5),  # wrong type
            "",  # blank
            good.replace("sky", "sk\xff").encode("latin-1"),  # invalid UTF-8 byte
            good,
        ],
    )
    result = read_flan([path], ReadOptions())
    assert result.conversations["source_id"].to_list() == ["bad.jsonl:1", "bad.jsonl:6"]
    rejected = result.rejected
    assert rejected.schema == REJECTED
    assert rejected["line"].to_list() == [2, 3, 4, 5]
    assert set(rejected["file"]) == {str(path)}
    assert set(rejected["source"]) == {"flan"}
    reasons = dict(zip(rejected["line"], rejected["reason"], strict=True))
    assert "truncated" in reasons[2]
    assert reasons[4] == "blank line"
    # The bad byte is placed in the line (not in the string value msgspec was decoding).
    at = good.index("sky") + 2
    assert reasons[5] == f"invalid UTF-8 byte 0xff at byte {at} of the line (column {at + 1})"
    assert rejected.filter(pl.col("line") == 5)["field"].item() == "inputs"
    assert rejected.filter(pl.col("line") == 3)["field"].item() == "targets"


def test_a_json_array_of_flan_records(tmp_path: Path) -> None:
    path = tmp_path / "flan.json"
    path.write_text(json.dumps([flan_row(), flan_row(targets=5), flan_row("Is snow cold?")]))
    result = read_flan([path], ReadOptions())
    assert result.conversations["source_id"].to_list() == ["flan.json:1", "flan.json:3"]
    assert result.rejected["line"].to_list() == [2]
    assert result.rejected["field"].to_list() == ["targets"]


def test_empty_and_missing_files_are_source_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(SourceError, match="empty"):
        read_flan([empty], ReadOptions())
    with pytest.raises(SourceError, match="no such file"):
        read_flan([tmp_path / "absent.jsonl"], ReadOptions())


def test_file_of_other_records_is_a_source_error(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "hh.jsonl", [{"chosen": "a", "rejected": "b"}])
    with pytest.raises(SourceError, match="not a flan file"):
        read_flan([path], ReadOptions())


# ---- embedded sample -------------------------------------------------------------------------


@pytest.mark.skipif(not (SAMPLES / "flan.jsonl").exists(), reason="sample data not written yet")
def test_sample_file() -> None:
    result = read_flan([SAMPLES / "flan.jsonl"], ReadOptions())
    assert result.rejected.height == 0
    metas = result.conversations["meta"].str.json_decode(
        pl.Struct({"task_source": pl.String, "has_options": pl.Boolean})
    )
    assert set(metas.struct.field("task_source")) >= {"Flan2021", "P3", "NIv2", "CoT", "Dialog"}
    assert metas.struct.field("has_options").any()
    assert not metas.struct.field("has_options").all()
