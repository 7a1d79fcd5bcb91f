"""Rankings → preference pairs, and the human/AI mix of the preference dataset.

A ranking of K answers holds C(K,2) comparisons. InstructGPT trains the reward model on all of
them (strategy "all"); "best_vs_worst" keeps the one pair with the clearest signal, which is what
DPO recipes often use; a minimum rank margin drops near-ties either way. Tied answers state no
preference and never become a pair. Human and AI pairs land in the same PREFERENCES table with
their ``origin`` and, for AI pairs, the judge and template version that made them.

Ranks alone do not say everything an LLM judge said, so two fields of a ranking's ``meta`` take
precedence over them (``curation.judge.client`` writes both):

- ``disagreed_pairs``: pairs the presentation orders disagreed on. They are ties (position bias
  decided them), although the ranks aggregated over the whole list may still differ.
- ``preferred_pairs``: a pairwise judge's own verdicts, [better, worse], on which every order
  agreed. Ranks from wins minus losses can reverse such a verdict (a cycle a > b > c > a, or b
  winning more elsewhere), so pairs come from these verdicts and every other pair is a tie. A
  verdict says which answer is better but not by how much: its margin is 1.

Two answers with the same text (``schema.same_text``) never become a pair, whatever the ranks.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, fields
from itertools import combinations
from typing import Any, Literal

import polars as pl

from curation.feedback.schema import same_text
from curation.judge.aggregate import Better, id_pairs, ranking_verdicts
from curation.judge.config import check_field_types
from curation.schema import PREFERENCES, empty, stable_id, stable_id_expr

STAGE_SOURCE = "feedback"


@dataclass(frozen=True)
class PairsConfig:
    """Attributes:
    strategy: "all" (every pair of differently ranked answers, InstructGPT) or
        "best_vs_worst" (one pair per ranking: a best-ranked and a worst-ranked answer).
    min_margin: keep a pair only when the worse answer's rank minus the better one's is at
        least this (1 keeps every untied pair). A pairwise judge's direct verdict has margin 1,
        so a min_margin above 1 keeps none of them.
    statuses: rankings with these statuses are used; the others are counted and skipped.
    require_consistent: skip rankings whose order-swap check disagreed (``consistent`` False).
    """

    strategy: Literal["all", "best_vs_worst"] = "all"
    min_margin: int = 1
    statuses: tuple[str, ...] = ("ok",)
    require_consistent: bool = False

    def __post_init__(self) -> None:
        check_field_types(self)
        object.__setattr__(self, "statuses", tuple(self.statuses))
        if self.strategy not in ("all", "best_vs_worst"):
            raise ValueError(f"strategy: expected 'all' or 'best_vs_worst', got {self.strategy!r}")
        if self.min_margin < 1:
            raise ValueError(f"min_margin: expected >= 1, got {self.min_margin}")

    @classmethod
    def from_settings(cls, settings: Any, section: str = "pairs") -> PairsConfig:
        """A config from plain settings (a YAML section); ValueError naming ``section``, the key
        and, for a key it does not know, the keys it does (a typo must not fall back to a
        default silently, nor surface as a constructor's TypeError)."""
        if settings is None:
            settings = {}
        if not isinstance(settings, Mapping):
            raise ValueError(
                f"{section}: expected a mapping of settings, got {type(settings).__name__}"
            )
        known = sorted(f.name for f in fields(cls))
        unknown = sorted(set(settings) - set(known), key=str)
        if unknown:
            raise ValueError(f"{section}: unknown key(s) {unknown}; known: {known}")
        try:
            return cls(**settings)
        except ValueError as error:
            raise ValueError(f"{section}.{error}") from None


@dataclass
class PairsResult:
    pairs: pl.DataFrame
    counts: dict[str, int]


def ranked_pairs(
    ranks: Sequence[int],
    strategy: str = "all",
    min_margin: int = 1,
    disagreed: Collection[frozenset[int]] = (),
) -> tuple[list[tuple[int, int]], dict[str, int]]:
    """(better index, worse index) pairs of one ranking, and how many were tied or too close.
    Pairs in ``disagreed`` (the judge's orders disagreed on them) count as tied."""
    counts = {"tied": 0, "below_margin": 0}
    if strategy == "best_vs_worst":
        best, worst = min(ranks), max(ranks)
        if best == worst:
            counts["tied"] += 1
            return [], counts
        if worst - best < min_margin:
            counts["below_margin"] += 1
            return [], counts
        tops = [i for i, rank in enumerate(ranks) if rank == best]
        bottoms = [i for i, rank in enumerate(ranks) if rank == worst]
        for i in tops:
            for j in bottoms:
                if frozenset((i, j)) not in disagreed:
                    return [(i, j)], counts
        counts["tied"] += 1
        return [], counts
    pairs = []
    for i, j in combinations(range(len(ranks)), 2):
        if ranks[i] == ranks[j] or frozenset((i, j)) in disagreed:
            counts["tied"] += 1
            continue
        better, worse = (i, j) if ranks[i] < ranks[j] else (j, i)
        if ranks[worse] - ranks[better] < min_margin:
            counts["below_margin"] += 1
            continue
        pairs.append((better, worse))
    return pairs, counts


def direct_pairs(
    verdicts: Sequence[tuple[int, int]],
    n: int,
    ranks: Sequence[int],
    strategy: str = "all",
    min_margin: int = 1,
) -> tuple[list[tuple[int, int]], dict[str, int]]:
    """(better, worse) pairs from a pairwise judge's agreed verdicts over ``n`` candidates;
    the pairs without one are tied. Each verdict has margin 1. ``best_vs_worst`` keeps the
    verdict that spans the ranks most (the clearest one the judge stated itself)."""
    counts = {"tied": 0, "below_margin": 0}
    verdicts = list(dict.fromkeys(verdicts))
    if strategy == "best_vs_worst":
        if not verdicts:
            counts["tied"] += 1
            return [], counts
        if min_margin > 1:
            counts["below_margin"] += 1
            return [], counts
        spread = [ranks[worse] - ranks[better] for better, worse in verdicts]
        return [verdicts[spread.index(max(spread))]], counts
    counts["tied"] = n * (n - 1) // 2 - len(verdicts)
    if min_margin > 1:
        counts["below_margin"] = len(verdicts)
        return [], counts
    return verdicts, counts


def parse_meta(meta: str | None) -> dict[str, Any]:
    """A rankings row's ``meta`` JSON as a dict ({} when absent or not an object)."""
    if not meta:
        return {}
    try:
        loaded = json.loads(meta)
    except json.JSONDecodeError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def verdicts(meta: str | None, ids: Sequence[str], ranks: Sequence[int]) -> Better:
    """``better(i, j)``: the index of the answer a ranking prefers of two, None for a tie, with
    ``meta`` taking precedence over the ranks as this module's docstring says. Judge quality
    scores the same verdicts the pairs are made from, and a judge panel votes with them
    (``curation.judge.aggregate.ranking_verdicts``, the rule itself)."""
    return ranking_verdicts(parse_meta(meta), ids, ranks)


def judge_json(judge: str, origin: str, meta: str | None) -> str | None:
    """The pair's ``judge`` column: the judge name and what version of it spoke (null for
    people, whose annotator id travels in ``provenance.ids``)."""
    if origin == "human":
        return None
    parsed = parse_meta(meta)
    return json.dumps(
        {
            "judge": judge,
            "model": parsed.get("model"),
            "template": parsed.get("template"),
            "template_version": parsed.get("template_version"),
        },
        sort_keys=True,
    )


def rankings_to_pairs(
    rankings: pl.DataFrame, candidates: pl.DataFrame, config: PairsConfig = PairsConfig()
) -> PairsResult:
    """PREFERENCES rows from a rankings table; prompts and sources come from ``candidates``."""
    prompts = {
        row_id: (source, prompt)
        for row_id, source, prompt in candidates.select("id", "source", "prompt").iter_rows()
    }
    counts = {
        "rankings": rankings.height,
        "rankings_used": 0,
        "skipped_status": 0,
        "skipped_inconsistent": 0,
        "skipped_unknown_prompt": 0,
        "tied": 0,  # order disagreements included
        "order_disagreements": 0,  # pairs the judge's orders disagreed on (counted as tied)
        "same_text": 0,  # pairs of two answers with the same text
        "below_margin": 0,
        "pairs": 0,
    }
    rows = []
    for ranking in rankings.iter_rows(named=True):
        if ranking["status"] not in config.statuses or ranking["ranks"] is None:
            counts["skipped_status"] += 1
            continue
        if config.require_consistent and ranking["consistent"] is False:
            counts["skipped_inconsistent"] += 1
            continue
        if ranking["id"] not in prompts:
            counts["skipped_unknown_prompt"] += 1
            continue
        counts["rankings_used"] += 1
        source, prompt = prompts[ranking["id"]]
        ids, texts, ranks = ranking["candidate_ids"], ranking["texts"], ranking["ranks"]
        meta = parse_meta(ranking["meta"])
        index = {cid: i for i, cid in enumerate(ids)}
        disagreed = {frozenset(p) for p in id_pairs(meta.get("disagreed_pairs"), index)}
        counts["order_disagreements"] += len(disagreed)
        direct = "preferred_pairs" in meta
        if direct:
            verdicts = id_pairs(meta["preferred_pairs"], index)
            pairs, skipped = direct_pairs(
                verdicts, len(ids), ranks, config.strategy, config.min_margin
            )
        else:
            pairs, skipped = ranked_pairs(ranks, config.strategy, config.min_margin, disagreed)
        counts["tied"] += skipped["tied"]
        counts["below_margin"] += skipped["below_margin"]
        judge = judge_json(ranking["judge"], ranking["origin"], ranking["meta"])
        for better, worse in pairs:
            if same_text(texts[better] or "") == same_text(texts[worse] or ""):
                counts["same_text"] += 1
                continue
            source_id = f"{ranking['id']}:{ids[better]}>{ids[worse]}"
            rows.append(
                {
                    "id": stable_id(STAGE_SOURCE, f"{ranking['judge']}\x1f{source_id}"),
                    "source": source,
                    "source_id": source_id,
                    "lang": None,
                    "prompt": prompt,
                    "chosen": [{"role": "assistant", "content": texts[better]}],
                    "rejected": [{"role": "assistant", "content": texts[worse]}],
                    "origin": ranking["origin"],
                    "margin": 1.0 if direct else float(ranks[worse] - ranks[better]),
                    "judge": judge,
                    "source_ids": [ranking["id"], ids[better], ids[worse]],
                    "provenance": {
                        "file": None,
                        "line": None,
                        "ids": [ranking["judge"], ranking["id"], ids[better], ids[worse]],
                    },
                }
            )
    counts["pairs"] = len(rows)
    pairs = pl.DataFrame(rows, schema=PREFERENCES) if rows else empty(PREFERENCES)
    return PairsResult(pairs, counts)


@dataclass(frozen=True)
class MixConfig:
    """Attributes:
    human_fraction: share of human pairs in the result (0..1); None keeps every pair. AI and
        rule-made pairs together form the other side: neither was made by a person.
    max_pairs: cap on the result's size; None for as many as the fraction allows.
    seed: which pairs are kept when a side is cut (the same seed keeps the same pairs).
    """

    human_fraction: float | None = None
    max_pairs: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.human_fraction is not None and not 0 <= self.human_fraction <= 1:
            raise ValueError(f"human_fraction: expected 0..1, got {self.human_fraction}")
        if self.max_pairs is not None and self.max_pairs < 0:
            raise ValueError(f"max_pairs: expected >= 0, got {self.max_pairs}")


def _sizes(humans: int, others: int, fraction: float, cap: int | None) -> tuple[int, int]:
    """The largest (human, other) counts with the requested share that the pools allow."""
    if fraction == 1:
        total = humans
    elif fraction == 0:
        total = others
    else:
        total = min(int(humans / fraction), int(others / (1 - fraction)))
    if cap is not None:
        total = min(total, cap)
    human = min(humans, round(total * fraction))
    return human, min(others, total - human)


def mix_preferences(
    frames: Sequence[pl.DataFrame], config: MixConfig = MixConfig()
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Human and AI pairs in one table with the configured share of human pairs; the pairs kept
    from each side are those whose (seed, id) hash is smallest, so the choice does not depend on
    input order and a larger cap keeps a superset. Returns the pairs (input order) and a report
    of the achieved counts."""
    data = pl.concat([f.select(PREFERENCES.names()) for f in frames], how="vertical")
    data = data.unique(subset="id", keep="first", maintain_order=True)
    is_human = pl.col("origin") == "human"
    available = {"human": data.filter(is_human).height, "ai": data.filter(~is_human).height}
    if config.human_fraction is None:
        count = data.height if config.max_pairs is None else config.max_pairs
        keep = _cut(data, count, config.seed).select("id")
        chosen = data.join(keep, on="id", how="semi", maintain_order="left")
    else:
        n_human, n_other = _sizes(
            available["human"], available["ai"], config.human_fraction, config.max_pairs
        )
        keep = pl.concat(
            [
                _cut(data.filter(is_human), n_human, config.seed).select("id"),
                _cut(data.filter(~is_human), n_other, config.seed).select("id"),
            ]
        )
        chosen = data.join(keep, on="id", how="semi", maintain_order="left")
    selected = {
        "human": chosen.filter(is_human).height,
        "ai": chosen.filter(~is_human).height,
    }
    total = selected["human"] + selected["ai"]
    report = {
        "available": available,
        "selected": selected,
        "by_origin": dict(chosen.group_by("origin").len().sort("origin").iter_rows()),
        "human_fraction_target": config.human_fraction,
        "human_fraction": selected["human"] / total if total else None,
        "pairs": total,
    }
    return chosen, report


def _cut(data: pl.DataFrame, count: int, seed: int) -> pl.DataFrame:
    if count >= data.height:
        return data
    order = stable_id_expr(pl.lit(str(seed)), pl.col("id")).alias("_order")
    return data.with_columns(order).sort("_order").head(count).drop("_order")
