"""The embedded judge: deterministic, no network, no model. ``make demo`` uses it so the whole
graph runs offline; a real run points ``OpenAIJudge`` at an endpoint instead.

It ranks by signals a program can check, in this order:

1. correctness, when the request carries the checkable answer of a synthetic task
   (``curation.synthetic.check_answer``): a correct answer outranks every wrong one. A request
   carries the answer but not the task's kind, so an answer written in capitals is checked
   case-sensitively, as the "uppercase" tasks need ("garden" does not answer "GARDEN");
2. curation signals: the project's own filters (references, PII, safety, quality, length; see
   ``curation.curate.build_filters``) run over each candidate as the answer to the prompt; each
   category with a finding costs its weight in ``CATEGORY_WEIGHTS`` (unsafe content costs more
   than a citation), however many of its rules fire.

Candidates the signals cannot separate tie (they share a rank), so the pairs stage drops them
rather than inventing a preference. The same input always gives the same ranks, whatever the
order of the candidates; ``consistent`` is None because no order was tested.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from curation.curate import build_filters, curate
from curation.judge.types import RankRequest, RankResult, check_candidates, ranks_from_scores
from curation.schema import CONVERSATIONS
from curation.synthetic import SyntheticTask, check_answer

OFFLINE_VERSION = "offline-v1"
CORRECT_POINTS = 100  # outweighs any number of curation findings
CATEGORY_WEIGHTS: dict[str, int] = {
    "safety": 3,
    "pii": 2,
    "reference": 2,
    "quality": 2,
    "length": 1,
}
# Options rewriting is about prompts and near-dedup would compare candidates with each other:
# neither says anything about one answer's quality.
DEFAULT_FILTERS: dict[str, Any] = {"options": {"enabled": False}, "duplicates": {"enabled": False}}


def is_correct(request: RankRequest, text: str) -> bool:
    answer = request.answer or ""
    if answer.isupper():
        task = SyntheticTask(request.prompt_id, "uppercase", "", answer)
        return check_answer(task, text)
    return check_answer(answer, text)


class OfflineJudge:
    """``OfflineJudge(filters={...})``: ``filters`` is a curation config (``build_filters``)
    merged over ``DEFAULT_FILTERS``."""

    def __init__(self, filters: Mapping[str, Any] | None = None, name: str = OFFLINE_VERSION):
        config = {**DEFAULT_FILTERS, **dict(filters or {})}
        self.filters = build_filters(config)
        self.name = name
        self.summary: dict[str, Any] = {}

    def rank(self, requests: Sequence[RankRequest]) -> list[RankResult]:
        valid = [r for r in requests if check_candidates(r) is None]
        rules = self._rules(valid)
        results = []
        for i, request in enumerate(requests):
            problem = check_candidates(request)
            meta: dict[str, Any] = {"model": "offline", "template_version": OFFLINE_VERSION}
            if problem:
                meta["reason"] = problem
                ids = request.candidate_ids
                results.append(
                    RankResult(request.prompt_id, ids, None, "error", None, self.name, meta)
                )
                continue
            signals, scores = {}, []
            for j, (cid, text) in enumerate(request.candidates):
                fired = sorted(rules.get(f"{i}:{j}", ()))
                correct = None if request.answer is None else is_correct(request, text)
                categories = {rule.split(".", 1)[0] for rule in fired}
                penalty = sum(CATEGORY_WEIGHTS.get(c, 1) for c in categories)
                scores.append(CORRECT_POINTS * bool(correct) - penalty)
                signals[cid] = {"correct": correct, "rules": fired}
            meta["signals"] = signals
            results.append(
                RankResult(
                    request.prompt_id,
                    request.candidate_ids,
                    ranks_from_scores(scores),
                    "ok",
                    None,
                    self.name,
                    meta,
                )
            )
        ok = sum(1 for r in results if r.status == "ok")
        self.summary = {
            "judge": self.name,
            "model": "offline",
            "template_version": OFFLINE_VERSION,
            "items": len(results),
            "ok": ok,
            "unparseable": 0,
            "error": len(results) - ok,
            "inconsistent": 0,
            "skipped": len(results) - ok,
            "requests_sent": 0,
            "calls": 0,
            "cache_hits": 0,
            "retries": 0,
            "repairs": 0,
            "inconsistent_items": 0,
            "consistency_rate": None,  # order-independent by construction; nothing measured
            "pair_consistency_rate": None,
            "truncated_texts": 0,
            "input_tokens": 0,
            "output_tokens": 0,
            "cost": 0.0,
        }
        return results

    def _rules(self, requests: Sequence[RankRequest]) -> dict[str, set[str]]:
        """Rules fired per candidate (keyed "request index:candidate index"), from one curation
        pass over every candidate as the answer to its prompt."""
        if not requests:
            return {}
        rows = []
        for i, request in enumerate(requests):
            prompt = (
                [{"role": "user", "content": request.prompt}]
                if isinstance(request.prompt, str)
                else [
                    {"role": str(m.get("role", "user")), "content": str(m.get("content", ""))}
                    for m in request.prompt
                ]
            )
            for j, (_, text) in enumerate(request.candidates):
                rows.append(
                    {
                        "id": f"{i}:{j}",
                        "source": "judge",
                        "source_id": f"{i}:{j}",
                        "lang": None,
                        "messages": [*prompt, {"role": "assistant", "content": text}],
                        "meta": json.dumps({}),
                        "provenance": None,
                    }
                )
        frame = pl.DataFrame(rows, schema=CONVERSATIONS)
        ledger = curate(frame, self.filters).ledger
        fired: dict[str, set[str]] = {}
        for row_id, rule in ledger.select("row_id", "rule").iter_rows():
            fired.setdefault(row_id, set()).add(rule)
        return fired
