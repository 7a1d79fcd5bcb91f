"""A panel of judges and how much they agree.

Different judges (models, endpoints, rubrics) care about different things, so a panel ranks by
vote and reports agreement instead of trusting any one of them.

A member votes with what it said, not just with its ranks. An LLM judge's ranks can order a
pair its presentation orders disagreed on (position bias decided it, ``meta.disagreed_pairs``),
and a pairwise judge's Copeland ranks can reverse one of its own consistent verdicts when they
form a cycle (``meta.preferred_pairs``). So each member's verdict on a pair comes from
``aggregate.ranking_verdicts``, the rule the pairs stage and judge quality read rankings with,
and the panel writes its own ``meta`` so that the pairs stage makes of the panel's ranking what
the vote decided. Two votes:

- ``majority``: every pair is decided by the weighted tally of the members' verdicts (a tie adds
  nothing; a tie overall when the weights balance). Ranks follow wins minus losses (Copeland),
  which a cycle among the decisions can contradict, so the panel lists every decided pair in
  ``meta.preferred_pairs`` and the pairs come from those, as for a pairwise judge.
- ``borda``: each member gives a candidate (K - rank) points, times its weight; ranks follow the
  totals, so a member's second choice still counts. The points carry a member's whole ranking,
  including pairs it disowned, so the panel lists in ``meta.disagreed_pairs`` (ties downstream)
  the pairs the points separate although (1) no member decided them: the order would come from
  points earned against other candidates, or from a pair a member's orders disagreed on; or
  (2) the weighted decisions on that pair point the other way: the pair would become a training
  label that the panel, asked about exactly these two answers, rejected. A dropped pair costs a
  little data; a reversed one teaches the opposite preference. Where the members' decisions on
  a pair balance out, the points break the tie: that is what Borda is for, and no one's verdict
  is contradicted.

What follows downstream: a majority panel's pairs are verdicts, margin 1 like a pairwise judge's
(``PairsConfig.min_margin`` above 1 keeps none); a Borda panel's pairs keep rank margins, and
its unbacked pairs are counted with ``order_disagreements``. A panel of pairwise judges keeps
their verdicts best under ``majority``: Borda's points come from their Copeland ranks, so a
verdict those ranks reverse is dropped (rule 2) rather than kept.

Agreement is Cohen's kappa between every two judges over the same pairwise verdicts (first
better, second better, tie) on the requests both judged, so ties, disagreed pairs included, are
part of the agreement and chance agreement from a judge that ties everything is discounted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import combinations
from typing import Any, Literal

from curation.judge.aggregate import Pair, ranking_verdicts, verdict_signs
from curation.judge.types import Judge, RankRequest, RankResult, check_candidates, ranks_from_scores

VERDICT_FIELDS = ("preferred_pairs", "disagreed_pairs")


def cohens_kappa(first: Sequence[Any], second: Sequence[Any]) -> float | None:
    """Cohen's kappa of two raters' labels on the same items; None when it is undefined (no
    items, or both raters used one and the same label throughout, so chance explains all)."""
    if len(first) != len(second):
        raise ValueError(f"kappa needs labels on the same items: {len(first)} vs {len(second)}")
    n = len(first)
    if n == 0:
        return None
    observed = sum(1 for a, b in zip(first, second, strict=True) if a == b) / n
    left, right = Counter(first), Counter(second)
    expected = sum(left[label] * right[label] for label in left) / (n * n)
    if expected == 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def member_signs(result: RankResult) -> dict[Pair, int]:
    """+1 / -1 / 0 for every candidate pair (i < j) of a ranked result, as the pairs stage reads
    it: ``meta.preferred_pairs`` decide, else the ranks with ``meta.disagreed_pairs`` tied."""
    assert result.ranks is not None
    better = ranking_verdicts(result.meta or {}, result.candidate_ids, result.ranks)
    return verdict_signs(better, len(result.candidate_ids))


def pair_labels(result: RankResult) -> list[int]:
    """+1 / -1 / 0 for every candidate pair (i < j) of a ranked result (``member_signs``)."""
    signs = member_signs(result)
    return [signs[pair] for pair in sorted(signs)]


def agreement(results: dict[str, list[RankResult]]) -> dict[str, Any]:
    """Kappa and raw agreement for every two judges (keyed "a|b"), and their mean."""
    names = list(results)
    pairs: dict[str, dict[str, Any]] = {}
    for a, b in combinations(names, 2):
        left, right = [], []
        for ra, rb in zip(results[a], results[b], strict=True):
            if ra.status == "ok" and rb.status == "ok" and ra.candidate_ids == rb.candidate_ids:
                left += pair_labels(ra)
                right += pair_labels(rb)
        agree = sum(1 for x, y in zip(left, right, strict=True) if x == y)
        pairs[f"{a}|{b}"] = {
            "kappa": cohens_kappa(left, right),
            "agreement": agree / len(left) if left else None,
            "pairs": len(left),
        }
    kappas = [p["kappa"] for p in pairs.values() if p["kappa"] is not None]
    return {"pairs": pairs, "mean_kappa": sum(kappas) / len(kappas) if kappas else None}


def vote_tally(usable: Sequence[tuple[RankResult, float]]) -> tuple[dict[Pair, int], set[Pair]]:
    """The sign of the weighted sum of the members' verdicts on every pair (0 when they balance,
    within rounding of the weights), and the pairs at least one member did not call a tie."""
    totals: dict[Pair, float] = {}
    decided: set[Pair] = set()
    for result, weight in usable:
        for pair, sign in member_signs(result).items():
            totals[pair] = totals.get(pair, 0.0) + weight * sign
            if sign:
                decided.add(pair)
    scale = sum(weight for _, weight in usable)
    return {
        pair: 0 if abs(total) <= 1e-9 * scale else 1 if total > 0 else -1
        for pair, total in totals.items()
    }, decided


def borda_ties(ranks: Sequence[int], tally: dict[Pair, int], decided: set[Pair]) -> list[Pair]:
    """The pairs Borda ranks separate that the members' verdicts do not back: no member decided
    them, or the weighted decisions favour the other answer (see the module docstring)."""
    ties = []
    for (i, j), sign in sorted(tally.items()):
        if ranks[i] == ranks[j]:
            continue
        borda = 1 if ranks[i] < ranks[j] else -1
        if (i, j) not in decided or sign == -borda:
            ties.append((i, j))
    return ties


def panel_cost(judges: Sequence[Judge]) -> float | None:
    """The members' costs summed; None (unknown) when any member's is unknown."""
    costs = [getattr(judge, "summary", {}).get("cost", 0.0) for judge in judges]
    return None if any(cost is None for cost in costs) else float(sum(costs))


class JudgePanel:
    """``JudgePanel([judge, ...], weights=None, vote="borda")``; judges need distinct names."""

    def __init__(
        self,
        judges: Sequence[Judge],
        weights: Sequence[float] | None = None,
        vote: Literal["borda", "majority"] = "borda",
        name: str = "panel",
    ) -> None:
        if not judges:
            raise ValueError("a panel needs at least one judge")
        names = [j.name for j in judges]
        if len(set(names)) != len(names):
            raise ValueError(f"judges in a panel need distinct names, got {names}")
        weights = [1.0] * len(judges) if weights is None else list(weights)
        if len(weights) != len(judges) or any(w < 0 for w in weights):
            raise ValueError("weights: one non-negative weight per judge")
        if vote not in ("borda", "majority"):
            raise ValueError(f"vote: expected 'borda' or 'majority', got {vote!r}")
        self.judges, self.weights, self.vote, self.name = list(judges), weights, vote, name
        self.summary: dict[str, Any] = {}

    def rank(self, requests: Sequence[RankRequest]) -> list[RankResult]:
        by_judge = {judge.name: judge.rank(requests) for judge in self.judges}
        combined = [self.combine(request, by_judge, i) for i, request in enumerate(requests)]
        statuses = Counter(r.status for r in combined)
        self.summary = {
            "judge": self.name,
            "vote": self.vote,
            "items": len(combined),
            **{s: statuses.get(s, 0) for s in ("ok", "unparseable", "error", "inconsistent")},
            "agreement": agreement(by_judge),
            "judges": {j.name: dict(getattr(j, "summary", {})) for j in self.judges},
            "cost": panel_cost(self.judges),
        }
        return combined

    def combine(
        self, request: RankRequest, by_judge: dict[str, list[RankResult]], index: int
    ) -> RankResult:
        ids = request.candidate_ids
        votes = {name: results[index] for name, results in by_judge.items()}
        meta: dict[str, Any] = {
            "vote": self.vote,
            # what each member said, verdict fields included, so a vote can be audited
            "judges": {
                name: {
                    "status": r.status,
                    "ranks": r.ranks,
                    "consistent": r.consistent,
                    **{k: r.meta[k] for k in VERDICT_FIELDS if k in (r.meta or {})},
                }
                for name, r in votes.items()
            },
        }
        problem = check_candidates(request)
        if problem:
            meta["reason"] = problem
            return RankResult(request.prompt_id, ids, None, "error", None, self.name, meta)
        usable = [
            (result, weight)
            for result, weight in zip(votes.values(), self.weights, strict=True)
            if result.status == "ok" and result.ranks is not None and weight > 0
        ]
        if not usable:
            # Nothing to vote with: report the most telling status among the judges.
            statuses = {r.status for r in votes.values()}
            status = next((s for s in ("unparseable", "inconsistent") if s in statuses), "error")
            return RankResult(request.prompt_id, ids, None, status, None, self.name, meta)
        n = len(ids)
        tally, decided = vote_tally(usable)
        if self.vote == "borda":
            scores = [0.0] * n
            for result, weight in usable:
                for i, rank in enumerate(result.ranks or []):
                    scores[i] += weight * (n - rank)
            ranks = ranks_from_scores(scores)
            unbacked = borda_ties(ranks, tally, decided)
            meta["disagreed_pairs"] = [[ids[i], ids[j]] for i, j in unbacked]
        else:
            wins = [0] * n
            for (i, j), sign in tally.items():
                wins[i] += sign
                wins[j] -= sign
            ranks = ranks_from_scores(wins)
            meta["preferred_pairs"] = [
                [ids[i], ids[j]] if sign > 0 else [ids[j], ids[i]]
                for (i, j), sign in sorted(tally.items())
                if sign
            ]
        flags = [r.consistent for r, _ in usable if r.consistent is not None]
        consistent = all(flags) if flags else None
        meta["voters"] = len(usable)
        return RankResult(request.prompt_id, ids, ranks, "ok", consistent, self.name, meta)
