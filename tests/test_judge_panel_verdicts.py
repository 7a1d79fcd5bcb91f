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
from curation.judge.tables import failed_sets, judge_candidates

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


# --- majority keeps rank margins unless a cycle contradicts them -------------------------------


def test_majority_keeps_rank_margins_when_its_ranks_agree_with_the_vote():
    # Every pair decided, no cycle: the Copeland ranks [1, 2, 3, 4] say what the vote said, so
    # the pairs keep rank margins like any ranking judge's (min_margin=2 keeps three of six).
    members = [
        Member("a", {"p0": ([1, 2, 3, 4], {})}),
        Member("b", {"p0": ([1, 2, 3, 4], {})}),
        Member("c", {"p0": ([2, 1, 3, 4], {})}),
    ]
    panel = JudgePanel(members, vote="majority")
    (row,) = judge_candidates(table(4), panel).to_dicts()
    assert row["ranks"] == [1, 2, 3, 4] and "preferred_pairs" not in json.loads(row["meta"])
    assert pairs_of(panel, 4, PairsConfig(min_margin=2)) == {(0, 2), (0, 3), (1, 3)}
    assert made(panel, 4, PairsConfig("best_vs_worst"))[0] == [("c0>c3", 3.0)]


def test_majority_ties_what_its_vote_tied_and_counts_the_members_disagreements():
    # "pairwise" and "listwise" oppose each other on c0 vs c1, c2 and c3: the vote ties those.
    # Copeland ranks [2, 1, 2, 4] separate c0|c1 and c0|c3 (so they must be listed as ties)
    # and put c0 and c2 level (a tie already, listed so the pairs stage counts it).
    pairwise = Member("pairwise", {"p0": ([3, 1, 1, 3], {"preferred_pairs": ids(*sorted(BEATS))})})
    listwise = Member("listwise", {"p0": ([2, 1, 3, 4], {})})
    panel = JudgePanel([pairwise, listwise], vote="majority")
    (row,) = judge_candidates(table(4), panel).to_dicts()
    assert row["ranks"] == [2, 1, 2, 4]
    pairs, counts = made(panel, 4)
    assert pairs == [("c1>c2", 1.0), ("c1>c3", 3.0), ("c2>c3", 2.0)]
    assert counts["order_disagreements"] == 3 and counts["tied"] == 3
    # A cycle: the Copeland ranks tie everything, so the vote's decisions are listed and decide;
    # the pairs "heavy" balanced out are ties counted as the members' disagreements.
    cycle = [
        Member("a", {"p0": ([1, 2, 3, 4], {})}),
        Member("b", {"p0": ([3, 1, 2, 4], {})}),
        Member("c", {"p0": ([2, 3, 1, 4], {})}),
        Member("heavy", {"p0": ([2, 2, 2, 1], {})}),
    ]
    panel = JudgePanel(cycle, weights=[1, 1, 1, 3], vote="majority")
    (row,) = judge_candidates(table(4), panel).to_dicts()
    assert row["ranks"] == [1, 1, 1, 1]
    assert json.loads(row["meta"])["preferred_pairs"] == ids((0, 1), (2, 0), (1, 2))
    pairs, counts = made(panel, 4)
    assert pairs == [("c0>c1", 1.0), ("c1>c2", 1.0), ("c2>c0", 1.0)]
    assert counts["order_disagreements"] == 3


# --- one usable member is that member ----------------------------------------------------------


class Failing:
    """A judge whose every call failed."""

    def __init__(self, name: str) -> None:
        self.name, self.summary = name, {"cost": 0.0}

    def rank(self, requests):
        return [
            RankResult(q.prompt_id, q.candidate_ids, None, "error", None, self.name, {})
            for q in requests
        ]


def made(judge, k: int, config: PairsConfig | None = None) -> tuple[list, dict]:
    """(source pair, margin) of every pair the pairs stage makes of ``judge``'s rankings, and
    the counts that say what became of the other pairs."""
    candidates = table(k)
    result = rankings_to_pairs(
        judge_candidates(candidates, judge), candidates, config or PairsConfig()
    )
    pairs = sorted(
        (source_id.split(":")[1], margin)
        for source_id, margin in zip(result.pairs["source_id"], result.pairs["margin"], strict=True)
    )
    kept = ("rankings_used", "tied", "order_disagreements", "below_margin", "pairs")
    return pairs, {key: result.counts[key] for key in kept}


CONFIGS = (PairsConfig(), PairsConfig(min_margin=2), PairsConfig("best_vs_worst"))
# pairwise: its consistent verdicts c0 > c1 > c2 > c0, all above c3; wins minus losses [1,1,1,4]
CYCLE = ids((0, 1), (1, 2), (2, 0), (0, 3), (1, 3), (2, 3))


