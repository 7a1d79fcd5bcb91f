"""Generic readers (JSONL, Parquet, HF datasets): layouts, mappings, preferences, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest

from curation.errors import SourceError
from curation.ingest import ReadOptions, ingest
from curation.readers.generic import detect_layout, read_hf, read_jsonl, read_parquet
from curation.schema import CONVERSATIONS, PREFERENCES, stable_id

# Tests never reach the hub: every dataset below is a local file or folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
HI = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]


def write_lines(path: Path, lines: list[str | dict | bytes]) -> Path:
    data = b""
    for line in lines:
        if isinstance(line, dict):
            line = json.dumps(line)
        data += (line if isinstance(line, bytes) else line.encode()) + b"\n"
    path.write_bytes(data)
    return path


def messages_of(result) -> list:
    return result.conversations["messages"].to_list()


# ---- conversation layouts --------------------------------------------------------------------


def test_messages_layout(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "chat.jsonl",
        [
            {"messages": HI},
            {
                "id": "x-1",
                "lang": "fr",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "Human", "content": "Salut"},
                    {"role": "gpt", "content": "Salut !"},
                ],
            },
        ],
    )
    result = read_jsonl([path], ReadOptions())
    assert result.conversations.schema == CONVERSATIONS
    assert result.rejected.height == 0
    assert messages_of(result) == [
        HI,
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Salut"},
            {"role": "assistant", "content": "Salut !"},
        ],
    ]
    rows = result.conversations.select("source", "source_id", "lang", "id").rows()
    assert rows == [
        ("chat", "chat.jsonl:1", None, stable_id("chat", "chat.jsonl:1")),
        ("chat", "x-1", "fr", stable_id("chat", "x-1")),
    ]
    assert json.loads(result.conversations["meta"][0]) == {"layout": "messages"}
    assert result.conversations["provenance"][1] == {"file": str(path), "line": 2, "ids": []}


def test_input_meta_is_kept(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "chat.jsonl",
        [
            {"messages": HI, "meta": {"task": "greet", "answer": "Hello!"}},
            {"messages": HI, "meta": '{"task": "greet"}'},
            {"messages": HI, "meta": "free text"},
            {"messages": HI},
        ],
    )
    metas = [json.loads(m) for m in read_jsonl([path], ReadOptions()).conversations["meta"]]
    assert metas == [
        {"layout": "messages", "task": "greet", "answer": "Hello!"},
        {"layout": "messages", "task": "greet"},
        {"layout": "messages", "source_meta": "free text"},
        {"layout": "messages"},
    ]


def test_sharegpt_conversations(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "sharegpt.jsonl",
        [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}],
    )
    assert messages_of(read_jsonl([path], ReadOptions())) == [HI]


def test_prompt_completion_strings_and_lists(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "pc.jsonl",
        [
            {"prompt": "Hi", "completion": "Hello!"},
            {"prompt": [HI[0]], "completion": [HI[1]]},
            {"prompt": "Hi", "completion": "Hello!", "system": "Be nice."},
        ],
    )
    result = read_jsonl([path], ReadOptions(source="mine"))
    assert messages_of(result) == [HI, HI, [{"role": "system", "content": "Be nice."}, *HI]]
    assert set(result.conversations["source"]) == {"mine"}


def test_alpaca_layout(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "alpaca.jsonl",
        [
            {"instruction": "Add.", "input": "2 + 2", "output": "4"},
            {"instruction": "Say hi.", "input": "", "output": "Hi"},
        ],
    )
    assert messages_of(read_jsonl([path], ReadOptions())) == [
        [{"role": "user", "content": "Add.\n\n2 + 2"}, {"role": "assistant", "content": "4"}],
        [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi"}],
    ]


def test_column_mapping(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "qa.jsonl", [{"question": "Hi", "answer": "Hello!", "uid": 5, "language": "en"}]
    )
    options = ReadOptions(
        columns={"prompt": "question", "completion": "answer", "id": "uid", "lang": "language"}
    )
    result = read_jsonl([path], options)
    assert messages_of(result) == [HI]
    assert result.conversations.select("source_id", "lang").row(0) == ("5", "en")


def test_mapping_to_a_missing_column_is_a_source_error(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "qa.jsonl", [{"question": "Hi", "answer": "Hello!"}])
    options = ReadOptions(columns={"prompt": "question", "completion": "reply"})
    with pytest.raises(SourceError, match="'reply'"):
        read_jsonl([path], options)


def test_unknown_layout_names_the_columns(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "odd.jsonl", [{"question": "Hi", "answer": "Hello!"}])
    with pytest.raises(SourceError, match=r"odd\.jsonl.*\['answer', 'question'\]"):
        read_jsonl([path], ReadOptions())


def test_detect_layout() -> None:
    layout = detect_layout({"messages", "chosen", "rejected", "extra"}, {}, "x")
    assert (layout.conversation, layout.preference, layout.mixed) == ("messages", True, True)
    layout = detect_layout({"instruction", "output"}, {}, "x")
    assert (layout.conversation, layout.preference) == ("alpaca", False)
    with pytest.raises(SourceError, match="unknown canonical"):
        detect_layout({"a"}, {"text": "a"}, "x")


# ---- preferences -----------------------------------------------------------------------------


def test_preference_rows_explicit_and_implicit_prompt(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "prefs.jsonl",
        [
            {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."},
            {
                "prompt": None,
                "chosen": [*HI, {"role": "user", "content": "Bye"}, HI[1]],
                "rejected": [
                    *HI,
                    {"role": "user", "content": "Bye"},
                    {"role": "assistant", "content": "No."},
                ],
            },
        ],
    )
    result = read_jsonl([path], ReadOptions())
    assert result.conversations.height == 0
    prefs = result.preferences
    assert prefs.schema == PREFERENCES
    assert prefs["prompt"].to_list() == [[HI[0]], [*HI, {"role": "user", "content": "Bye"}]]
    assert prefs["chosen"].to_list() == [[HI[1]], [HI[1]]]
    assert prefs["rejected"][0].to_list() == [{"role": "assistant", "content": "Go away."}]
    assert set(prefs["origin"]) == {"human"}
    assert prefs["source_ids"].to_list() == [["prefs.jsonl:1"], ["prefs.jsonl:2"]]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"prompt": "Hi", "chosen": "same", "rejected": "same"}, "chosen equals rejected"),
        ({"chosen": [HI[0]], "rejected": [HI[1]]}, "share no common prompt"),
        ({"chosen": "a", "rejected": "b"}, "plain strings but the row has no prompt"),
        ({"chosen": HI, "rejected": [*HI, HI[0]]}, "prefix"),
        ({"prompt": "Hi", "chosen": [{"role": "bot", "content": "x"}], "rejected": "y"}, "role"),
    ],
)
def test_unusable_preference_rows_are_rejected(tmp_path: Path, row: dict, reason: str) -> None:
    good = {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}
    path = write_lines(tmp_path / "prefs.jsonl", [row, good])
    result = read_jsonl([path], ReadOptions())
    assert result.preferences.height == 1
    assert result.rejected["line"].to_list() == [1]
    assert reason in result.rejected["reason"][0]


def test_mixed_rows_give_conversations_and_preferences(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "mixed.jsonl",
        [
            {"messages": HI},
            {"messages": HI, "prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."},
            {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."},
            {"lang": "en"},
        ],
    )
    result = read_jsonl([path], ReadOptions())
    assert result.conversations["source_id"].to_list() == ["mixed.jsonl:1", "mixed.jsonl:2"]
    assert result.preferences["source_id"].to_list() == ["mixed.jsonl:2", "mixed.jsonl:3"]
    assert result.rejected["line"].to_list() == [4]
    assert "neither" in result.rejected["reason"][0]


# ---- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "field", "reason"),
    [
        ([HI[0], {"role": "bot", "content": "x"}], "messages[1].role", "unknown role 'bot'"),
        ([HI[0], {"role": "assistant", "content": None}], "messages[1].content", "null content"),
        ([{"content": "x"}], "messages[0].role", "has no role"),
        ([], "messages", "messages is empty"),
        ([HI[0], {"role": "assistant", "content": 3}], "messages[1].content", "Expected"),
    ],
)
def test_bad_messages_are_rejected(tmp_path: Path, messages: list, field: str, reason: str):
    path = write_lines(tmp_path / "chat.jsonl", [{"messages": HI}, {"messages": messages}])
    result = read_jsonl([path], ReadOptions())
    assert messages_of(result) == [HI]
    row = result.rejected.row(0, named=True)
    assert (row["line"], row["field"]) == (2, field)
    assert reason in row["reason"]
    assert row["file"] == str(path)


def test_bad_lines_become_rejected_rows(tmp_path: Path) -> None:
    good = json.dumps({"prompt": "Hi", "completion": "Hello!"})
    path = tmp_path / "pc.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf"  # BOM: read through, also by the column sniffing
        + good.encode()
        + b"\n"
        + good[:12].encode()
        + b"\n\n"
        + json.dumps({"prompt": 1, "completion": "x"}).encode()
        + b"\n"
        + good.replace("Hi", "H\xff").encode("latin-1")
        + b"\n"
        + good.encode()
    )
    result = read_jsonl([path], ReadOptions())
    assert messages_of(result) == [HI, HI]
    rejected = result.rejected
    assert rejected["line"].to_list() == [2, 3, 4, 5]
    assert "truncated" in rejected["reason"][0]
    assert rejected["reason"][1] == "blank line"
    assert rejected["field"][2] == "prompt"
    assert "UTF-8" in rejected["reason"][3]


def test_a_bad_utf8_byte_is_placed_by_byte_column_and_field(tmp_path: Path) -> None:
    line = '{"id": "été-1", "prompt": "Café ou thé ?", "completion": "Thé XY"}'
    bad = line.encode().replace(b"XY", b"X\xffY")
    at = bad.index(b"\xff")
    path = tmp_path / "fr.jsonl"
    path.write_bytes(line.encode() + b"\n" + bad + b"\n")
    rejected = read_jsonl([path], ReadOptions()).rejected
    # Five two-byte characters come before it: byte and column differ by five.
    expected = f"invalid UTF-8 byte 0xff at byte {at} of the line (column {at - 5 + 1})"
    assert rejected.select("line", "field", "reason").row(0) == (2, "completion", expected)

    array = tmp_path / "fr.json"
    array.write_bytes(b"[" + line.encode() + b",\n " + bad + b"]")
    rejected = read_jsonl([array], ReadOptions()).rejected
    assert rejected.select("line", "field", "reason").row(0) == (
        2,
        "completion",
        expected.replace("of the line", "of the element"),
    )


def test_empty_missing_and_unreadable_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    with pytest.raises(SourceError, match="empty"):
        read_jsonl([empty], ReadOptions())
    with pytest.raises(SourceError, match="no such file"):
        read_jsonl([tmp_path / "nope.jsonl"], ReadOptions())
    garbage = write_lines(tmp_path / "garbage.jsonl", ["not json", "[1, 2]"])
    with pytest.raises(SourceError, match="no JSON object"):
        read_jsonl([garbage], ReadOptions())


# ---- JSON array files --------------------------------------------------------------------------


def alpaca(index: int) -> dict:
    return {"instruction": f"Spell the number {index}.", "input": "", "output": f"It is {index}."}


def test_a_json_array_file_is_read_element_by_element(tmp_path: Path) -> None:
    path = tmp_path / "alpaca.json"
    # Pretty-printed as dataset tools write it: an element spans several lines.
    path.write_text(json.dumps([alpaca(i) for i in range(1000)], indent=2))
    result = read_jsonl([path], ReadOptions())
    assert result.rejected.height == 0
    conversations = result.conversations
    assert conversations.height == 1000
    assert conversations["source_id"][:2].to_list() == ["alpaca.json:1", "alpaca.json:2"]
    assert conversations["provenance"].struct.field("line").to_list() == list(range(1, 1001))
    assert conversations["messages"][999].to_list()[1]["content"] == "It is 999."


def test_bad_elements_of_a_json_array_are_rejected_by_position(tmp_path: Path) -> None:
    path = tmp_path / "mixed.json"
    elements = [alpaca(0), {**alpaca(1), "output": 5}, "not an object", alpaca(3)]
    path.write_text("[\n" + ",\n".join(json.dumps(e) for e in elements) + "\n]\n")
    result = read_jsonl([path], ReadOptions())
    assert result.conversations["source_id"].to_list() == ["mixed.json:1", "mixed.json:4"]
    rejected = result.rejected
    assert rejected["line"].to_list() == [2, 3]
    assert rejected["field"][0] == "output"
    assert "object" in rejected["reason"][1]


def test_an_array_of_no_usable_element_names_the_element(tmp_path: Path) -> None:
    path = tmp_path / "wrong.json"
    path.write_text(json.dumps([{"instruction": "a", "output": 1}]))
    with pytest.raises(SourceError, match=r"no element could be read \(element 1: field 'output'"):
        read_jsonl([path], ReadOptions())


@pytest.mark.parametrize(
    "text, problem",
    [
        ('[\n{"instruction": "a", "output": "b"},\n]', r"trailing comma .* at line 3, column 1"),
        (
            '[\n{"instruction": "a", "output": "b"}\n{"a": 1}]',
            r"expected .,. or .]. at line 3, column 1 \(byte 38\)",
        ),
        ('[{"instruction": "a", "output": "b"}', r"ends before the array does"),
        ("[]", r"empty JSON array"),
    ],
)
def test_a_malformed_json_array_is_one_error_for_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture, text: str, problem: str
) -> None:
    from pipelines.cli import main

    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(SourceError, match=problem) as error:
        read_jsonl([path], ReadOptions())
    assert error.value.path == str(path)
    # At the CLI: exit status 2 and one line naming the file, nothing written.
    out = tmp_path / "out"
    assert main(["ingest", "--format", "jsonl", str(path), "--out", str(out)]) == 2
    assert f"{path}: " in capsys.readouterr().err
    assert not out.exists()


# ---- Parquet ---------------------------------------------------------------------------------


def test_parquet_messages_and_preferences(tmp_path: Path) -> None:
    path = tmp_path / "chat.parquet"
    pl.DataFrame(
        {
            "messages": [HI, [HI[0], {"role": "robot", "content": "beep"}]],
            "prompt": ["Hi", "Hi"],
            "chosen": ["Hello!", None],
            "rejected": ["Go away.", None],
        }
    ).write_parquet(path)
    result = ingest("parquet", [path])
    assert messages_of(result) == [HI]
    assert result.preferences.height == 1
    row = result.rejected.row(0, named=True)
    assert (row["line"], row["field"]) == (2, "messages[1].role")
    assert result.conversations["provenance"][0]["line"] == 1


def test_parquet_missing_mapped_column_and_not_parquet(tmp_path: Path) -> None:
    path = tmp_path / "qa.parquet"
    pl.DataFrame({"question": ["Hi"], "answer": ["Hello!"]}).write_parquet(path)
    with pytest.raises(SourceError, match="'reply'"):
        read_parquet([path], ReadOptions(columns={"prompt": "question", "completion": "reply"}))
    mapped = read_parquet(
        [path], ReadOptions(columns={"prompt": "question", "completion": "answer"})
    )
    assert messages_of(mapped) == [HI]
    fake = tmp_path / "fake.parquet"
    fake.write_text("not parquet")
    with pytest.raises(SourceError, match="not a Parquet file"):
        read_parquet([fake], ReadOptions())
    with pytest.raises(SourceError, match="no such file"):
        read_parquet([tmp_path / "gone.parquet"], ReadOptions())


def test_parquet_wrong_type_row_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "alpaca.parquet"
    pl.DataFrame(
        {"instruction": ["Say hi.", None], "input": [None, ""], "output": ["Hi", "x"]}
    ).write_parquet(path)
    result = read_parquet([path], ReadOptions())
    assert result.conversations.height == 1
    assert result.rejected.select("line", "field").row(0) == (2, "instruction")


# ---- HF datasets -----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def offline_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub, and load_dataset's cache in tmp_path rather than the user's home."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def test_hf_save_to_disk_folder(tmp_path: Path) -> None:
    import datasets

    folder = tmp_path / "my_chats"
    datasets.Dataset.from_list(
        [{"messages": HI}, {"messages": [HI[0], {"role": "narrator", "content": "x"}]}]
    ).save_to_disk(str(folder))
    result = read_hf([str(folder)], ReadOptions())
    assert messages_of(result) == [HI]
    assert result.conversations.select("source", "source_id").row(0) == ("my_chats", "my_chats:1")
    assert result.rejected.select("line", "field").row(0) == (2, "messages[1].role")


def test_hf_dataset_dict_split_and_local_file(tmp_path: Path) -> None:
    import datasets

    folder = tmp_path / "dd"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([{"prompt": "Hi", "completion": "Hello!"}]),
            "test": datasets.Dataset.from_list(
                [{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}]
            ),
        }
    ).save_to_disk(str(folder))
    assert messages_of(ingest("hf", [str(folder)])) == [HI]
    test_split = read_hf([str(folder)], ReadOptions(split="test"))
    assert test_split.preferences.height == 1
    with pytest.raises(SourceError, match="no split 'valid'"):
        read_hf([str(folder)], ReadOptions(split="valid"))

    local = write_lines(tmp_path / "alpaca.jsonl", [{"instruction": "Say hi.", "output": "Hi"}])
    result = read_hf([str(local)], ReadOptions())
    assert result.conversations["messages"][0][0]["content"] == "Say hi."
    assert result.conversations["source"][0] == "alpaca"

    # A plain folder of data files goes through load_dataset's local file builders.
    folder = tmp_path / "qa_folder"
    folder.mkdir()
    pl.DataFrame({"prompt": ["Hi"], "completion": ["Hello!"]}).write_parquet(
        folder / "train.parquet"
    )
    assert messages_of(read_hf([folder], ReadOptions())) == [HI]


def test_hf_missing_dataset_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot load dataset"):
        read_hf([str(tmp_path / "no_such_dataset")], ReadOptions())


def test_hf_on_a_json_file_with_a_bad_line_names_the_file_line_and_cause(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "chat.jsonl",
        [{"messages": HI}, '{"messages": [oops', {"messages": HI}],
    )
    with pytest.raises(SourceError) as error:
        read_hf([str(path)], ReadOptions())
    message = str(error.value)
    assert message.startswith(f"{path}: cannot load dataset (ArrowInvalid: ")
    assert f"first bad record: {path} line 2: malformed JSON" in message
    assert "--format jsonl reads row by row" in message
    assert "An error occurred while generating" not in message
    # The advice holds: the JSONL reader keeps the good lines and rejects the bad one.
    result = read_jsonl([path], ReadOptions())
    assert result.conversations.height == 2
    assert result.rejected["line"].to_list() == [2]


# ---- embedded sample -------------------------------------------------------------------------


@pytest.mark.skipif(
    not (SAMPLES / "synthetic_chat.jsonl").exists(), reason="sample data not written yet"
)
def test_sample_file() -> None:
    result = read_jsonl([SAMPLES / "synthetic_chat.jsonl"], ReadOptions())
    assert result.conversations.height + result.preferences.height > 0
    assert result.rejected.height == 0
    roles = result.conversations["messages"].explode().struct.field("role")
    assert set(roles) <= {"system", "user", "assistant"}
    # The synthetic tasks carry their checkable answer in meta; it must survive ingest.
    if "answer" in (SAMPLES / "synthetic_chat.jsonl").read_text():
        assert all("answer" in json.loads(m) for m in result.conversations["meta"])
