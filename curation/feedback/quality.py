"""How far a judge's rankings can be trusted, measured rather than assumed.

- agreement with reference rankings (OpenAssistant's human sibling ranks, or any rankings table
  given as reference): pairwise accuracy over the pairs the reference orders, and Kendall's
  tau-b per prompt (tau-b because both sides may tie);
- agreement with the synthetic tasks' checkable answers: does the judge put right answers above
  wrong ones;
- order-swap consistency and the rates of each status (unparseable, error, inconsistent);
- tie rate: how often the judge declines to order two answers;
- length bias: of the pairs the judge decides between answers of different length, the share
  the longer one wins (0.5 is no bias; only meaningful beside the accuracy, since longer answers
  are sometimes simply better);
- the generation-versus-judgment gap: on prompts with a human reference answer, the share where
  the judge prefers some model output over it.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from itertools import combinations
from typing import Any

import polars as pl

from curation.feedback.pairs import Better, verdicts
from curation.feedback.schema import same_text
from curation.synthetic import SyntheticTask, check_answer


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b of two equally long score (or rank) lists; None when either side is
    constant (the coefficient is undefined)."""
    if len(x) != len(y):
        raise ValueError(f"kendall_tau_b: lengths differ ({len(x)} and {len(y)})")
    concordant = discordant = tied_x = tied_y = 0
    for i, j in combinations(range(len(x)), 2):
        dx = (x[i] > x[j]) - (x[i] < x[j])
        dy = (y[i] > y[j]) - (y[i] < y[j])
        if dx == 0:
            tied_x += 1
        if dy == 0:
            tied_y += 1
        if dx and dy:
            if dx == dy:
                concordant += 1
            else:
                discordant += 1
    pairs = len(x) * (len(x) - 1) // 2
    denominator = math.sqrt((pairs - tied_x) * (pairs - tied_y))
    return (concordant - discordant) / denominator if denominator else None


def is_correct(answer: str, task: str | None, text: str) -> bool:
    """``check_answer`` with the task's own case rule when its kind is known."""
    if task:
        return check_answer(SyntheticTask(id="", kind=task, prompt="", answer=answer), text)
    return check_answer(answer, text)


class _Tally:
    """Counts for one group of rankings (all, or one source)."""

    def __init__(self) -> None:
        self.status: Counter[str] = Counter()
        self.rankings = 0
        self.consistent = self.consistency_known = 0
        self.pairs = self.tied = 0
        self.decided_by_length = self.longer_wins = 0
        self.ref = {"prompts": 0, "pairs": 0, "agree": 0, "judge_tied": 0, "taus": []}
        self.ans = {"prompts": 0, "pairs": 0, "agree": 0, "best_correct": 0, "taus": []}
        self.gap_prompts = self.model_preferred = 0

    def summary(self) -> dict[str, Any]:
        def share(part: int, whole: int) -> float | None:
            return part / whole if whole else None

        def mean(values: list[float]) -> float | None:
            return sum(values) / len(values) if values else None

        out: dict[str, Any] = {
            "rankings": self.rankings,
            **{f"status_{name}": self.status[name] for name in sorted(self.status)},
            "consistency_rate": share(self.consistent, self.consistency_known),
            "tie_rate": share(self.tied, self.pairs),
            "candidate_pairs": self.pairs,
            "length_bias": share(self.longer_wins, self.decided_by_length),
            "length_decided_pairs": self.decided_by_length,
            "reference_prompts": self.ref["prompts"],
            "reference_pairs": self.ref["pairs"],
            "reference_pairwise_accuracy": share(self.ref["agree"], self.ref["pairs"]),
            "reference_judge_ties": self.ref["judge_tied"],
            "reference_kendall_tau": mean(self.ref["taus"]),
            "answer_prompts": self.ans["prompts"],
            "answer_pairs": self.ans["pairs"],
            "answer_pairwise_accuracy": share(self.ans["agree"], self.ans["pairs"]),
            "answer_kendall_tau": mean(self.ans["taus"]),
            "best_correct_rate": share(self.ans["best_correct"], self.ans["prompts"]),
            "gap_prompts": self.gap_prompts,
            "generation_judgment_gap": share(self.model_preferred, self.gap_prompts),
        }
        return out