@pytest.mark.parametrize(
    "said",
    [
        pytest.param(([1, 2, 3, 4], {}), id="listwise"),
        pytest.param(([1, 2, 3, 4], {"disagreed_pairs": ids((0, 1), (2, 3))}), id="disagreed"),
        pytest.param(([1, 1, 3, 4], {"disagreed_pairs": ids((0, 1), (1, 3))}), id="disagreed_ties"),
        pytest.param(([1, 1, 1, 4], {"disagreed_pairs": [], "preferred_pairs": CYCLE}), id="cycle"),
    ],
)
def test_a_panel_with_one_usable_member_makes_that_members_pairs(said):
    alone = {config: made(Member("m", {"p0": said}), 4, config) for config in CONFIGS}
    for vote in ("borda", "majority"):
        for config in CONFIGS:
            one = JudgePanel([Member("m", {"p0": said})], vote=vote)
            assert made(one, 4, config) == alone[config], (vote, config)
            # the others failed on this set: what is left is still the member alone
            rest = JudgePanel([Failing("x"), Member("m", {"p0": said}), Failing("y")], vote=vote)
            assert made(rest, 4, config) == alone[config], (vote, config)
    (row,) = judge_candidates(table(4), JudgePanel([Member("m", {"p0": said})])).to_dicts()
    meta = json.loads(row["meta"])
    assert row["ranks"] == said[0] and meta["voters"] == 1 and meta["vote"] == "borda"
    assert {k: meta[k] for k in said[1]} == said[1] and set(said[1]) == set(meta) & {
        "preferred_pairs",
        "disagreed_pairs",
    }


# --- Borda and float rounding ------------------------------------------------------------------


def test_borda_weights_that_balance_in_decimal_are_a_tie():
    # 0.1 + 0.2 for c0 against 0.3 for c1 is the same tie as 1 + 2 against 3, although in
    # floats 0.1 + 0.2 > 0.3: no pair, and equal ranks.
    members = [
        Member("a", {"p0": ([1, 2], {})}),
        Member("b", {"p0": ([1, 2], {})}),
        Member("c", {"p0": ([2, 1], {})}),
    ]
    for weights in ([0.1, 0.2, 0.3], [1, 2, 3]):
        panel = JudgePanel(members, weights=weights, vote="borda")
        (row,) = judge_candidates(table(2), panel).to_dicts()
        assert row["ranks"] == [1, 1], weights
        assert made(panel, 2)[0] == [], weights


# --- members are read by candidate id ------------------------------------------------------------


class Reordered(Member):
    """Answers with the candidates in reverse order (ranks given in that order), or with only
    the first ``keep`` of them reversed."""

    def __init__(self, name: str, ranks: list[int], keep: int | None = None) -> None:
        super().__init__(name, {})
        self.ranks, self.keep = ranks, keep

    def rank(self, requests):
        results = []
        for request in requests:
            ids_ = list(reversed(request.candidate_ids))[: self.keep]
            results.append(
                RankResult(request.prompt_id, ids_, self.ranks, "ok", None, self.name, {})
            )
        return results


def test_a_member_listing_the_candidates_in_another_order_is_read_by_id():
    # It ranks c2 first (it lists c2, c1, c0): the panel must too, under both votes.
    reordered = Reordered("r", [1, 2, 3])
    alone = made(reordered, 3)
    assert alone[0] == [("c1>c0", 1.0), ("c2>c0", 2.0), ("c2>c1", 1.0)]
    for vote in ("borda", "majority"):
        assert made(JudgePanel([reordered], vote=vote), 3) == alone, vote
        # and it agrees fully with a member that said the same in the request's order
        same = Member("same", {"p0": ([3, 2, 1], {})})
        panel = JudgePanel([reordered, same], vote=vote)
        assert made(panel, 3)[0] == alone[0], vote
        agreement = panel.summary["agreement"]["pairs"]["r|same"]
        assert agreement["pairs"] == 3 and agreement["agreement"] == 1.0


def test_a_member_ranking_other_candidates_than_asked_is_left_out():
    # It ranks only c2 and c1 of three: no vote, and the row says why.
    subset = Reordered("subset", [1, 2], keep=2)
    other = Member("other", {"p0": ([1, 2, 3], {})})
    for vote in ("borda", "majority"):
        panel = JudgePanel([subset, other], vote=vote)
        assert made(panel, 3) == made(other, 3), vote
        (row,) = judge_candidates(table(3), panel).to_dicts()
        meta = json.loads(row["meta"])
        assert meta["voters"] == 1 and "c1" in meta["judges"]["subset"]["left_out"]
    rankings = judge_candidates(table(3), JudgePanel([subset]))
    (row,) = rankings.to_dicts()
    assert row["status"] == "error" and row["ranks"] is None
    # the failed set names why: the member answered (status ok) about other candidates
    ((prompt, reason),) = failed_sets(rankings)
    assert prompt == "p0" and "'subset': \"left out: ranked candidates ['c2', 'c1']" in reason
