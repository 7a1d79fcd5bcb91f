"""From the candidates table to judge requests and back to the rankings table, so every judge
(LLM, offline, panel) feeds the same pairs stage (``curation.feedback.pairs``).

Candidates whose texts are the same (``schema.same_text``) are one answer under two ids: the
candidates stage can sample the same text twice, and ids hash the sample index. Showing both
to a judge pays for a comparison that has no answer, makes every order-swap check on the set
disagree (the judge orders identical texts by position), and can yield a "preference" whose
chosen and rejected answers are the same text. So each set keeps the first id of each text, and
the rankings row records what was merged into it (``meta.merged_same_text``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import polars as pl

from curation.feedback.schema import check_unique_ids, rankings_frame, same_text
from curation.judge.types import Judge, RankRequest, RankResult

Merged = dict[str, list[str]]  # kept candidate id -> the ids of the same text merged into it


def distinct_candidates(candidates: Sequence[dict]) -> tuple[list[tuple[str, str]], Merged]:
    """(candidate_id, text) of the first candidate of each text, in table order, and the ids
    merged into each kept one."""
    kept: dict[str, str] = {}  # same_text(text) -> kept candidate id
    distinct: list[tuple[str, str]] = []
    merged: Merged = {}
    for candidate in candidates:
        cid, text = candidate["candidate_id"], candidate["text"]
        key = same_text(text) if text is not None else None
        if key is not None and key in kept:
            merged.setdefault(kept[key], []).append(cid)
            continue
        if key is not None:
            kept[key] = cid
        distinct.append((cid, text))
    return distinct, merged


def rank_requests(candidates: pl.DataFrame) -> tuple[list[RankRequest], dict[str, Merged]]:
    """One request per candidate set, candidates in table order with same-text repeats merged;
    and, by prompt id, what was merged. A repeated prompt id is refused before any call."""
    check_unique_ids(candidates["id"].to_list(), "candidates")
    requests, merged = [], {}
    rows = candidates.select("id", "prompt", "answer", "candidates").iter_rows(named=True)
    for row in rows:
        distinct, repeats = distinct_candidates(row["candidates"] or [])
        if repeats:
            merged[row["id"]] = repeats
        requests.append(RankRequest(row["id"], row["prompt"], distinct, row.get("answer")))
    return requests, merged


def rankings_rows(
    results: list[RankResult],
    requests: list[RankRequest],
    origin: str = "ai",
    merged: dict[str, Merged] | None = None,
) -> list[dict[str, Any]]:
    texts = {r.prompt_id: dict(r.candidates) for r in requests}
    merged = merged or {}
    rows = []
    for result in results:
        meta = dict(result.meta)
        if result.prompt_id in merged:
            meta["merged_same_text"] = merged[result.prompt_id]
        rows.append(
            {
                "id": result.prompt_id,
                "judge": result.judge,
                "origin": origin,
                "candidate_ids": result.candidate_ids,
                "texts": [texts[result.prompt_id][cid] for cid in result.candidate_ids],
                "ranks": result.ranks,
                "status": result.status,
                "consistent": result.consistent,
                "meta": json.dumps(meta, sort_keys=True, default=str),
            }
        )
    return rows


def judge_candidates(candidates: pl.DataFrame, judge: Judge) -> pl.DataFrame:
    """The rankings table of ``judge`` over every candidate set; a set the judge could not rank
    stays in the table with its status (nothing is dropped silently)."""
    requests, merged = rank_requests(candidates)
    results = judge.rank(requests) if requests else []
    if len(results) != len(requests):
        raise RuntimeError(
            f"judge {getattr(judge, 'name', judge)!r} returned {len(results)} results for "
            f"{len(requests)} requests"
        )
    return rankings_frame(rankings_rows(results, requests, merged=merged))


def failed_sets(rankings: pl.DataFrame) -> list[tuple[str, str]]:
    """(prompt id, first reason) of every set the judge failed on: status ``error`` from calls
    that failed (HTTP errors after the retries, timeouts, protocol errors). Sets skipped for
    their input (too few or too many candidates: ``meta.reason``) and sets the endpoint
    refused outright (``meta.rejected``: a content filter's 400) are not failures a retry
    would change: they stay in the table with their reason, and do not fail the step."""
    failed = []
    for row_id, meta in rankings.filter(pl.col("status") == "error").select("id", "meta").rows():
        parsed = _meta(meta)
        if "reason" in parsed or parsed.get("rejected"):
            continue
        errors = parsed.get("errors") or []
        if errors:
            reason = str(errors[0])
        elif isinstance(parsed.get("judges"), dict):  # a panel none of whose judges ranked it
            statuses = {name: _member_state(v or {}) for name, v in parsed["judges"].items()}
            reason = f"no judge of the panel ranked it: {statuses}"
        else:
            reason = "no usable verdict"
        failed.append((row_id, reason))
    return failed


def _member_state(said: dict) -> str | None:
    """A panel member's part in a failed set: its status, or why it was left out of the vote
    (its status reads ``ok`` then, since it answered, about other candidates)."""
    return f"left out: {said['left_out']}" if said.get("left_out") else said.get("status")


def error_share_report(rankings: pl.DataFrame, max_error_share: float) -> tuple[dict, str | None]:
    """Counts of failed sets, and the message to fail with when their share of all sets is
    above ``max_error_share`` (None when it is not)."""
    failed = failed_sets(rankings)
    total = rankings.height
    share = len(failed) / total if total else 0.0
    report = {"failed_sets": len(failed), "sets": total, "failed_share": share}
    if share <= max_error_share:
        return report, None
    reasons = "; ".join(f"{row_id}: {reason}" for row_id, reason in failed[:3])
    message = (
        f"the judge failed on {len(failed)} of {total} candidate set(s) ({share:.1%}, above "
        f"max_error_share {max_error_share:g}); first: {reasons}. Answered calls are cached: "
        "a re-run pays only for the failed sets"
    )
    return report, message


def _meta(meta: str | None) -> dict[str, Any]:
    try:
        loaded = json.loads(meta) if meta else {}
    except json.JSONDecodeError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def build_judge(settings: dict[str, Any], api_key: str | None = None) -> Judge:
    """A judge from plain settings (a CLI config file or a Dagster resource's fields):
    ``backend: offline`` (the default: no network), ``backend: openai`` with ``JudgeConfig``
    fields, or ``panel: [settings, ...]`` with ``vote`` and ``weights``. The key is passed in,
    never read from the settings."""
    from dataclasses import fields

    from curation.judge.client import OpenAIJudge
    from curation.judge.config import JudgeConfig
    from curation.judge.offline import OfflineJudge
    from curation.judge.panel import JudgePanel

    settings = dict(settings)
    if "panel" in settings:
        members = [build_judge(member, api_key) for member in settings.pop("panel")]
        return JudgePanel(members, settings.pop("weights", None), settings.pop("vote", "borda"))
    backend = settings.pop("backend", "openai" if "base_url" in settings else "offline")
    if backend == "offline":
        return OfflineJudge()
    if backend != "openai":
        raise ValueError(f"backend: expected 'offline' or 'openai', got {backend!r}")
    known = {f.name for f in fields(JudgeConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"unknown judge setting(s) {unknown}; known: {sorted(known)}")
    if "rubric" in settings:
        settings["rubric"] = tuple(settings["rubric"])
    return OpenAIJudge(JudgeConfig(**settings), api_key=api_key)
