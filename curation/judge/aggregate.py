"""From verdicts over several presentation orders to one ranking.

Every verdict is reduced to pairwise preferences between candidates (by their index in the
request, independent of where they were shown): +1 the first is better, -1 the second, 0 a tie.
A pair on which the orders disagree is position-biased. Ranks come from Copeland scores (wins
minus losses over the pairs).

For listwise verdicts (each one a full ranking) Copeland reproduces the ranking exactly when every
order agrees, and never ranks a candidate below one that every order put beneath it. Pairwise
verdicts carry no such guarantee: a cycle (a > b > c > a) or a lopsided win count can rank b
above a although every order said a > b. And ranks cannot say "the orders disagreed on this
pair": two candidates on which they did still get different ranks when the other pairs differ.
So the aggregate also hands back the pairs themselves, unanimous (``agreed``) or not
(``disagreed``), and the pairs stage builds preference pairs from those where the ranks would
mislead (``curation.feedback.pairs``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations

from curation.judge.types import ranks_from_scores

Pair = tuple[int, int]  # (i, j) with i < j


def prefs_from_order(ranking: Sequence[int]) -> dict[Pair, int]:
    """Pair preferences implied by one ranking (candidate indices, best first)."""
    position = {candidate: place for place, candidate in enumerate(ranking)}
    return {
        (i, j): 1 if position[i] < position[j] else -1 for i, j in combinations(sorted(position), 2)
    }


def prefs_from_ranks(ranks: Sequence[int]) -> dict[Pair, int]:
    """Pair preferences implied by ranks (1 = best; equal ranks are ties)."""
    return {
        (i, j): (ranks[i] < ranks[j]) - (ranks[i] > ranks[j])
        for i, j in combinations(range(len(ranks)), 2)
    }


@dataclass(frozen=True)
class Aggregate:
    ranks: list[int]
    consistent: bool | None  # None: only one order was judged, nothing to compare
    pairs: int  # candidate pairs with at least two verdicts
    consistent_pairs: int
    agreed: dict[Pair, int]  # every verdict on the pair gave this sign (one verdict included)
    disagreed: list[Pair]  # the verdicts on the pair differ: a tie, whatever the ranks say


def aggregate(n: int, verdicts: Iterable[dict[Pair, int]]) -> Aggregate:
    """Combine per-order pair preferences; a pair the orders disagree on counts as a tie."""
    seen: dict[Pair, set[int]] = {}
    counts: dict[Pair, int] = {}
    for prefs in verdicts:
        for pair, sign in prefs.items():
            seen.setdefault(pair, set()).add(sign)
            counts[pair] = counts.get(pair, 0) + 1
    scores = [0] * n
    agreed: dict[Pair, int] = {}
    for (i, j), signs in sorted(seen.items()):
        if len(signs) == 1:
            sign = next(iter(signs))
            agreed[(i, j)] = sign
            scores[i] += sign
            scores[j] -= sign
    disagreed = sorted(pair for pair, signs in seen.items() if len(signs) > 1)
    compared = [pair for pair, k in counts.items() if k >= 2]
    agreeing = sum(1 for pair in compared if len(seen[pair]) == 1)
    consistent = None if not compared else agreeing == len(compared)
    return Aggregate(
        ranks_from_scores(scores), consistent, len(compared), agreeing, agreed, disagreed
    )
