"""Candidate sets from the embedded sample files: the sources' own rankings recovered from the
ingested preference pairs, reference and checkable answers from conversations, and the merge with
a candidates.parquet written by the training stage's schema."""

import json
from collections import defaultdict

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from assets.resources import SAMPLES
from curation.datasets import prompt_rows
from curation.feedback.candidates import (
    MergeCandidatesConfig,
    dense_ranks,
    merge_candidates,
    source_rankings,
    source_sets,
)
from curation.feedback.schema import CANDIDATES, RANKINGS, candidate_id, read_candidates
from curation.ingest import ingest
from training.candidates import CANDIDATES_SCHEMA


@pytest.fixture(scope="module")
def data():
    oasst = ingest("oasst", [SAMPLES / "oasst_trees.jsonl"])
    uf = ingest("ultrafeedback", [SAMPLES / "ultrafeedback.jsonl"])
    synthetic_uf = ingest("ultrafeedback", [SAMPLES / "synthetic_ultrafeedback.jsonl"])
    chat = ingest("jsonl", [SAMPLES / "synthetic_chat.jsonl"])
    flan = ingest("flan", [SAMPLES / "synthetic_flan.jsonl"])
    preferences = pl.concat([oasst.preferences, uf.preferences, synthetic_uf.preferences])
    conversations = pl.concat(
        [r.conversations for r in (oasst, uf, synthetic_uf, chat, flan)], how="vertical"
    )
    return {"preferences": preferences, "conversations": conversations, "chat": chat}


def oasst_sibling_ranks() -> dict[str, list[dict[str, int]]]:
    """Prompt text → {reply text: rank} straight from the raw trees file (ranked replies of
    undeleted, reviewed messages only, as the reader keeps them)."""
    found: dict[str, list[dict[str, int]]] = defaultdict(list)

    def walk(node):
        replies = [
            r
            for r in node.get("replies", [])
            if not r.get("deleted") and r.get("review_result") is not False
        ]
        ranked = [r for r in replies if r["role"] == "assistant" and r.get("rank") is not None]
        if node["role"] == "prompter" and len(ranked) >= 2:
            found[node["text"]].append({r["text"].strip(): r["rank"] for r in ranked})
        for reply in replies:
            walk(reply)

    for line in (SAMPLES / "oasst_trees.jsonl").read_text().splitlines():
        tree = json.loads(line)
        if tree.get("tree_state") in ("aborted_low_grade", "halted_by_moderator"):
            continue
        walk(tree["prompt"])
    return found


def test_openassistant_sibling_ranks_are_recovered_from_the_pairs(data):
    sets = source_sets(data["preferences"]).filter(pl.col("source") == "oasst")
    raw = oasst_sibling_ranks()
    assert sets.height > 20
    checked = 0
    for row in sets.iter_rows(named=True):
        candidates = raw.get(row["prompt"][-1]["content"], [])
        matching = [e for e in candidates if sorted(e) == sorted(row["texts"])]
        if len(matching) != 1:
            continue
        expected = matching[0]
        want = dense_ranks([-float(expected[t]) for t in row["texts"]])
        assert row["ranks"] == want, row["texts"]
        assert row["origin"] == "human" and row["judge"] == "oasst:human"
        checked += 1
    assert checked >= 20


def test_ultrafeedback_completions_ranked_by_their_scores(data):
    sets = source_sets(data["preferences"]).filter(pl.col("source") == "ultrafeedback")
    raw = {}
    for line in (SAMPLES / "ultrafeedback.jsonl").read_text().splitlines():
        row = json.loads(line)
        raw[row["instruction"]] = {
            c["response"].strip(): c["overall_score"] for c in row["completions"]
        }
    checked = 0
    for row in sets.iter_rows(named=True):
        scores = raw.get(row["prompt"][-1]["content"])
        if scores is None:
            continue
        assert row["ranks"] == dense_ranks([scores[t] for t in row["texts"]])
        assert row["origin"] == "ai" and row["judge"] == "ultrafeedback:gpt-4"
        checked += 1
    assert checked > 10


def test_references_and_checkable_answers_come_from_the_conversations(data):
    merged, _ = merge_candidates(
        None, source_sets(data["preferences"]), data["conversations"], MergeCandidatesConfig()
    )
    by_source = {s: merged.filter(pl.col("source") == s) for s in ("oasst", "ultrafeedback")}
    oasst = by_source["oasst"].filter(pl.col("reference").is_not_null())
    assert oasst.height > 20
    # the reference is a human-written answer and is kept once even when it is also a sibling
    for row in oasst.iter_rows(named=True):
        texts = [c["text"].strip() for c in row["candidates"]]
        assert len(texts) == len(set(texts))
        assert row["reference"].strip() in texts
    uf = by_source["ultrafeedback"]
    # UltraFeedback answers are model-written: a reference only comes from another source
    # that has the same prompt (the synthetic chat and FLAN copies of a task)
    human = data["conversations"].filter(~pl.col("source").is_in(["ultrafeedback", "hh"]))
    written = {
        (m[0]["content"], m[-1]["content"]) for m in human["messages"].to_list() if len(m) == 2
    }
    with_reference = uf.filter(pl.col("reference").is_not_null())
    assert with_reference.height < uf.height
    for row in with_reference.iter_rows(named=True):
        assert (row["prompt"][0]["content"], row["reference"]) in written
    synthetic = uf.filter(pl.col("answer").is_not_null())
    raw = [
        json.loads(x)
        for x in (SAMPLES / "synthetic_ultrafeedback.jsonl").read_text().split("\n")
        if x
    ]
    answers = {r["instruction"]: r["correct_answers"][0] for r in raw}
    assert synthetic.height > 300
    for row in synthetic.iter_rows(named=True):
        assert answers[row["prompt"][0]["content"]] == row["answer"]


