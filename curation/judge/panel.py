"""A panel of judges and how much they agree.

Different judges (models, endpoints, rubrics) care about different things, so a panel ranks by
vote and reports agreement instead of trusting any one of them.

A member votes with what it said, not just with its ranks. An LLM judge's ranks can order a
pair its presentation orders disagreed on (position bias decided it, ``meta.disagreed_pairs``),
and a pairwise judge's Copeland ranks can reverse one of its own consistent verdicts when they
form a cycle (``meta.preferred_pairs``). So each member's verdict on a pair comes from
``aggregate.ranking_verdicts``, the rule the pairs stage and judge quality read rankings with,
and the panel writes its own ``meta`` so that the pairs stage makes of the panel's ranking what
the vote decided. Members are read by candidate id: one that lists the request's candidates in
another order is read in the request's order; one that names other candidates is left out.

A row with one usable member (a one-judge panel, or the others failed) is that member's own
ranking: its ranks, ``consistent`` and verdict fields pass through, so the pairs stage makes
the same pairs, margins and counts of it as of the member alone. A vote of one would restate
its verdicts in the vote's terms (majority: margin-1 verdicts; Borda: points) and lose what it
said. With two or more, two votes:

- ``majority``: every pair is decided by the weighted tally of the members' verdicts (a tie adds
  nothing; a tie overall when the weights balance). Ranks follow wins minus losses (Copeland),
  so rank margins work as for any ranking judge; ``meta.disagreed_pairs`` ties the pairs the
  ranks separate but the vote left tied. A cycle among the decisions can make Copeland ranks
  tie or reverse a decided pair; then, and only then, the panel lists its decided pairs in
  ``meta.preferred_pairs`` and the pairs come from those, margin 1, as for a pairwise judge.
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

The pairs stage counts ``meta.disagreed_pairs`` as ``order_disagreements``. Besides the pairs
that must be tied (above), a panel lists there, for counting only, the pairs it ties on which
its members disagreed: their decisions balanced, or a member's orders disagreed on the pair.
Those are ties in the panel's output already (equal ranks, or absent from ``preferred_pairs``,
which decide alone when present), so listing them changes no pair, only the count.

A panel of pairwise judges keeps their verdicts best under ``majority``: Borda's points come
from their Copeland ranks, so a verdict those ranks reverse is dropped (rule 2) rather than kept.

Agreement is Cohen's kappa between every two judges over the same pairwise verdicts (first
better, second better, tie) on the requests both judged, so ties, disagreed pairs included, are
part of the agreement and chance agreement from a judge that ties everything is discounted.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from itertools import combinations
from typing import Any, Literal

from curation.judge.aggregate import Pair, id_pairs, ranking_verdicts, verdict_signs
from curation.judge.types import Judge, RankRequest, RankResult, check_candidates, ranks_from_scores

VERDICT_FIELDS = ("preferred_pairs", "disagreed_pairs")
# weighted sums closer than this share of the total weight are equal: 0.1 + 0.2 vs 0.3
ROUNDING = 9


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


def align(result: RankResult, ids: Sequence[str]) -> tuple[RankResult, str | None]:
    """``result`` with its ranks in the order of the request's ``ids``, and None; or, when it
    cannot be read that way, the result without ranks (status "error") and why.

    A member's verdict fields name candidates by id, so only its ranks need reordering. One
    that ranks other candidates than it was asked about (a subset, extra or repeated ids) is
    left out of every vote: it did not answer this request, Borda's points would be on another
    scale with the missing candidates given none, and a majority would have to guess whether
    a missing pair is a tie or an abstention."""
    if result.status != "ok" or result.ranks is None:
        return result, None
    got = list(result.candidate_ids)
    if got == list(ids) and len(result.ranks) == len(ids):
        return result, None
    if len(set(got)) != len(got) or sorted(got) != sorted(ids) or len(result.ranks) != len(got):
        reason = f"ranked candidates {got} (ranks {result.ranks}) when asked about {list(ids)}"
        return replace(result, ranks=None, status="error"), reason
    rank_of = dict(zip(got, result.ranks, strict=True))
    return replace(result, candidate_ids=list(ids), ranks=[rank_of[c] for c in ids]), None


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


def disputed(usable: Sequence[tuple[RankResult, float]], tally: dict[Pair, int]) -> set[Pair]:
    """The pairs the vote left tied on which the members disagreed: some member decided them
    (so the decisions balanced), or some member's presentation orders disagreed on them."""
    pairs: set[Pair] = set()
    for result, _ in usable:
        index = {cid: i for i, cid in enumerate(result.candidate_ids)}
        disowned = id_pairs((result.meta or {}).get("disagreed_pairs"), index)
        pairs |= {(min(i, j), max(i, j)) for i, j in disowned}
        pairs |= {pair for pair, sign in member_signs(result).items() if sign}
    return {pair for pair in pairs if tally.get(pair) == 0}


