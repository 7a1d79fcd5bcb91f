"""Rankings → preference pairs (strategies, margins, ties, origin and judge kept) and the
human/AI mix of the preference dataset, through real Parquet files."""

import json
from itertools import combinations

import polars as pl
import pytest

from curation.datasets import ExportConfig, export, preference_rows
from curation.feedback.pairs import (
    MixConfig,
    PairsConfig,
    mix_preferences,
    ranked_pairs,
    rankings_to_pairs,
)
from curation.feedback.schema import CANDIDATES, rankings_frame
from curation.schema import PREFERENCES, stable_id

PROMPT = [{"role": "user", "content": "Name a colour."}]


def candidates(n_prompts: int = 3, k: int = 4) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "id": f"p{p}",
                "source": "synthetic_chat",
                "prompt": [{"role": "user", "content": f"Question {p}?"}],
                "reference": None,
                "answer": None,
                "task": None,
                "candidates": [
                    {
                        "candidate_id": f"p{p}c{i}",
                        "text": f"answer {i} to {p}",
                        "origin": "model",
                        "model": "ckpt",
                        "sampling": "{}",
                    }
                    for i in range(k)
                ],
            }
            for p in range(n_prompts)
        ],
        schema=CANDIDATES,
    )


def ranking(prompt: str, ranks, judge="judge-a", origin="ai", status="ok", consistent=True):
    k = len(ranks) if ranks is not None else 4
    return {
        "id": prompt,
        "judge": judge,
        "origin": origin,
        "candidate_ids": [f"{prompt}c{i}" for i in range(k)],
        "texts": [f"answer {i} to {prompt[1:]}" for i in range(k)],
        "ranks": ranks,
        "status": status,
        "consistent": consistent,
        "meta": json.dumps(
            {"model": "judge-model", "template": "listwise", "template_version": "v3"}
        ),
    }


@pytest.mark.parametrize(
    ("ranks", "strategy", "margin", "expected"),
    [
        ([1, 2, 3, 4], "all", 1, 6),  # C(4,2)
        ([4, 3, 2, 1], "all", 1, 6),
        ([1, 2, 3, 4], "best_vs_worst", 1, 1),
        ([1, 2, 3, 4], "all", 2, 3),  # rank gaps 2, 3, 2
        ([1, 2, 3, 4], "all", 3, 1),
        ([1, 1, 2, 3], "all", 1, 5),  # one tie dropped
        ([1, 1, 1, 1], "all", 1, 0),
        ([1, 1, 1, 1], "best_vs_worst", 1, 0),
        ([1, 2, 2, 3, 4, 5, 6, 7, 8], "all", 1, 35),  # C(9,2) - 1 tie
        ([1, 2], "best_vs_worst", 2, 0),
    ],
)
def test_pair_counts_per_strategy(ranks, strategy, margin, expected):
    pairs, _ = ranked_pairs(ranks, strategy, margin)
    assert len(pairs) == expected
    assert all(ranks[b] < ranks[w] and ranks[w] - ranks[b] >= margin for b, w in pairs)
    assert len(set(pairs)) == len(pairs)


def test_rankings_become_trl_pairs_with_origin_and_judge(tmp_path):
    table = rankings_frame(
        [
            ranking("p0", [2, 1, 4, 3]),
            ranking("p1", [1, 1, 2, 3], judge="label_studio:7", origin="human", consistent=None),
            ranking("p2", None, status="unparseable", consistent=None),
            ranking("p9", [1, 2, 3, 4]),  # no such prompt
        ]
    )
    path = tmp_path / "rankings.parquet"
    table.write_parquet(path)
    result = rankings_to_pairs(pl.read_parquet(path), candidates())
    pairs = result.pairs
    assert pairs.schema == PREFERENCES
    assert result.counts == {
        "rankings": 4,
        "rankings_used": 2,
        "skipped_status": 1,
        "skipped_inconsistent": 0,
        "skipped_unknown_prompt": 1,
        "tied": 1,
        "order_disagreements": 0,
        "same_text": 0,
        "below_margin": 0,
        "pairs": 11,
    }
    ai = pairs.filter(pl.col("origin") == "ai")
    assert ai.height == 6
    assert {j for j in ai["judge"]} == {
        json.dumps(
            {
                "judge": "judge-a",
                "model": "judge-model",
                "template": "listwise",
                "template_version": "v3",
            },
            sort_keys=True,
        )
    }
    human = pairs.filter(pl.col("origin") == "human")
    assert human.height == 5 and human["judge"].null_count() == 5
    assert all(p[0] == "label_studio:7" for p in human["provenance"].struct.field("ids"))
    # the better-ranked answer is chosen, margin = rank difference
    row = ai.filter(pl.col("source_id") == "p0:p0c1>p0c2").row(0, named=True)
    assert row["chosen"] == [{"role": "assistant", "content": "answer 1 to 0"}]
    assert row["rejected"] == [{"role": "assistant", "content": "answer 2 to 0"}]
    assert row["margin"] == 3.0 and row["prompt"] == [{"role": "user", "content": "Question 0?"}]
    assert row["id"] == stable_id("feedback", "judge-a\x1fp0:p0c1>p0c2")
    assert pairs["id"].n_unique() == pairs.height
    # the same rankings give the same ids; the pairs export as a TRL preference set
    again = rankings_to_pairs(table, candidates())
    assert again.pairs["id"].to_list() == pairs["id"].to_list()
    summary = export("preference", preference_rows(pairs), tmp_path, ExportConfig(save_hf=False))
    assert summary["rows"]["train"] + summary["rows"]["test"] == 11