def _compare(
    tally: _Tally, judged: dict[str, int], better: Better, reference: dict[str, int]
) -> None:
    common = [c for c in judged if c in reference]
    if len(common) < 2:
        return
    index = {c: i for i, c in enumerate(judged)}
    tally.ref["prompts"] += 1
    for a, b in combinations(common, 2):
        if reference[a] == reference[b]:
            continue
        tally.ref["pairs"] += 1
        winner = better(index[a], index[b])
        if winner is None:
            tally.ref["judge_tied"] += 1
        elif (winner == index[a]) == (reference[a] < reference[b]):
            tally.ref["agree"] += 1
    tau = kendall_tau_b([judged[c] for c in common], [reference[c] for c in common])
    if tau is not None:
        tally.ref["taus"].append(tau)


def _answers(
    tally: _Tally,
    ids: list[str],
    texts: list[str],
    ranks: list[int],
    better: Better,
    row: dict,
) -> None:
    correct = [is_correct(row["answer"], row["task"], text) for text in texts]
    if all(correct) or not any(correct):
        return
    tally.ans["prompts"] += 1
    for i, j in combinations(range(len(ids)), 2):
        if correct[i] == correct[j]:
            continue
        right, wrong = (i, j) if correct[i] else (j, i)
        tally.ans["pairs"] += 1
        tally.ans["agree"] += better(right, wrong) == right
    best = min(ranks)
    tally.ans["best_correct"] += all(c for c, r in zip(correct, ranks, strict=True) if r == best)
    tau = kendall_tau_b(ranks, [1 if c else 2 for c in correct])
    if tau is not None:
        tally.ans["taus"].append(tau)


def _gap(tally: _Tally, ids: list[str], texts: list[str], better: Better, row: dict) -> None:
    reference = same_text(row["reference"] or "")
    if not reference:
        return
    at = [i for i, text in enumerate(texts) if same_text(text) == reference]
    models = [i for i, c in enumerate(ids) if row["origins"].get(c) == "model"]
    if not at or not models:
        return
    tally.gap_prompts += 1
    tally.model_preferred += any(better(i, at[0]) == i for i in models)


def judge_quality(
    judged: pl.DataFrame,
    candidates: pl.DataFrame,
    references: pl.DataFrame | None = None,
) -> tuple[dict[str, Any], pl.DataFrame]:
    """Quality of the rankings in ``judged`` (a rankings table; filter it to one judge first to
    score that judge) against ``references`` (rankings treated as ground truth) and the checkable
    answers and reference answers of ``candidates``. Returns the overall figures and one row of
    the same figures per source."""
    sets = {
        row["id"]: {
            "source": row["source"],
            "answer": row["answer"],
            "task": row["task"],
            "reference": row["reference"],
            "origins": {c["candidate_id"]: c["origin"] for c in row["candidates"]},
        }
        for row in candidates.select(
            "id", "source", "answer", "task", "reference", "candidates"
        ).to_dicts()
    }
    truth: dict[str, list[dict[str, int]]] = defaultdict(list)
    if references is not None:
        for row_id, ids, ranks, status in references.select(
            "id", "candidate_ids", "ranks", "status"
        ).iter_rows():
            if status == "ok" and ranks is not None:
                truth[row_id].append(dict(zip(ids, ranks, strict=True)))
    overall = _Tally()
    by_source: dict[str, _Tally] = defaultdict(_Tally)
    for row in judged.iter_rows(named=True):
        found = sets.get(row["id"])
        tallies = [overall, by_source[found["source"] if found else "unknown"]]
        for tally in tallies:
            tally.rankings += 1
            tally.status[row["status"]] += 1
            if row["consistent"] is not None:
                tally.consistency_known += 1
                tally.consistent += bool(row["consistent"])
        if row["status"] != "ok" or row["ranks"] is None:
            continue
        ids, texts, ranks = row["candidate_ids"], row["texts"], row["ranks"]
        # pairs the presentation orders disagreed on are ties here too, as in the pairs stage
        better = verdicts(row.get("meta"), ids, ranks)
        for tally in tallies:
            for i, j in combinations(range(len(ids)), 2):
                tally.pairs += 1
                winner = better(i, j)
                if winner is None:
                    tally.tied += 1
                elif len(texts[i]) != len(texts[j]):
                    tally.decided_by_length += 1
                    loser = j if winner == i else i
                    tally.longer_wins += len(texts[winner]) > len(texts[loser])
            judged_ranks = dict(zip(ids, ranks, strict=True))
            for reference in truth.get(row["id"], []):
                _compare(tally, judged_ranks, better, reference)
            if found is not None and found["answer"]:
                _answers(tally, ids, texts, ranks, better, found)
            if found is not None:
                _gap(tally, ids, texts, better, found)
    table = pl.DataFrame(
        [{"source": source, **tally.summary()} for source, tally in sorted(by_source.items())]
    )
    return overall.summary(), table