def write_model_candidates(path, prompts: pl.DataFrame, texts_for) -> None:
    """candidates.parquet exactly as training.candidates writes it (its pyarrow schema)."""
    rows = []
    for row in prompts.iter_rows(named=True):
        found = []
        for i, text in enumerate(texts_for(row)):
            sampling = json.dumps({"sample": i, "seed": 0})
            found.append(
                {
                    "candidate_id": candidate_id("model", "ckpt", sampling, text),
                    "text": text,
                    "origin": "model",
                    "model": "ckpt",
                    "sampling": sampling,
                }
            )
        rows.append({**row, "reference": None, "answer": None, "candidates": found})
    pq.write_table(pa.Table.from_pylist(rows, schema=CANDIDATES_SCHEMA), path)


def test_model_candidates_merge_with_references_answers_and_source_sets(data, tmp_path):
    chat = data["chat"].conversations.head(5)
    prompts = prompt_rows(chat)
    reference = {r["id"]: r["messages"][-1]["content"] for r in chat.iter_rows(named=True)}
    path = tmp_path / "candidates.parquet"
    # the second sample repeats the reference answer (with a trailing space): kept once
    write_model_candidates(path, prompts, lambda r: ["I do not know.", reference[r["id"]] + " "])
    model = read_candidates(path)
    merged, report = merge_candidates(model, None, data["conversations"])
    assert merged.schema == CANDIDATES
    assert merged.height == 5 and report["duplicates_removed"] == 5
    tasks = {json.loads(m)["task"] for m in chat["meta"]}
    for row in merged.iter_rows(named=True):
        assert row["answer"] == reference[row["id"]]
        assert row["reference"] == reference[row["id"]]
        assert row["task"] in tasks
        origins = [c["origin"] for c in row["candidates"]]
        assert origins == ["reference", "model"]
        assert row["candidates"][1]["model"] == "ckpt"


def test_flan_synthetic_targets_are_checkable_answers(data):
    flan = data["conversations"].filter(pl.col("source") == "flan")
    prompts = prompt_rows(flan.head(3))
    model = pl.DataFrame(
        [
            {
                **r,
                "reference": None,
                "answer": None,
                "task": None,
                "candidates": [
                    {
                        "candidate_id": str(i),
                        "text": f"guess {i}",
                        "origin": "model",
                        "model": "m",
                        "sampling": "{}",
                    }
                    for i in range(2)
                ],
            }
            for r in prompts.iter_rows(named=True)
        ],
        schema=CANDIDATES,
    )
    merged, _ = merge_candidates(model, None, data["conversations"])
    for row, conv in zip(
        merged.iter_rows(named=True), flan.head(3).iter_rows(named=True), strict=True
    ):
        assert row["answer"] == conv["messages"][-1]["content"]
        assert row["task"] == json.loads(conv["meta"])["task_name"].removeprefix("synthetic_")
        assert len(row["candidates"]) == 3


def test_source_rankings_use_the_merged_candidate_ids(data):
    sets = source_sets(data["preferences"])
    merged, _ = merge_candidates(None, sets, data["conversations"])
    rankings = source_rankings(sets, merged)
    assert rankings.schema == RANKINGS
    assert rankings.height == sets.height
    ids = {
        r["id"]: {c["candidate_id"]: c["text"] for c in r["candidates"]}
        for r in merged.iter_rows(named=True)
    }
    origins = defaultdict(int)
    for row in rankings.iter_rows(named=True):
        known = ids[row["id"]]
        assert all(known[c] == t for c, t in zip(row["candidate_ids"], row["texts"], strict=True))
        assert min(row["ranks"]) == 1
        origins[row["origin"]] += 1
    assert set(origins) == {"human", "ai"}


def test_caps_and_small_sets():
    prompt = [{"role": "user", "content": "q"}]
    model = pl.DataFrame(
        [
            {
                "id": "p1",
                "source": "s",
                "prompt": prompt,
                "reference": None,
                "answer": None,
                "task": None,
                "candidates": [
                    {
                        "candidate_id": str(i),
                        "text": f"t{i}",
                        "origin": "model",
                        "model": "m",
                        "sampling": "{}",
                    }
                    for i in range(12)
                ],
            },
            {
                "id": "p2",
                "source": "s",
                "prompt": [{"role": "user", "content": "r"}],
                "reference": None,
                "answer": None,
                "task": None,
                "candidates": [
                    {
                        "candidate_id": "x",
                        "text": "same",
                        "origin": "model",
                        "model": "m",
                        "sampling": "{}",
                    },
                    {
                        "candidate_id": "y",
                        "text": "same",
                        "origin": "model",
                        "model": "m",
                        "sampling": "{}",
                    },
                ],
            },
        ],
        schema=CANDIDATES,
    )
    merged, report = merge_candidates(model, None, None)
    assert merged["id"].to_list() == ["p1"]
    assert merged["candidates"].list.len().to_list() == [9]
    assert report == {
        "sets": 1,
        "duplicates_removed": 1,
        "cut_to_max": 3,
        "too_few_candidates": 1,
        "candidates": 9,
    }
    with pytest.raises(ValueError, match="min_candidates"):
        MergeCandidatesConfig(min_candidates=1)
