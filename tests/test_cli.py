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


# --- --out is replaced whole ----------------------------------------------------------------------

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """Five HH-RLHF comparisons, five chat conversations, and a small tokenizer for curate
    (so no run trains the default one)."""
    from training.tokenizer import TokenizerConfig, save_tokenizer, train_tokenizer

    root = tmp_path_factory.mktemp("sources")
    paths = {}
    for name, sample in (("hh", "hh_rlhf.jsonl"), ("chat", "synthetic_chat.jsonl")):
        lines = (SAMPLES / sample).read_text(encoding="utf-8").splitlines()[:5]
        paths[name] = root / f"{name}.jsonl"
        paths[name].write_text("\n".join(lines) + "\n", encoding="utf-8")
    texts = [line for p in paths.values() for line in p.read_text().splitlines()]
    save_tokenizer(train_tokenizer(texts, TokenizerConfig(vocab_size=300)), root / "tokenizer")
    paths["tokenizer"] = root / "tokenizer"
    return paths


def cli(*args: str | Path) -> int:
    from pipelines.cli import main

    return main([str(a) for a in args])


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.parquet"))


def test_a_run_replaces_the_previous_runs_outputs_whole(tmp_path, sources):
    """ingest hh then ingest jsonl into one folder: the HH comparisons are gone, so curate
    builds no preference set from them; curating again into one folder drops the earlier
    run's preference set and files."""
    o4, cur = tmp_path / "o4", tmp_path / "cur"
    assert cli("ingest", "--format", "hh", sources["hh"], "--out", o4) == 0
    assert (o4 / "preferences.parquet").exists()
    tok = ("--tokenizer", sources["tokenizer"])
    assert cli("curate", o4, "--out", cur, *tok) == 0
    assert "datasets/preference/train.parquet" in listing(cur)
    assert "preference_ledger.parquet" in listing(cur)

    assert cli("ingest", "--format", "jsonl", sources["chat"], "--out", o4) == 0
    assert listing(o4) == ["conversations.parquet", "rejected.parquet"]
    assert set(pl.read_parquet(o4 / "conversations.parquet")["source"]) == {"chat"}
    record = json.loads((o4 / "postforge_outputs.json").read_text())
    assert record == {
        "command": "ingest",
        "outputs": ["conversations.parquet", "rejected.parquet"],
    }
    assert cli("curate", o4, "--out", cur, *tok) == 0
    assert not any("preference" in name for name in listing(cur))
    assert pl.read_parquet(cur / "curated.parquet")["source"].unique().to_list() == ["chat"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cur", "o4"]  # nothing left aside


def test_out_holding_other_files_is_refused_and_left_as_it_is(tmp_path, sources, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert cli("ingest", "--format", "hh", sources["hh"], "--out", out) == 2
    error = capsys.readouterr().err
    assert "notes.txt" in error and "Traceback" not in error
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "keep me"

    # An output folder someone added a file to is no longer ours to replace either.
    ours = tmp_path / "ours"
    assert cli("ingest", "--format", "hh", sources["hh"], "--out", ours) == 0
    (ours / "extra.parquet").write_bytes(b"")
    before = listing(ours)
    assert cli("ingest", "--format", "jsonl", sources["chat"], "--out", ours) == 2
    assert "extra.parquet" in capsys.readouterr().err and listing(ours) == before
    (ours / "extra.parquet").unlink()

    # Writing over what the run reads: refused, nothing replaced.
    assert cli("curate", ours, "--out", ours) == 2
    assert "holds the input" in capsys.readouterr().err
    inside = ours / "chat.jsonl"
    inside.write_text(sources["chat"].read_text())
    assert cli("ingest", "--format", "jsonl", inside, "--out", ours) == 2
    assert "holds the input" in capsys.readouterr().err
    assert "preferences.parquet" in listing(ours)


# Runs the CLI with a SIGKILL at one point of its write: after its first file (between
# files) or after the previous outputs were moved aside (between the two renames).
KILLED_CLI = """
import os, signal, sys
from pathlib import Path
import polars as pl

point, *argv = sys.argv[1:]
out = Path(argv[argv.index("--out") + 1]).resolve()
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if point == "between_files":
    write, written = pl.DataFrame.write_parquet, []
    def write_then_die(self, *args, **kwargs):
        if written:
            die()
        write(self, *args, **kwargs)
        written.append(1)
    pl.DataFrame.write_parquet = write_then_die
else:
    rename = Path.rename
    def rename_then_die(self, target):
        moved = rename(self, target)
        if self == out:
            die()
        return moved
    Path.rename = rename_then_die
from pipelines.cli import main
sys.exit(main(argv))
"""


@pytest.mark.parametrize("point", ["between_files", "between_renames"])
def test_a_killed_run_leaves_the_previous_outputs_whole(tmp_path, sources, point):
    """An HH ingest, then a chat ingest into the same folder killed mid-write: a curate still
    reads the HH conversations with their comparisons (never chat conversations beside HH
    comparisons), and the next run replaces them and sweeps what the kill left."""
    o4, cur = tmp_path / "o4", tmp_path / "cur"
    assert cli("ingest", "--format", "hh", sources["hh"], "--out", o4) == 0
    argv = ["ingest", "--format", "jsonl", str(sources["chat"]), "--out", str(o4)]
    child = subprocess.run(
        [sys.executable, "-c", KILLED_CLI, point, *argv], capture_output=True, text=True
    )
    assert child.returncode == -9, child.stderr
    assert o4.exists() == (point == "between_files")
    assert cli("curate", o4, "--out", cur, "--tokenizer", sources["tokenizer"]) == 0
    assert set(pl.read_parquet(cur / "curated.parquet")["source"]) == {"hh"}
    assert pl.read_parquet(cur / "curated_preferences.parquet").height == 5

    assert cli(*argv) == 0
    assert set(pl.read_parquet(o4 / "conversations.parquet")["source"]) == {"chat"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cur", "o4"]


# ingest, profile (default tokenizer: the embedded corpus) and curate in one process, then
# which of dagster and assets/ that process imported.
IMPORTS_OF_A_RUN = """
import sys
from pipelines.cli import main

hh, tokenizer, root = sys.argv[1:]
codes = [
    main(["ingest", "--format", "hh", hh, "--out", root + "/in"]),
    main(["profile", root + "/in", "--out", root + "/profile", "--vocab-size", "300"]),
    main(["curate", root + "/in", "--out", root + "/cur", "--tokenizer", tokenizer]),
]
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("dagster", "assets", "upath"))
print(codes, loaded[:5])
"""


def test_ingest_profile_and_curate_do_not_import_dagster(tmp_path, sources):
    """Importing dagster costs about a second of every run's start-up; only `demo` needs it."""
    done = subprocess.run(
        [sys.executable, "-c", IMPORTS_OF_A_RUN, sources["hh"], sources["tokenizer"], tmp_path],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[0, 0, 0] []"
    assert (tmp_path / "cur" / "curated_preferences.parquet").exists()
