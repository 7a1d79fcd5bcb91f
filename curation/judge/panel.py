"""A panel of judges and how much they agree.

Different judges (models, endpoints, rubrics) care about different things, so a panel ranks by
vote and reports agreement instead of trusting any one of them. Two votes:

- ``borda``: each judge gives a candidate (K - rank) points, times the judge's weight; ranks
  follow the totals. Uses the whole ranking, so a judge's second choice still counts.
- ``majority``: every pair of candidates is decided by the weighted majority of the judges'
  preferences (a tie when the weights balance); ranks follow wins minus losses (Copeland).

Agreement is Cohen's kappa between every two judges over the pairwise labels their rankings
imply (first better, second better, tie) on the requests both judged, so ties are part of the
agreement and chance agreement from a judge that ties everything is discounted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import combinations
from typing import Any, Literal

from curation.judge.aggregate import prefs_from_ranks
from curation.judge.types import Judge, RankRequest, RankResult, check_candidates, ranks_from_scores


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


def pair_labels(result: RankResult) -> list[int]:
    """+1 / -1 / 0 for every candidate pair (i < j) of a ranked result."""
    assert result.ranks is not None
    prefs = prefs_from_ranks(result.ranks)
    return [prefs[pair] for pair in sorted(prefs)]


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
            "judges": {
                name: {"status": r.status, "ranks": r.ranks, "consistent": r.consistent}
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
        scores = [0.0] * n
        if self.vote == "borda":
            for result, weight in usable:
                for i, rank in enumerate(result.ranks or []):
                    scores[i] += weight * (n - rank)
        else:
            tally: dict[tuple[int, int], float] = {}
            for result, weight in usable:
                for pair, sign in prefs_from_ranks(result.ranks or []).items():
                    tally[pair] = tally.get(pair, 0.0) + weight * sign
            for (i, j), total in tally.items():
                sign = (total > 0) - (total < 0)
                scores[i] += sign
                scores[j] -= sign
        flags = [r.consistent for r, _ in usable if r.consistent is not None]
        consistent = all(flags) if flags else None
        meta["voters"] = len(usable)
        return RankResult(
            request.prompt_id, ids, ranks_from_scores(scores), "ok", consistent, self.name, meta
        )