def borda_scores(usable: Sequence[tuple[RankResult, float]], n: int) -> list[float]:
    """Each candidate's weighted (n - rank) points, as a share of the total weight rounded to
    ``ROUNDING`` places: weights that balance exactly in decimal (0.1 + 0.2 vs 0.3) tie, as
    they do in ``vote_tally``, instead of letting float error order the pair."""
    scores = [0.0] * n
    for result, weight in usable:
        for i, rank in enumerate(result.ranks or []):
            scores[i] += weight * (n - rank)
    scale = sum(weight for _, weight in usable)
    return [round(score / scale, ROUNDING) for score in scores]


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


def copeland_contradicts(ranks: Sequence[int], tally: dict[Pair, int]) -> bool:
    """Whether Copeland ranks tie or reverse a pair the vote decided (a cycle among them)."""
    return any(
        sign and sign != (ranks[i] < ranks[j]) - (ranks[i] > ranks[j])
        for (i, j), sign in tally.items()
    )


def panel_cost(judges: Sequence[Judge]) -> float | None:
    """The members' costs summed; None (unknown) when any member's is unknown."""
    costs = [getattr(judge, "summary", {}).get("cost", 0.0) for judge in judges]
    return None if any(cost is None for cost in costs) else float(sum(costs))


class JudgePanel:
    """``JudgePanel([judge, ...], weights=None, vote="borda")``; judges need distinct names and
    finite, non-negative weights, at least one of them above zero."""

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
        weights = [1.0] * len(judges) if weights is None else [float(w) for w in weights]
        if len(weights) != len(judges) or any(not math.isfinite(w) or w < 0 for w in weights):
            raise ValueError(
                f"weights: one finite, non-negative weight per judge {names}, got {weights}"
            )
        if not any(weights):
            # every row would come back "error" with every member's status "ok"
            raise ValueError(f"weights: all zero {weights}, so no judge of {names} would vote")
        if vote not in ("borda", "majority"):
            raise ValueError(f"vote: expected 'borda' or 'majority', got {vote!r}")
        self.judges, self.weights, self.vote, self.name = list(judges), weights, vote, name
        self.summary: dict[str, Any] = {}

    def rank(self, requests: Sequence[RankRequest]) -> list[RankResult]:
        by_judge = {judge.name: judge.rank(requests) for judge in self.judges}
        combined = [self.combine(request, by_judge, i) for i, request in enumerate(requests)]
        # kappa compares members on the same candidates in the same order
        aligned = {
            name: [align(r, q.candidate_ids)[0] for r, q in zip(results, requests, strict=True)]
            for name, results in by_judge.items()
        }
        statuses = Counter(r.status for r in combined)
        self.summary = {
            "judge": self.name,
            "vote": self.vote,
            "items": len(combined),
            **{s: statuses.get(s, 0) for s in ("ok", "unparseable", "error", "inconsistent")},
            "agreement": agreement(aligned),
            "judges": {j.name: dict(getattr(j, "summary", {})) for j in self.judges},
            "cost": panel_cost(self.judges),
        }
        return combined

    def combine(
        self, request: RankRequest, by_judge: dict[str, list[RankResult]], index: int
    ) -> RankResult:
        ids = request.candidate_ids
        meta: dict[str, Any] = {"vote": self.vote, "judges": {}}
        problem = check_candidates(request)
        votes = {}
        for name, results in by_judge.items():
            said = results[index]
            votes[name], left_out = (said, None) if problem else align(said, ids)
            # what each member said, verdict fields included, so a vote can be audited; ranks
            # in the request's order, or as given with the ids they name when left out
            meta["judges"][name] = {
                "status": said.status,
                "ranks": votes[name].ranks if left_out is None else said.ranks,
                "consistent": said.consistent,
                **{k: said.meta[k] for k in VERDICT_FIELDS if k in (said.meta or {})},
                **({"left_out": left_out} if left_out else {}),
            }
        if problem:
            meta["reason"] = problem
            return RankResult(request.prompt_id, ids, None, "error", None, self.name, meta)
        usable = [
            (result, weight)
            for result, weight in zip(votes.values(), self.weights, strict=True)
            if result.status == "ok" and result.ranks is not None and weight > 0
        ]
        meta["voters"] = len(usable)
        if not usable:
            # Nothing to vote with: report the most telling status among the judges.
            statuses = {r.status for r in votes.values()}
            status = next((s for s in ("unparseable", "inconsistent") if s in statuses), "error")
            return RankResult(request.prompt_id, ids, None, status, None, self.name, meta)
        if len(usable) == 1:
            ((alone, _),) = usable
            meta.update({k: alone.meta[k] for k in VERDICT_FIELDS if k in (alone.meta or {})})
            ranks, consistent = list(alone.ranks or []), alone.consistent
            return RankResult(request.prompt_id, ids, ranks, "ok", consistent, self.name, meta)
        tally, decided = vote_tally(usable)
        ranks, ties, preferred = self.vote_on(usable, tally, decided)
        if preferred is not None:
            meta["preferred_pairs"] = [[ids[better], ids[worse]] for better, worse in preferred]
        # The members' disagreements that the panel ties anyway, listed for the pairs stage's
        # count only: tied in these ranks, or absent from preferred_pairs (which then decide
        # alone), so they change no pair. ``ties`` are the ones that do decide.
        counted = {
            (i, j)
            for i, j in disputed(usable, tally)
            if preferred is not None or ranks[i] == ranks[j]
        }
        meta["disagreed_pairs"] = [[ids[i], ids[j]] for i, j in sorted(set(ties) | counted)]
        flags = [r.consistent for r, _ in usable if r.consistent is not None]
        consistent = all(flags) if flags else None
        return RankResult(request.prompt_id, ids, ranks, "ok", consistent, self.name, meta)

    def vote_on(
        self,
        usable: Sequence[tuple[RankResult, float]],
        tally: dict[Pair, int],
        decided: set[Pair],
    ) -> tuple[list[int], list[Pair], list[Pair] | None]:
        """The panel's ranks of two or more members; the pairs those ranks separate that must
        be ties; and, when a majority's Copeland ranks contradict its vote, the decided pairs
        as (better, worse) for the pairs stage to follow instead of the ranks (else None)."""
        n = len(usable[0][0].candidate_ids)
        if self.vote == "borda":
            ranks = ranks_from_scores(borda_scores(usable, n))
            return ranks, borda_ties(ranks, tally, decided), None
        wins = [0] * n
        for (i, j), sign in tally.items():
            wins[i] += sign
            wins[j] -= sign
        ranks = ranks_from_scores(wins)
        pairs = sorted(tally.items())
        if copeland_contradicts(ranks, tally):
            return ranks, [], [(i, j) if sign > 0 else (j, i) for (i, j), sign in pairs if sign]
        return ranks, [(i, j) for (i, j), sign in pairs if not sign and ranks[i] != ranks[j]], None
