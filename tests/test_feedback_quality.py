"""Judge quality figures on hand-computed examples, Kendall's tau-b against scipy, and the
OpenAssistant human ranks and synthetic answers of the sample data as references."""

import json
import random

import polars as pl
import pytest
from scipy.stats import kendalltau

from assets.resources import SAMPLES
from curation.feedback.candidates import merge_candidates, source_rankings, source_sets
from curation.feedback.quality import is_correct, judge_quality, kendall_tau_b
from curation.feedback.schema import CANDIDATES, rankings_frame
from curation.ingest import ingest


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [
        ([1, 2, 3], [1, 2, 3], 1.0),
        ([1, 2, 3], [3, 2, 1], -1.0),
        ([1, 2, 3], [1, 3, 2], 1 / 3),  # C=2, D=1, no ties
        ([1, 1, 2], [1, 2, 3], 2 / 3**0.5 / 2**0.5 * 1),  # C=2, ties_x=1: 2/sqrt(2*3)
        ([1, 1, 1], [1, 2, 3], None),
    ],
)
def test_kendall_tau_b_by_hand(x, y, expected):
    value = kendall_tau_b(x, y)
    assert value == pytest.approx(expected) if expected is not None else value is None


def test_kendall_tau_b_matches_scipy_with_ties():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(2, 9)
        x = [rng.randint(1, 4) for _ in range(n)]
        y = [rng.randint(1, 4) for _ in range(n)]
        ours = kendall_tau_b(x, y)
        theirs = kendalltau(x, y, variant="b").statistic
        if ours is None:
            assert theirs != theirs  # NaN
        else:
            assert ours == pytest.approx(theirs)


PROMPT = [{"role": "user", "content": "What is 6 * 7?"}]


def cand(cid: str, text: str, origin: str = "model") -> dict:
    return {"candidate_id": cid, "text": text, "origin": origin, "model": "m", "sampling": ""}


def hand_candidates() -> pl.DataFrame:
    return pl.DataFrame(
        [
            {  # human-ranked siblings
                "id": "h",
                "source": "oasst",
                "prompt": PROMPT,
                "reference": "ref answer",
                "answer": None,
                "task": None,
                "candidates": [
                    cand("a", "ref answer", "reference"),
                    cand("b", "bb"),
                    cand("c", "cccc", "dataset"),
                ],
            },
            {  # synthetic task with a checkable answer
                "id": "s",
                "source": "synthetic_chat",
                "prompt": PROMPT,
                "reference": None,
                "answer": "42",
                "task": "mul",
                "candidates": [cand("d", "42"), cand("e", "41"), cand("f", "The answer is 42.")],
            },
        ],
        schema=CANDIDATES,
    )


def judged(rid, ids, texts, ranks, status="ok", consistent=True):
    return {
        "id": rid,
        "judge": "j",
        "origin": "ai",
        "candidate_ids": ids,
        "texts": texts,
        "ranks": ranks,
        "status": status,
        "consistent": consistent,
        "meta": "{}",
    }


def test_quality_figures_by_hand():
    rankings = rankings_frame(
        [
            judged("h", ["a", "b", "c"], ["ref answer", "bb", "cccc"], [1, 3, 2]),
            judged(
                "s", ["d", "e", "f"], ["42", "41", "The answer is 42."], [2, 1, 2], consistent=False
            ),
            judged(
                "s",
                ["d", "e", "f"],
                ["42", "41", "The answer is 42."],
                None,
                status="unparseable",
                consistent=None,
            ),
        ]
    )
    references = rankings_frame(
        [
            {
                **judged("h", ["a", "b", "c"], ["ref answer", "bb", "cccc"], [1, 2, 3]),
                "judge": "oasst:human",
                "origin": "human",
                "consistent": None,
            }
        ]
    )
    summary, table = judge_quality(rankings, hand_candidates(), references)
    # against the human ranks: (a,b) agree, (a,c) agree, (b,c) disagree
    assert summary["reference_prompts"] == 1 and summary["reference_pairs"] == 3
    assert summary["reference_pairwise_accuracy"] == pytest.approx(2 / 3)
    assert summary["reference_kendall_tau"] == pytest.approx(1 / 3)
    # against the answer 42: d and f right, e wrong and ranked best; d and f tied
    assert summary["answer_prompts"] == 1 and summary["answer_pairs"] == 2
    assert summary["answer_pairwise_accuracy"] == 0.0
    assert summary["best_correct_rate"] == 0.0
    assert summary["answer_kendall_tau"] == pytest.approx(
        kendalltau([2, 1, 2], [1, 2, 1]).statistic
    )
    # consistency over rankings with a known check: one True, one False
    assert summary["consistency_rate"] == 0.5
    assert summary["status_ok"] == 2 and summary["status_unparseable"] == 1
    # ties: 1 of 6 candidate pairs; length: of the 5 decided pairs with different lengths
    assert summary["candidate_pairs"] == 6 and summary["tie_rate"] == pytest.approx(1 / 6)
    # h: a(10)>c(4) longer wins, a>b longer wins, c(4)>b(2) longer wins;
    # s: e(2)>d(2) same length (not counted), e(2)>f(17) shorter wins
    assert summary["length_decided_pairs"] == 4
    assert summary["length_bias"] == pytest.approx(3 / 4)
    # gap: on h the reference is ranked above the model output b
    assert summary["gap_prompts"] == 1 and summary["generation_judgment_gap"] == 0.0
    rows = {r["source"]: r for r in table.iter_rows(named=True)}
    assert rows["oasst"]["reference_pairwise_accuracy"] == pytest.approx(2 / 3)
    assert rows["synthetic_chat"]["rankings"] == 2
    assert rows["synthetic_chat"]["reference_pairwise_accuracy"] is None


