"""`postforge judge` as a user runs it: a real process against a real chat-completions server on
127.0.0.1, the key only in the environment, rankings and pairs on disk, a cached re-run free."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from curation.feedback.schema import CANDIDATES
from curation.judge.stub import StubServer

POSTFORGE = str(Path(sys.executable).with_name("postforge"))
SECRET = "sk-test-DO-NOT-LEAK-4242"
PROMPTS, K = 5, 4


def run(*args: str, key: str | None = SECRET) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "POSTFORGE_JUDGE_API_KEY"}
    if key is not None:
        env["POSTFORGE_JUDGE_API_KEY"] = key
    return subprocess.run(
        [POSTFORGE, "judge", *args], capture_output=True, text=True, timeout=120, env=env
    )


@pytest.fixture
def candidates_dir(tmp_path) -> Path:
    rows = [
        {
            "id": f"p{p}",
            "source": "synthetic_chat",
            "prompt": [{"role": "user", "content": f"Explain item {p}."}],
            "reference": None,
            "answer": None,
            "task": None,
            "candidates": [
                {
                    "candidate_id": f"p{p}c{i}",
                    "text": "word " * (i + 1) + f"about {p}",
                    "origin": "model",
                    "model": "ckpt",
                    "sampling": "{}",
                }
                for i in range(K)
            ],
        }
        for p in range(PROMPTS)
    ]
    folder = tmp_path / "in"
    folder.mkdir()
    pl.DataFrame(rows, schema=CANDIDATES).write_parquet(folder / "candidates.parquet")
    return folder


def test_ranks_through_an_endpoint_writes_pairs_and_a_rerun_is_free(candidates_dir, tmp_path):
    out = tmp_path / "out"
    with StubServer() as server:  # ranks longer answers first
        first = run(
            str(candidates_dir), "--out", str(out), "--base-url", server.base_url,
            "--model", "stub", "--concurrency", "4",
        )  # fmt: skip
        assert first.returncode == 0, first.stderr
        paid = server.requests
        assert paid >= PROMPTS
        second = run(
            str(candidates_dir), "--out", str(out), "--base-url", server.base_url,
            "--model", "stub",
        )  # fmt: skip
        assert second.returncode == 0, second.stderr
        assert server.requests == paid  # every answer came from the cache
        other_model = run(
            str(candidates_dir), "--out", str(out), "--base-url", server.base_url,
            "--model", "another",
        )  # fmt: skip
        assert server.requests == 2 * paid  # the judge model is part of the cache key
        sent = [
            {k.lower(): v for k, v in headers.items()}.get("authorization")
            for _, _, headers in server.log
        ]
    assert all(value == f"Bearer {SECRET}" for value in sent)

    rankings = pl.read_parquet(out / "rankings.parquet")
    assert rankings["status"].to_list() == ["ok"] * PROMPTS
    pairs = pl.read_parquet(out / "preferences.parquet")
    assert pairs.height == PROMPTS * K * (K - 1) // 2  # all C(K,2) pairs by default
    chosen = pairs["chosen"].list.last().struct.field("content").str.len_chars()
    rejected = pairs["rejected"].list.last().struct.field("content").str.len_chars()
    assert (chosen > rejected).all()
    assert set(pairs["origin"]) == {"ai"}

    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    logs = [first, second, other_model]
    assert all(SECRET not in done.stdout + done.stderr for done in logs)


def test_best_versus_worst_from_a_config_file(candidates_dir, tmp_path):
    config = tmp_path / "judge.yaml"
    config.write_text("template: listwise\npermutations: 1\npairs: {strategy: best_vs_worst}\n")
    with StubServer() as server:
        done = run(
            str(candidates_dir), "--out", str(tmp_path / "o"), "--config", str(config),
            "--base-url", server.base_url,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert pl.read_parquet(tmp_path / "o" / "preferences.parquet").height == PROMPTS


def test_unreachable_endpoint_is_named_and_the_key_is_not(candidates_dir, tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = run(
        str(candidates_dir), "--out", str(tmp_path / "o"),
        "--base-url", f"http://127.0.0.1:{port}/v1",
    )  # fmt: skip
    assert done.returncode == 2
    assert f"127.0.0.1:{port}" in done.stderr
    assert SECRET not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_offline_judge_needs_no_endpoint(candidates_dir, tmp_path):
    done = run(str(candidates_dir), "--out", str(tmp_path / "o"), key=None)
    assert done.returncode == 0, done.stderr
    assert pl.read_parquet(tmp_path / "o" / "rankings.parquet").height == PROMPTS


def test_missing_candidates_and_unknown_settings_are_one_line_errors(tmp_path, candidates_dir):
    missing = run(str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"))
    assert missing.returncode == 2 and "candidates.parquet" in missing.stderr
    config = tmp_path / "bad.yaml"
    config.write_text("base_url: http://127.0.0.1:9/v1\ntemprature: 0.5\n")
    bad = run(str(candidates_dir), "--out", str(tmp_path / "o"), "--config", str(config))
    assert bad.returncode == 2 and "temprature" in bad.stderr


def test_failed_sets_give_exit_3_after_the_outputs_are_written(candidates_dir, tmp_path):
    from curation.judge.stub import Reply, longest_first

    def down_for_item_0(body: dict, n: int) -> Reply:
        if "Explain item 0." in body["messages"][1]["content"]:
            return Reply(500, {"error": {"message": "boom"}})
        return longest_first(body, n)

    out = tmp_path / "out"
    config = tmp_path / "judge.yaml"
    config.write_text("max_retries: 0\nbackoff_base_s: 0.001\n")
    base = [str(candidates_dir), "--out", str(out), "--config", str(config), "--model", "stub"]
    with StubServer(down_for_item_0) as server:
        strict = run(*base, "--base-url", server.base_url)
        tolerant = run(*base, "--base-url", server.base_url, "--max-error-share", "0.2")
    assert strict.returncode == 3, strict.stderr
    assert strict.stderr.strip() == (
        "postforge judge: error: the judge failed on 1 of 5 candidate set(s) (20.0%, above "
        "max_error_share 0); first: p0: gave up after 1 attempt(s); last: HTTP 500: boom. "
        "Answered calls are cached: a re-run pays only for the failed sets"
    )
    assert tolerant.returncode == 0, tolerant.stderr
    rankings = pl.read_parquet(out / "rankings.parquet")
    assert rankings["status"].to_list() == ["error"] + ["ok"] * (PROMPTS - 1)
    summary = __import__("json").loads((out / "summary.json").read_text())
    assert summary["failed_sets"] == 1 and summary["error"] == 1
    bad = run(*base, "--base-url", "http://127.0.0.1:9/v1", "--max-error-share", "1.5")
    assert bad.returncode == 2 and "expected a number from 0 to 1" in bad.stderr


def test_a_set_the_endpoint_refuses_outright_is_recorded_but_not_a_failure(
    candidates_dir, tmp_path
):
    """A 400 (a content filter, a prompt past the judge's context) comes back the same on
    every retry: the step would fail on every run and the pairs of every other set wait."""
    from curation.judge.stub import Reply, longest_first

    def filtered_item_0(body: dict, n: int) -> Reply:
        if "Explain item 0." in body["messages"][1]["content"]:
            return Reply(400, {"error": {"message": "content filtered"}})
        return longest_first(body, n)

    out = tmp_path / "out"
    with StubServer(filtered_item_0) as server:
        done = run(str(candidates_dir), "--out", str(out), "--base-url", server.base_url)
    assert done.returncode == 0, done.stderr
    rankings = pl.read_parquet(out / "rankings.parquet")
    assert rankings["status"].to_list() == ["error"] + ["ok"] * (PROMPTS - 1)
    meta = __import__("json").loads(rankings["meta"][0])
    assert meta["rejected"] is True and "HTTP 400: content filtered" in meta["errors"][0]
    summary = __import__("json").loads((out / "summary.json").read_text())
    assert summary["failed_sets"] == 0 and summary["error"] == 1


def test_a_repeated_prompt_id_is_refused_before_any_call(candidates_dir, tmp_path):
    path = candidates_dir / "candidates.parquet"
    table = pl.read_parquet(path)
    pl.concat([table, table.head(1)]).write_parquet(path)
    with StubServer() as server:
        done = run(str(candidates_dir), "--out", str(tmp_path / "o"), "--base-url", server.base_url)
        sent = server.requests
    assert done.returncode == 2 and sent == 0
    assert done.stderr.strip() == (
        f"postforge judge: error: {path}: row {PROMPTS}: id 'p0' repeats row 0"
    )
    assert not (tmp_path / "o").exists()


# --- the answer cache of a panel, the key, settings the judge would not use ----------------------


def test_a_panel_run_again_is_answered_from_the_cache(candidates_dir, tmp_path):
    """Each member of a panel is an endpoint judge that pays per call: a re-run must pay for
    nothing, like a single judge's."""
    out = tmp_path / "out"
    config = tmp_path / "panel.yaml"
    with StubServer() as server:
        config.write_text(
            "panel:\n"
            f"  - {{base_url: {server.base_url}, model: a, permutations: 1}}\n"
            f"  - {{base_url: {server.base_url}, model: b, template: pairwise}}\n"
            "vote: borda\n"
        )
        first = run(str(candidates_dir), "--out", str(out), "--config", str(config))
        assert first.returncode == 0, first.stderr
        paid = server.requests
        # listwise, one order: 1 call a set; pairwise, both orders: 2 * C(K, 2) calls a set
        assert paid == PROMPTS * (1 + K * (K - 1))
        second = run(str(candidates_dir), "--out", str(out), "--config", str(config))
        assert second.returncode == 0, second.stderr
        assert server.requests == paid  # not one call more
    assert (out / "judge_cache.sqlite").is_file()
    summary = __import__("json").loads((out / "summary.json").read_text())
    assert [m["cache_hits"] for m in summary["judges"].values()] == [PROMPTS, PROMPTS * K * (K - 1)]
    rankings = pl.read_parquet(out / "rankings.parquet")
    assert rankings["status"].to_list() == ["ok"] * PROMPTS


def test_panel_members_that_would_read_each_others_answers_are_refused(candidates_dir, tmp_path):
    """Two servers serving different weights under one model name (llama.cpp answers to any
    name) would share cache keys, which leave the endpoint out: refused, not merged."""
    config = tmp_path / "panel.yaml"
    with StubServer() as one, StubServer() as other:
        config.write_text(
            "panel:\n"
            f"  - {{base_url: {one.base_url}, model: m, name: first}}\n"
            f"  - {{base_url: {other.base_url}, model: m, name: second}}\n"
        )
        done = run(str(candidates_dir), "--out", str(tmp_path / "o"), "--config", str(config))
        assert one.requests == other.requests == 0
    assert done.returncode == 2, done.stderr
    assert "'first'" in done.stderr and "'second'" in done.stderr
    assert "own cache_path" in done.stderr and "Traceback" not in done.stderr
    # Shaped differently but alike in the cache key's parts: every prompt shorter than both
    # limits gives both members the same messages, so the same keys.
    with StubServer() as one, StubServer() as other:
        config.write_text(
            "panel:\n"
            f"  - {{base_url: {one.base_url}, model: m, name: first, max_prompt_chars: 4000}}\n"
            f"  - {{base_url: {other.base_url}, model: m, name: second, max_prompt_chars: 8000}}\n"
        )
        done = run(str(candidates_dir), "--out", str(tmp_path / "o2"), "--config", str(config))
        assert one.requests == other.requests == 0
    assert done.returncode == 2 and "own cache_path" in done.stderr, done.stderr


def _unauthorized(body: dict, n: int):
    from curation.judge.stub import Reply

    return Reply(401, {"error": {"message": "Incorrect API key provided"}})


def test_a_missing_key_is_named_as_missing_not_rejected(candidates_dir, tmp_path):
    """With no key the client sends a placeholder; a 401 to it means the key is missing (a
    typo in --api-key-env, a variable never exported), not that a key was wrong. Both places a
    401 can come from: the preflight's GET /models and a chat call."""
    from curation.judge.stub import Reply

    refuse = Reply(401, {"error": {"message": "Incorrect API key provided"}})
    configs = {}
    for preflight in ("true", "false"):
        configs[preflight] = tmp_path / f"preflight_{preflight}.yaml"
        text = f"preflight: {preflight}\nmax_retries: 0\nmax_concurrency: 1\n"
        configs[preflight].write_text(text)
    with StubServer(_unauthorized, models_reply=refuse) as server:
        base = [str(candidates_dir), "--out", str(tmp_path / "o"), "--base-url", server.base_url]
        unset = run(*base, "--config", str(configs["true"]), key=None)
        # SECRET is in the default variable, not in the one named
        typo = run(*base, "--config", str(configs["false"]), "--api-key-env", "MY_KEY_TYPO")
        wrong = run(*base, "--config", str(configs["false"]))
        assert server.requests == 2  # without a preflight: the first chat call of each run
    assert unset.returncode == typo.returncode == wrong.returncode == 2
    assert unset.stderr.strip() == (
        f"postforge judge: error: judge endpoint {server.base_url} refused the request "
        "(HTTP 401) and no API key was given: the key is read from the environment variable "
        "POSTFORGE_JUDGE_API_KEY, now unset"
    )
    assert "refused the request (HTTP 401) and no API key was given" in typo.stderr
    assert "environment variable MY_KEY_TYPO, now unset" in typo.stderr
    assert "rejected the API key (HTTP 401)" in wrong.stderr and "no API key" not in wrong.stderr
    assert all(SECRET not in done.stderr + done.stdout for done in (unset, typo, wrong))


def judge_main(*args: str | Path) -> int:
    from pipelines.cli import main

    return main(["judge", *(str(a) for a in args)])


@pytest.mark.parametrize(
    ("config", "flags", "expected"),
    [
        # Without an endpoint every judge setting is refused, typo or not, flag or file.
        ("templat: pairwise\n", [], "unknown judge setting(s) ['templat']"),
        ("template: pairwise\n", [], "['template']: settings of an endpoint judge, but no "),
        ("", ["--model", "X"], "--model: only for an endpoint judge; give --base-url"),
        ("", ["--api-key-env", "K"], "--api-key-env: only for an endpoint judge"),
        ("backend: offline\nmodel: x\n", [], "['model']: settings of an endpoint judge"),
        # With one, values are checked naming the setting.
        ("max_concurrency: four\n", ["--base-url", "URL"], "max_concurrency: expected int, got"),
        ("pairs: {min_margn: 2}\n", [], "pairs: unknown key(s) ['min_margn']; known: ['min_"),
        ("pairs: {min_margin: two}\n", [], "pairs.min_margin: expected int, got str 'two'"),
        ("pairs: best\n", [], "pairs: expected a mapping of settings, got str"),
        # A panel: its members named by position; settings beside it apply to no judge.
        ("panel: [{base_url: URL, modle: a}]\n", [], "panel[0]: unknown judge setting(s) ['mo"),
        ("panel: [{base_url: URL, model: a}]\ntemplate: pairwise\n", [], "['template'] beside"),
        ("panel: [{base_url: URL, model: a}]\n", ["--model", "b"], "--model: a panel names"),
        ("panel: [{base_url: URL, model: a}]\nvote: majorty\n", [], "vote: expected 'borda' or"),
    ],
)
def test_settings_the_judge_would_not_use_are_refused_by_name(
    candidates_dir, tmp_path, capsys, config, flags, expected
):
    """Without --base-url these used to pick the offline judge quietly and exit 0."""
    path = tmp_path / "judge.yaml"
    with StubServer() as server:
        path.write_text(config.replace("URL", server.base_url))
        flags = [server.base_url if flag == "URL" else flag for flag in flags]
        code = judge_main(candidates_dir, "--out", tmp_path / "o", "--config", path, *flags)
        assert server.requests == 0
    error = capsys.readouterr().err
    assert code == 2, error
    assert expected in error and error.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_flag_values_and_a_file_for_in_dir_are_refused(candidates_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        judge_main(candidates_dir, "--out", tmp_path / "o", "--concurrency", "0")
    assert exit_.value.code == 2
    assert "--concurrency: expected a whole number above 0, got '0'" in capsys.readouterr().err
    samples = Path(__file__).resolve().parents[1] / "data" / "samples" / "flan.jsonl"
    assert judge_main(samples, "--out", tmp_path / "o") == 2
    assert capsys.readouterr().err == (
        f"postforge judge: error: {samples}: not a folder; give IN_DIR, the folder holding "
        "candidates.parquet\n"
    )