def test_best_vs_worst_margin_and_consistency_filters():
    table = rankings_frame(
        [
            ranking("p0", [1, 2, 3, 4]),
            ranking("p1", [1, 2, 2, 2], consistent=False),
            ranking("p2", [1, 1, 2, 2]),
        ]
    )
    best = rankings_to_pairs(table, candidates(), PairsConfig(strategy="best_vs_worst"))
    assert best.pairs["source_id"].to_list() == ["p0:p0c0>p0c3", "p1:p1c0>p1c1", "p2:p2c0>p2c2"]
    strict = rankings_to_pairs(
        table, candidates(), PairsConfig(min_margin=2, require_consistent=True)
    )
    assert strict.pairs["source_id"].to_list() == ["p0:p0c0>p0c2", "p0:p0c0>p0c3", "p0:p0c1>p0c3"]
    assert strict.counts["skipped_inconsistent"] == 1
    assert strict.counts["tied"] == 2 and strict.counts["below_margin"] == 3 + 4
    with pytest.raises(ValueError, match="strategy"):
        PairsConfig(strategy="random")


def pairs_frame(origin: str, n: int) -> pl.DataFrame:
    rows = [
        {
            "id": stable_id(origin, str(i)),
            "source": "s",
            "source_id": str(i),
            "lang": "en",
            "prompt": PROMPT,
            "chosen": [{"role": "assistant", "content": f"good {i}"}],
            "rejected": [{"role": "assistant", "content": f"bad {i}"}],
            "origin": origin,
            "margin": 1.0,
            "judge": None,
            "source_ids": [str(i)],
            "provenance": {"file": "f", "line": i, "ids": []},
        }
        for i in range(n)
    ]
    return pl.DataFrame(rows, schema=PREFERENCES)


@pytest.mark.parametrize(
    ("fraction", "cap", "human", "ai"),
    [
        (None, None, 30, 90),
        (0.5, None, 30, 30),
        (0.25, None, 30, 90),
        (0.1, None, 10, 90),
        (0.4, 50, 20, 30),
        (1.0, None, 30, 0),
        (0.0, None, 0, 90),
        (0.9, None, 30, 3),
    ],
)
def test_mix_reaches_the_requested_share(tmp_path, fraction, cap, human, ai):
    for name, frame in (("human", pairs_frame("human", 30)), ("ai", pairs_frame("ai", 90))):
        frame.write_parquet(tmp_path / f"{name}.parquet")
    frames = [pl.read_parquet(tmp_path / "human.parquet"), pl.read_parquet(tmp_path / "ai.parquet")]
    mixed, report = mix_preferences(frames, MixConfig(human_fraction=fraction, max_pairs=cap))
    assert report["selected"] == {"human": human, "ai": ai}
    assert report["available"] == {"human": 30, "ai": 90}
    counts = dict(mixed.group_by("origin").len().iter_rows())
    assert counts.get("human", 0) == human and counts.get("ai", 0) == ai
    assert mixed.schema == PREFERENCES and mixed["id"].n_unique() == mixed.height


def test_mix_is_deterministic_under_the_seed_and_keeps_input_order():
    frames = [pairs_frame("human", 30), pairs_frame("ai", 90)]
    config = MixConfig(human_fraction=0.5, max_pairs=20, seed=3)
    first, _ = mix_preferences(frames, config)
    second, _ = mix_preferences(list(reversed(frames)), config)
    assert sorted(first["id"]) == sorted(second["id"])
    other, _ = mix_preferences(frames, MixConfig(human_fraction=0.5, max_pairs=20, seed=4))
    assert sorted(other["id"]) != sorted(first["id"])
    position = {i: n for n, i in enumerate(pl.concat(frames)["id"])}
    assert [position[i] for i in first["id"]] == sorted(position[i] for i in first["id"])
    # duplicates across inputs are kept once
    doubled, report = mix_preferences([frames[0], frames[0]])
    assert doubled.height == 30 and report["pairs"] == 30


def test_all_pairs_of_every_k():
    for k in range(2, 10):
        pairs, _ = ranked_pairs(list(range(1, k + 1)))
        assert len(pairs) == len(list(combinations(range(k), 2)))