def test_generation_judgment_gap_counts_model_outputs_over_the_reference():
    rankings = rankings_frame(
        [judged("h", ["a", "b", "c"], ["ref answer", "bb", "cccc"], [2, 1, 3])]
    )
    summary, _ = judge_quality(rankings, hand_candidates())
    assert summary["gap_prompts"] == 1 and summary["generation_judgment_gap"] == 1.0
    assert summary["reference_pairs"] == 0 and summary["reference_pairwise_accuracy"] is None


def test_case_sensitive_tasks_keep_their_case():
    assert is_correct("OCEAN", "uppercase", "OCEAN")
    assert not is_correct("OCEAN", "uppercase", "ocean")
    assert is_correct("thgil", "reverse", "Answer: THGIL")
    assert is_correct("42", None, "The answer is 42.")


@pytest.fixture(scope="module")
def sample_sets():
    oasst = ingest("oasst", [SAMPLES / "oasst_trees.jsonl"])
    uf = ingest("ultrafeedback", [SAMPLES / "synthetic_ultrafeedback.jsonl"])
    prefs = pl.concat([oasst.preferences, uf.preferences])
    sets = source_sets(prefs)
    merged, _ = merge_candidates(None, sets, pl.concat([oasst.conversations, uf.conversations]))
    return sets, merged


def length_judge(candidates: pl.DataFrame) -> pl.DataFrame:
    """A judge that always prefers the longer answer."""
    rows = []
    for row in candidates.iter_rows(named=True):
        texts = [c["text"] for c in row["candidates"]]
        order = sorted({len(t) for t in texts}, reverse=True)
        rows.append(
            judged(
                row["id"],
                [c["candidate_id"] for c in row["candidates"]],
                texts,
                [order.index(len(t)) + 1 for t in texts],
                consistent=None,
            )
        )
    return rankings_frame(rows)


def test_against_the_sample_human_ranks_and_synthetic_answers(sample_sets):
    sets, merged = sample_sets
    references = source_rankings(sets, merged)
    human = references.filter(pl.col("origin") == "human")
    # the human ranks scored against themselves are perfect
    perfect, _ = judge_quality(human, merged, human)
    assert perfect["reference_pairwise_accuracy"] == 1.0
    assert perfect["reference_kendall_tau"] == pytest.approx(1.0)
    assert perfect["reference_prompts"] == human.height
    # the source's own GPT-4 ranking of the synthetic completions puts right answers first
    ai = references.filter(pl.col("origin") == "ai")
    graded, _ = judge_quality(ai, merged)
    assert graded["answer_prompts"] > 300 and graded["answer_pairwise_accuracy"] == 1.0
    assert graded["best_correct_rate"] == 1.0
    # a length-loving judge is biased towards length by construction and worse on answers
    lengthy, table = judge_quality(length_judge(merged), merged, human)
    assert lengthy["length_bias"] == 1.0
    assert lengthy["answer_pairwise_accuracy"] < 0.9
    assert 0 <= lengthy["reference_pairwise_accuracy"] <= 1
    assert set(table["source"]) == {"oasst", "ultrafeedback"}
    assert json.dumps(lengthy)  # plain values, ready for asset metadata


def test_quality_scores_the_verdicts_pairs_are_made_from():
    """Ranks alone said more than the judge did: a pair its presentation orders disagreed on is
    a tie in the pairs stage, and a pairwise judge's own verdicts decide its pairs; judge quality
    read the ranks and counted both as decided."""
    from curation.feedback.pairs import rankings_to_pairs

    texts = ["ref answer", "bb", "cccc"]
    human = {
        **judged("h", ["a", "b", "c"], texts, [1, 2, 3]),
        "judge": "oasst:human",
        "origin": "human",
        "consistent": None,
    }
    # ranks put b over a and c; the orders disagreed on (a, b) and on (b, c)
    disagreed = judged("h", ["a", "b", "c"], texts, [2, 1, 3])
    disagreed["meta"] = json.dumps({"disagreed_pairs": [["a", "b"], ["b", "c"]]})
    summary, _ = judge_quality(
        rankings_frame([disagreed]), hand_candidates(), rankings_frame([human])
    )
    assert summary["tie_rate"] == pytest.approx(2 / 3)
    assert summary["reference_judge_ties"] == 2 and summary["reference_pairwise_accuracy"] == 1 / 3
    # the model answer b no longer counts as preferred over the reference a
    assert summary["generation_judgment_gap"] == 0.0
    # the same ties as the pairs stage: only (a, c) becomes a pair
    pairs = rankings_to_pairs(rankings_frame([disagreed]), hand_candidates()).pairs
    assert pairs["source_ids"].to_list() == [["h", "a", "c"]]

    # a pairwise judge: a > b and c > a agreed in every order (a cycle the ranks cannot hold)
    pairwise = judged("h", ["a", "b", "c"], texts, [1, 3, 1])
    pairwise["meta"] = json.dumps({"preferred_pairs": [["a", "b"], ["c", "a"]]})
    summary, _ = judge_quality(
        rankings_frame([pairwise]), hand_candidates(), rankings_frame([human])
    )
    assert summary["tie_rate"] == pytest.approx(1 / 3)  # (b, c): no verdict
    assert summary["reference_pairwise_accuracy"] == pytest.approx(1 / 3)  # a>b agrees, c>a not
    assert summary["reference_judge_ties"] == 1
