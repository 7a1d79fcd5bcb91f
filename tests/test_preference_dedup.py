"""Duplicate preference pairs are decided on the whole pair: prompt, chosen and rejected.

UltraFeedback gives one prompt's best answer in several pairs, each against another worse
answer; judged as prompt + chosen, all but the first were dropped as duplicates. The inputs
here are real UltraFeedback files (Parquet and JSONL) read by the reader the pipeline uses."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import polars as pl

from curation.curate import build_filters
from curation.filters.dedup import DedupFilter
from curation.ingest import ingest
from curation.preferences import curate_preferences

POSTFORGE = str(Path(sys.executable).with_name("postforge"))


SYLLABLES = ("ba", "lo", "mi", "ter", "sun", "vel", "dor", "ren", "pol", "cam")


def text(seed: int, words: int = 40) -> str:
    """A sentence of made-up words (three syllables each, from a clean list no content filter
    minds): texts from different seeds share almost no shingles."""
    rng = random.Random(seed)
    return " ".join("".join(rng.choices(SYLLABLES, k=3)) for _ in range(words))


def edited(value: str, word: int = 20) -> str:
    """``value`` with one word replaced: a near duplicate (word 3-gram Jaccard ~0.85)."""
    words = value.split()
    words[word] = "zzzzzz"
    return " ".join(words)


def completion(model: str, response: str, score: float) -> dict:
    annotations = {"helpfulness": {"Rating": "3", "Rationale": "why"}}
    return {
        "model": model,
        "response": response,
        "overall_score": score,
        "annotations": annotations,
    }


def row(instruction: str, *completions: dict) -> dict:
    return {"instruction": instruction, "completions": list(completions)}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def curated(path: Path, config: dict | None = None):
    pairs = ingest("ultrafeedback", [path]).preferences
    return pairs, curate_preferences(pairs, build_filters(config or {}))


def states_by_source_id(pairs: pl.DataFrame, states: pl.DataFrame) -> dict[str, tuple]:
    joined = states.join(pairs.select(pl.col("id").alias("row_id"), "source_id"), on="row_id")
    return {r["source_id"]: (r["state"], r["rule"]) for r in joined.iter_rows(named=True)}


def assert_conserved(pairs: pl.DataFrame, result) -> None:
    counts = result.counts()
    assert result.states.height == pairs.height
    assert result.states["row_id"].n_unique() == pairs.height
    assert counts["kept"] + counts["rewritten"] == result.curated.height
    assert counts["kept"] + counts["rewritten"] + counts["dropped"] == pairs.height
    dropped = result.states.filter(state="dropped")["row_id"]
    ledger_drops = result.ledger.filter(verdict="drop")["row_id"].unique()
    assert set(dropped) == set(ledger_drops)


def test_pairs_sharing_prompt_and_chosen_answer_are_all_kept(tmp_path: Path) -> None:
    # One instruction, four scored answers: six pairs, three with the best answer as chosen,
    # all on the same prompt. None repeats another: each has its own rejected answer.
    path = tmp_path / "uf.parquet"
    answers = [completion(f"m{k}", text(10 + k), 9.0 - 2 * k) for k in range(4)]
    pl.DataFrame([row(text(1, 12), *answers)]).write_parquet(path)
    pairs, result = curated(path)
    assert pairs.height == 6
    by_chosen = pairs.group_by(pl.col("chosen").list.first().struct.field("content")).len()
    assert sorted(by_chosen["len"]) == [1, 2, 3]
    assert result.counts() == {"kept": 6, "rewritten": 0, "dropped": 0}
    assert not result.ledger.filter(pl.col("rule").str.starts_with("duplicate")).height
    assert result.curated["id"].to_list() == pairs["id"].to_list()
    assert_conserved(pairs, result)


def test_an_exact_repeat_of_a_whole_pair_is_dropped_with_its_reason(tmp_path: Path) -> None:
    prompt, best, worse, other = text(1, 12), text(2), text(3), text(4)
    rows = [
        row(prompt, completion("a", best, 9), completion("b", worse, 5), completion("c", other, 2)),
        # The same pairs again, in other case and punctuation (normalised text is compared).
        row(prompt.upper() + "?", completion("a", best + "!", 8), completion("b", worse, 3)),
        # The same prompt and chosen answer against a new rejected answer: a pair of its own.
        row(prompt, completion("a", best, 9), completion("d", text(5), 1)),
    ]
    pairs, result = curated(write_jsonl(tmp_path / "uf.jsonl", rows))
    states = states_by_source_id(pairs, result.states)
    assert states == {
        "uf.jsonl:1:0>1": ("kept", None),
        "uf.jsonl:1:0>2": ("kept", None),
        "uf.jsonl:1:1>2": ("kept", None),
        "uf.jsonl:2:0>1": ("dropped", "duplicate.exact"),
        "uf.jsonl:3:0>1": ("kept", None),
    }
    first = pairs.filter(source_id="uf.jsonl:1:0>1")["id"][0]
    repeat = pairs.filter(source_id="uf.jsonl:2:0>1")["id"][0]
    ledger = result.ledger.filter(row_id=repeat).row(0, named=True)
    assert ledger["rule"] == "duplicate.exact" and ledger["verdict"] == "drop"
    assert ledger["stage"] == "curate"
    assert first in ledger["reason"] and "prompt, chosen and rejected" in ledger["reason"]
    assert repeat not in result.curated["id"].to_list()
    assert_conserved(pairs, result)


def test_near_duplicates_need_all_three_sides_alike(tmp_path: Path) -> None:
    prompt, best, worse = text(1, 30), text(2), text(3)
    rows = [
        row(prompt, completion("a", best, 9), completion("b", worse, 5)),
        # One word changed on every side: the same pair, near.
        row(edited(prompt), completion("a", edited(best), 9), completion("b", edited(worse), 4)),
        # Prompt and chosen alike, the rejected answer another text: a different pair.
        row(edited(prompt, 5), completion("a", edited(best, 7), 9), completion("c", text(6), 2)),
        # Prompt and rejected alike, another chosen answer: a different pair too.
        row(edited(prompt, 9), completion("e", text(7), 9), completion("b", edited(worse, 3), 1)),
        # The same long prompt and chosen answer against two short, different rejected ones:
        # alike as a whole (one text), not side by side.
        row(text(8, 30), completion("a", text(9), 9), completion("f", "Seven hundred.", 2)),
        row(text(8, 30), completion("a", text(9), 9), completion("g", "It is 26, I think.", 2)),
    ]
    pairs, result = curated(write_jsonl(tmp_path / "uf.jsonl", rows))
    states = states_by_source_id(pairs, result.states)
    assert states == {
        "uf.jsonl:1:0>1": ("kept", None),
        "uf.jsonl:2:0>1": ("dropped", "duplicate.near"),
        "uf.jsonl:3:0>1": ("kept", None),
        "uf.jsonl:4:0>1": ("kept", None),
        "uf.jsonl:5:0>1": ("kept", None),
        "uf.jsonl:6:0>1": ("kept", None),
    }
    near = result.ledger.filter(rule="duplicate.near").row(0, named=True)
    assert pairs.filter(source_id="uf.jsonl:1:0>1")["id"][0] in near["reason"]
    assert 0.7 <= near["score"] < 1.0
    assert_conserved(pairs, result)


def test_near_pass_alone_and_without_answer_guard_still_compares_the_rejected_side(
    tmp_path: Path,
) -> None:
    prompt, best, worse = text(1, 30), text(2), text(3)
    rows = [
        row(prompt, completion("a", best, 9), completion("b", worse, 5)),
        row(edited(prompt), completion("a", edited(best), 9), completion("b", edited(worse), 4)),
        row(edited(prompt, 5), completion("a", edited(best, 7), 9), completion("c", text(6), 2)),
    ]
    pairs = ingest("ultrafeedback", [write_jsonl(tmp_path / "uf.jsonl", rows)]).preferences
    # A config file cannot say ``answer_threshold: null``; a filter list built in code can.
    filters = [
        *build_filters({"duplicates": {"enabled": False}}),
        DedupFilter(exact=False, answer_threshold=None),
    ]
    result = curate_preferences(pairs, filters)
    states = states_by_source_id(pairs, result.states)
    assert [states[f"uf.jsonl:{k}:0>1"][1] for k in (1, 2, 3)] == [None, "duplicate.near", None]


def test_flag_policy_keeps_duplicate_pairs_and_records_them(tmp_path: Path) -> None:
    prompt, best, worse = text(1, 12), text(2), text(3)
    rows = [row(prompt, completion("a", best, 9), completion("b", worse, 5))] * 2
    pairs, result = curated(
        write_jsonl(tmp_path / "uf.jsonl", rows), {"duplicates": {"policy": "flag"}}
    )
    assert result.counts() == {"kept": 2, "rewritten": 0, "dropped": 0}
    flags = result.ledger.filter(rule="duplicate.exact")
    assert flags["verdict"].to_list() == ["flag"]
    assert flags["row_id"].to_list() == [pairs["id"][1]]


def test_a_repeated_pair_id_gets_its_own_state(tmp_path: Path) -> None:
    rows = [row(text(1, 12), completion("a", text(2), 9), completion("b", text(3), 5))]
    pairs = ingest("ultrafeedback", [write_jsonl(tmp_path / "uf.jsonl", rows)]).preferences
    twice = pl.concat([pairs, pairs])
    result = curate_preferences(twice, build_filters({}))
    assert result.states["state"].to_list() == ["kept", "dropped"]
    assert result.states["rule"].to_list() == [None, "duplicate.same_id"]
    assert result.curated.height == 1


def test_curate_cli_keeps_every_distinct_pair(tmp_path: Path) -> None:
    answers = [completion(f"m{k}", text(20 + k), 9.0 - k) for k in range(4)]
    rows = [row(text(1, 12), *answers), row(text(1, 12), *answers)]  # the second: all repeats
    source = write_jsonl(tmp_path / "uf.jsonl", rows)
    ingested, out = tmp_path / "ingested", tmp_path / "curated"
    for args in (
        ["ingest", "--format", "ultrafeedback", str(source), "--out", str(ingested)],
        ["curate", str(ingested), "--out", str(out)],
    ):
        done = subprocess.run([POSTFORGE, *args], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    states = pl.read_parquet(out / "preference_states.parquet")
    assert states.height == 12
    rules = dict(states.group_by("rule").len().iter_rows())
    assert rules == {None: 6, "duplicate.exact": 6}
    assert pl.read_parquet(out / "curated_preferences.parquet").height == 6
