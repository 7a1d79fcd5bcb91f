"""A judge panel votes with what its members said, not only with their ranks: a pair a member's
presentation orders disagreed on is that member's tie, a pairwise member's own verdicts decide
its pairs, and the panel's rankings row tells the pairs stage which of its pairs the vote backs.
Each test runs the real path: candidates table -> panel -> rankings table (``judge_candidates``)
-> ``rankings_to_pairs``."""

from __future__ import annotations

import json

import polars as pl
import pytest

from curation.feedback.pairs import PairsConfig, rankings_to_pairs
from curation.feedback.schema import CANDIDATES
from curation.judge import JudgePanel, RankResult
from curation.judge.tables import judge_candidates

Said = tuple[list[int], dict]  # a member's ranks and meta on one candidate set


class Member:
    """A judge that says given things: ranks and meta (``disagreed_pairs``, ``preferred_pairs``)
    per prompt id, the way ``OpenAIJudge`` records them."""

    def __init__(self, name: str, said: dict[str, Said]) -> None:
        self.name, self.said = name, said
        self.summary = {"cost": 0.0}

    def rank(self, requests):
        results = []
        for request in requests:
            ranks, meta = self.said[request.prompt_id]
            ids = request.candidate_ids
            results.append(RankResult(request.prompt_id, ids, ranks, "ok", None, self.name, meta))
        return results


def table(k: int, prompts: tuple[str, ...] = ("p0",)) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "id": prompt,
                "source": "synthetic_chat",
                "prompt": [{"role": "user", "content": f"Explain {prompt}."}],
                "reference": None,
                "answer": None,
                "task": None,
                "candidates": [
                    {
                        "candidate_id": f"c{i}",
                        "text": f"answer {i} to {prompt}",
                        "origin": "model",
                        "model": "ckpt",
                        "sampling": "{}",
                    }
                    for i in range(k)
                ],
            }
            for prompt in prompts
        ],
        schema=CANDIDATES,
    )


def pairs_of(panel: JudgePanel, k: int, config: PairsConfig | None = None) -> set[tuple]:
    """(better, worse) candidate indices of the preference pairs the pairs stage makes of the
    panel's rankings table."""
    candidates = table(k)
    rankings = judge_candidates(candidates, panel)
    pairs = rankings_to_pairs(rankings, candidates, config or PairsConfig()).pairs
    return {
        tuple(int(cid[1:]) for cid in source_id.split(":")[1].split(">"))
        for source_id in pairs["source_id"]
    }


def ids(*pairs: tuple[int, int]) -> list[list[str]]:
    return [[f"c{a}", f"c{b}"] for a, b in pairs]


# --- borda -----------------------------------------------------------------------------------


def test_borda_a_pair_no_member_decided_is_a_tie_however_the_points_fall():
    # "listwise" ordered c0 above c1 only because of where they were shown (its orders
    # disagreed on the pair); "plain" ties them. Borda points still put c0 above c1.
    listwise = Member("listwise", {"p0": ([1, 2, 3], {"disagreed_pairs": ids((0, 1))})})
    plain = Member("plain", {"p0": ([1, 1, 3], {})})
    panel = JudgePanel([listwise, plain], vote="borda")
    assert pairs_of(panel, 3) == {(0, 2), (1, 2)}
    (row,) = judge_candidates(table(3), panel).to_dicts()
    assert row["ranks"] == [1, 2, 3]  # the ranks stay Borda's
    assert json.loads(row["meta"])["disagreed_pairs"] == ids((0, 1))
    # best versus worst never picks the tie either: here its best and worst are decided
    assert pairs_of(panel, 3, PairsConfig("best_vs_worst")) == {(0, 2)}
    # one member deciding the pair is enough for the points to order it
    decided = Member("decided", {"p0": ([1, 2, 3], {})})
    assert pairs_of(JudgePanel([listwise, decided]), 3) == {(0, 1), (0, 2), (1, 2)}


