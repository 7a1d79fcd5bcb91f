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


# --- what a new user gets wrong: one line, exit 2, before any work -------------------------------


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("references: {per_source: {flan: dorp}}", "references.per_source.flan: unknown verdict"),
        ("pii: {policy: 3}", "pii.policy: unknown verdict 3; expected one of ['keep', 'drop'"),
        ("pii: rewrite", "pii: expected a mapping of settings such as {policy: drop}, got str"),
        ("pii: {enabled: 'no'}", "pii.enabled: expected bool, got str 'no'"),
        ("duplicates: {threshold: 7}", "duplicates: threshold must be in (0, 1], got 7"),
    ],
)
def test_a_curate_config_is_checked_whole_before_any_work(tmp_path, capsys, config, expected):
    """The input folder does not exist: the config's error comes first, so it came before
    reading the input or training a tokenizer."""
    path = tmp_path / "curate.yaml"
    path.write_text(config + "\n")
    assert cli("curate", tmp_path / "nowhere", "--out", tmp_path / "cur", "--config", path) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"postforge curate: error: {path}: {expected}"), error
    assert error.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["curate", "IN", "--eval-fraction", "1.5"], "--eval-fraction: expected a share with 0"),
        (["curate", "IN", "--eval-fraction", "-0.5"], "--eval-fraction: expected a share with"),
        (["curate", "IN", "--eval-fraction", "1"], "(1 leaves no train rows), got '1'"),
        (["profile", "IN", "--vocab-size", "10"], "--vocab-size: expected a whole number >= 260"),
    ],
)
def test_out_of_range_numbers_are_refused_naming_the_flag(tmp_path, capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_:
        cli(*argv, "--out", tmp_path / "o")
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert expected in error and "Traceback" not in error


def test_help_explains_eval_fraction_and_vocab_size():
    assert "held out in its test split" in run("curate", "--help").stdout
    assert "vocabulary of the BPE trained" in run("profile", "--help").stdout


def test_one_commands_outputs_are_not_replaced_by_another_command(tmp_path, sources, capsys):
    """ingest (or profile) --out a curate folder, a mistyped folder most likely, used to delete
    the curated datasets and exit 0."""
    ingested, cur = tmp_path / "in", tmp_path / "cur"
    assert cli("ingest", "--format", "hh", sources["hh"], "--out", ingested) == 0
    assert cli("curate", ingested, "--out", cur, "--tokenizer", sources["tokenizer"]) == 0
    curated = capsys.readouterr().out.splitlines()[-1]
    assert curated == (
        "curated 5 conversations: kept=5 rewritten=0 dropped=0; 5 preference pairs: "
        f"kept=5 rewritten=0 dropped=0 -> {cur}"
    )
    before = listing(cur)
    assert cli("ingest", "--format", "jsonl", sources["chat"], "--out", cur) == 2
    assert capsys.readouterr().err == (
        f"postforge ingest: error: --out {cur}: holds the outputs of `postforge curate` "
        "(postforge_outputs.json), which `postforge ingest` would delete; give another folder, "
        f"or remove {cur} first if you no longer need them\n"
    )
    assert cli("profile", ingested, "--out", cur, "--vocab-size", "300") == 2
    assert "outputs of `postforge curate`" in capsys.readouterr().err
    assert listing(cur) == before and "datasets/sft/train.parquet" in before
    assert cli("curate", ingested, "--out", cur, "--tokenizer", sources["tokenizer"]) == 0


def test_ingest_errors_name_the_flags_of_the_cli(tmp_path, sources, capsys):
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"question": "q", "reply": "a"}\n')
    out = tmp_path / "o"
    assert cli("ingest", "--format", "jsonl", odd, "--out", out) == 2
    error = capsys.readouterr().err
    assert error.endswith("(or map yours with --column CANONICAL=INPUT)\n"), error
    assert cli("ingest", "--format", "jsonl", odd, "--out", out, "--column", "query=q") == 2
    error = capsys.readouterr().err
    assert "unknown canonical name(s) ['query'] in --column CANONICAL=INPUT; known:" in error
    mapped = ("--column", "prompt=question", "--column", "completion=reply")
    assert cli("ingest", "--format", "jsonl", odd, "--out", out, *mapped) == 0
    capsys.readouterr()
    for flag in (["--split", "test"], ["--allow-hub"]):
        assert cli("ingest", "--format", "hh", sources["hh"], "--out", out, *flag) == 2
        assert f"{flag[0]} applies only to --format hf" in capsys.readouterr().err


HUB = """
import http.server, sys, threading
seen = []
class Hub(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args): pass
    def do_GET(self):
        seen.append(self.path)
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()
    do_HEAD = do_POST = do_GET
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
threading.Thread(target=server.serve_forever, daemon=True).start()
print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
sys.stdin.read()
print(len(seen), flush=True)
"""


def test_hf_ingest_is_offline_unless_the_hub_is_allowed(tmp_path):
    """Run as a user runs it, without HF_HUB_OFFLINE; the hub is a local server that counts
    the requests it gets (the real one when offline mode fails would be huggingface.co)."""
    import os

    def ingest_hf(name: str, *flags: str) -> tuple[subprocess.CompletedProcess, int]:
        hub = subprocess.Popen(
            [sys.executable, "-c", HUB], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env |= {"HF_ENDPOINT": hub.stdout.readline().strip(), "HF_HOME": str(tmp_path / "hf")}
        done = subprocess.run(
            [POSTFORGE, "ingest", "--format", "hf", name, "--out", str(tmp_path / "o"), *flags],
            capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
        )  # fmt: skip
        requests, _ = hub.communicate("", timeout=10)
        return done, int(requests)

    offline, sent = ingest_hf("mydata")
    assert offline.returncode == 2 and sent == 0
    assert offline.stderr == (
        "postforge ingest: error: mydata: cannot load dataset: no such file or folder, nor a hub "
        "dataset in the Hugging Face cache (hub downloads are off); pass --allow-hub to download "
        "it from the hub\n"
    )
    allowed, sent = ingest_hf("mydata", "--allow-hub")
    assert allowed.returncode == 2 and sent > 0  # it asked the hub, which has no such dataset
    local, sent = ingest_hf("./mydata", "--allow-hub")  # a path: never a hub id
    assert local.stderr == (
        "postforge ingest: error: ./mydata: cannot load dataset: no such file or folder\n"
    )
    assert sent == 0
