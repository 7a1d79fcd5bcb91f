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

``ranking_verdicts`` is the one reading of a ranking's pairs that everyone downstream shares: the
pairs stage, judge quality and a panel's vote. It lives here, beside what the judge writes, so
that ``curation.judge`` need not import ``curation.feedback`` to read its own members.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from curation.judge.types import ranks_from_scores

Pair = tuple[int, int]  # (i, j) with i < j
# which of two answers (by index) a ranking prefers; None for a tie
Better = Callable[[int, int], "int | None"]


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


def id_pairs(value: Any, index: Mapping[str, int]) -> list[tuple[int, int]]:
    """[[id, id], ...] from a meta field as index pairs, in the order given; pairs naming an
    unknown id are left out (they belong to candidates not in this ranking)."""
    out = []
    for pair in value if isinstance(value, list) else []:
        if isinstance(pair, list | tuple) and len(pair) == 2 and all(p in index for p in pair):
            out.append((index[pair[0]], index[pair[1]]))
    return out


def ranking_verdicts(meta: Mapping[str, Any], ids: Sequence[str], ranks: Sequence[int]) -> Better:
    """``better(i, j)``: the index of the answer a ranking prefers of two, None for a tie.
    ``meta.preferred_pairs`` ([better, worse] ids), when present, decide and every other pair is
    a tie; otherwise the ranks decide, except that ``meta.disagreed_pairs`` are ties."""
    index = {cid: i for i, cid in enumerate(ids)}
    if "preferred_pairs" in meta:
        preferred = set(id_pairs(meta["preferred_pairs"], index))

        def stated(i: int, j: int) -> int | None:
            return i if (i, j) in preferred else j if (j, i) in preferred else None

        return stated
    disagreed = {frozenset(p) for p in id_pairs(meta.get("disagreed_pairs"), index)}

    def ranked(i: int, j: int) -> int | None:
        if ranks[i] == ranks[j] or frozenset((i, j)) in disagreed:
            return None
        return i if ranks[i] < ranks[j] else j

    return ranked


def verdict_signs(better: Better, n: int) -> dict[Pair, int]:
    """+1 (the first is better) / -1 / 0 (tie) for every pair (i < j) of ``n`` candidates."""
    signs = {}
    for i, j in combinations(range(n), 2):
        winner = better(i, j)
        signs[(i, j)] = 0 if winner is None else 1 if winner == i else -1
    return signs