def test_borda_never_reverses_the_members_weighted_verdicts_on_a_pair():
    # Two of three say c0 > c1; the third puts c0 last, and its points lift c1 above c0.
    # The panel asked about exactly c0 and c1 said c0: the pair is a tie, not c1 > c0.
    members = [
        Member("a", {"p0": ([1, 2, 3, 4], {})}),
        Member("b", {"p0": ([1, 2, 3, 4], {})}),
        Member("c", {"p0": ([4, 1, 2, 3], {})}),
    ]
    panel = JudgePanel(members)
    (row,) = judge_candidates(table(4), panel).to_dicts()
    assert row["ranks"] == [2, 1, 3, 4]
    made = pairs_of(panel, 4)
    assert (1, 0) not in made and (0, 1) not in made
    assert made == {(0, 2), (0, 3), (1, 2), (1, 3), (2, 3)}
    # where the decisions balance, the points break the tie: that is Borda's whole point
    split = [Member("a", {"p0": ([1, 3, 2], {})}), Member("b", {"p0": ([2, 1, 3], {})})]
    assert (0, 1) in pairs_of(JudgePanel(split), 3)


# --- majority --------------------------------------------------------------------------------

# A pairwise judge's consistent verdicts over four answers, a cycle c0 > c1 > c2 > c0 among
# them: its wins-minus-losses ranks are [3, 1, 1, 3], which put c1 above c0 against its verdict.
BEATS = {(0, 1), (2, 0), (3, 0), (1, 2), (1, 3), (2, 3)}


def pairwise_member(name: str = "pairwise") -> Member:
    return Member(name, {"p0": ([3, 1, 1, 3], {"preferred_pairs": ids(*sorted(BEATS))})})


def test_majority_respects_a_pairwise_members_verdict_its_ranks_reverse():
    # "listwise" (weight 1) says c1 > c0; the pairwise member (weight 2) said c0 > c1.
    listwise = Member("listwise", {"p0": ([2, 1, 3, 4], {})})
    panel = JudgePanel([pairwise_member(), listwise], weights=[2, 1], vote="majority")
    assert pairs_of(panel, 4) == BEATS
    (row,) = judge_candidates(table(4), panel).to_dicts()
    meta = json.loads(row["meta"])
    assert {tuple(int(c[1:]) for c in pair) for pair in meta["preferred_pairs"]} == BEATS
    assert meta["judges"]["pairwise"]["preferred_pairs"] == ids(*sorted(BEATS))


def test_majority_counts_a_disagreed_pair_as_no_vote():
    # "biased" ranks c1 above c0 only by position; "sure" says c0 > c1. Read from ranks the
    # two would cancel out; read from what they said, "sure" alone decides.
    biased = Member("biased", {"p0": ([2, 1, 3], {"disagreed_pairs": ids((0, 1))})})
    sure = Member("sure", {"p0": ([1, 2, 3], {})})
    panel = JudgePanel([biased, sure], vote="majority")
    assert pairs_of(panel, 3) == {(0, 1), (0, 2), (1, 2)}
    # two decisions that balance are a tie: no pair either way
    other = Member("other", {"p0": ([2, 1, 3], {})})
    assert pairs_of(JudgePanel([sure, other], vote="majority"), 3) == {(0, 2), (1, 2)}


# --- agreement -------------------------------------------------------------------------------


def test_kappa_counts_a_disagreed_pair_as_a_tie_label():
    # The same ranks on both sets; on p0 member "a" disowned c0 vs c1 (its orders disagreed).
    # Labels (a): 0, +1, +1, -1, -1, -1; (b): +1, +1, +1, -1, -1, -1. Agreement 5/6, chance
    # (2*3 + 3*3) / 36, kappa (30 - 15) / (36 - 15) = 5/7.
    a = Member(
        "a",
        {"p0": ([1, 2, 3], {"disagreed_pairs": ids((0, 1))}), "p1": ([3, 2, 1], {})},
    )
    b = Member("b", {"p0": ([1, 2, 3], {}), "p1": ([3, 2, 1], {})})
    panel = JudgePanel([a, b])
    judge_candidates(table(3, ("p0", "p1")), panel)
    agreement = panel.summary["agreement"]["pairs"]["a|b"]
    assert agreement["pairs"] == 6
    assert agreement["agreement"] == pytest.approx(5 / 6)
    assert agreement["kappa"] == pytest.approx(5 / 7)


def test_kappa_reads_a_pairwise_members_verdicts_not_its_ranks():
    # Agreeing with the pairwise member's verdicts is full agreement, whatever its ranks say.
    agrees = Member("agrees", {"p0": ([1, 2, 3, 4], {"preferred_pairs": ids(*sorted(BEATS))})})
    panel = JudgePanel([pairwise_member(), agrees])
    judge_candidates(table(4), panel)
    agreement = panel.summary["agreement"]["pairs"]["pairwise|agrees"]
    assert agreement["agreement"] == 1.0 and agreement["kappa"] == pytest.approx(1.0)
