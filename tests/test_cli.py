"""The `postforge` command as a user runs it: a real process, real files, exit codes."""

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

POSTFORGE = str(Path(sys.executable).with_name("postforge"))
FLAN_ROWS = [
    {
        "inputs": "Is the sky blue?\n\nOPTIONS:\n- yes\n- no",
        "targets": "yes",
        "task_source": "Flan2021",
        "task_name": "sky",
        "template_type": "zs_opt",
    },
    {
        "inputs": "Add 2 and 3.",
        "targets": "5",
        "task_source": "CoT",
        "task_name": "add",
        "template_type": "zs_noopt",
    },
]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([POSTFORGE, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture
def flan_file(tmp_path) -> Path:
    path = tmp_path / "flan.jsonl"
    lines = [json.dumps(row) for row in FLAN_ROWS] + ['{"inputs": "cut off', ""]
    path.write_text("\n".join(lines) + '\n{"inputs": 7, "targets": "x"}\n')
    return path


def test_ingest_writes_canonical_tables_and_rejects_bad_rows(tmp_path, flan_file):
    out = tmp_path / "out"
    done = run("ingest", "--format", "flan", str(flan_file), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "conversations=2" in done.stdout and "rejected=3" in done.stdout
    conversations = pl.read_parquet(out / "conversations.parquet")
    assert {"id", "source", "source_id", "lang", "messages"} <= set(conversations.columns)
    assert conversations["messages"][0].to_list()[1] == {"role": "assistant", "content": "yes"}
    rejected = pl.read_parquet(out / "rejected.parquet").sort("line")
    assert rejected["line"].to_list() == [3, 4, 5]
    assert rejected["field"].to_list()[2] == "inputs"
    assert all(rejected["file"] == str(flan_file))
    assert not (out / "preferences.parquet").exists()  # FLAN has no comparisons


def test_profile_writes_tables_and_histograms(tmp_path, flan_file):
    out = tmp_path / "out"
    assert run("ingest", "--format", "flan", str(flan_file), "--out", str(out)).returncode == 0
    done = run("profile", str(out), "--out", str(tmp_path / "profile"))
    assert done.returncode == 0, done.stderr
    stats = pl.read_parquet(tmp_path / "profile" / "length_stats.parquet")
    assert set(stats["measure"]) == {"chars", "words", "tokens"}
    assert (tmp_path / "profile" / "hist_user_tokens.png").exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such file"),
        (b"", "empty file"),
        (b"this is not json\nnor is this\n", "no line could be read"),
    ],
)
def test_unreadable_input_is_one_line_and_exit_2(tmp_path, content, expected):
    path = tmp_path / "input.jsonl"
    if content is not None:
        path.write_bytes(content)
    done = run("ingest", "--format", "flan", str(path), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert str(path) in done.stderr and expected in done.stderr


def test_parquet_missing_column_names_it(tmp_path):
    path = tmp_path / "flan.parquet"
    pl.DataFrame({"inputs": ["q"]}).write_parquet(path)
    done = run("ingest", "--format", "flan", str(path), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "targets" in done.stderr and str(path) in done.stderr


def test_profile_of_a_folder_without_conversations_is_exit_2(tmp_path):
    done = run("profile", str(tmp_path), "--out", str(tmp_path / "p"))
    assert done.returncode == 2 and "conversations.parquet" in done.stderr


def test_bad_column_mapping_is_exit_2(tmp_path, flan_file):
    done = run(
        "ingest", "--format", "jsonl", str(flan_file), "--out", str(tmp_path), "--column", "x"
    )
    assert done.returncode == 2 and "CANONICAL=INPUT" in done.stderr
