"""From the candidates table to judge requests and back to the rankings table, so every judge
(LLM, offline, panel) feeds the same pairs stage (``curation.feedback.pairs``)."""

from __future__ import annotations

import json
from typing import Any

import polars as pl

from curation.feedback.schema import rankings_frame
from curation.judge.types import Judge, RankRequest, RankResult


def rank_requests(candidates: pl.DataFrame) -> list[RankRequest]:
    """One request per candidate set, candidates in table order."""
    return [
        RankRequest(
            prompt_id=row["id"],
            prompt=row["prompt"],
            candidates=[(c["candidate_id"], c["text"]) for c in row["candidates"]],
            answer=row.get("answer"),
        )
        for row in candidates.select("id", "prompt", "answer", "candidates").iter_rows(named=True)
    ]


def rankings_rows(
    results: list[RankResult], requests: list[RankRequest], origin: str = "ai"
) -> list[dict[str, Any]]:
    texts = {r.prompt_id: dict(r.candidates) for r in requests}
    return [
        {
            "id": result.prompt_id,
            "judge": result.judge,
            "origin": origin,
            "candidate_ids": result.candidate_ids,
            "texts": [texts[result.prompt_id][cid] for cid in result.candidate_ids],
            "ranks": result.ranks,
            "status": result.status,
            "consistent": result.consistent,
            "meta": json.dumps(result.meta, sort_keys=True, default=str),
        }
        for result in results
    ]


def judge_candidates(candidates: pl.DataFrame, judge: Judge) -> pl.DataFrame:
    """The rankings table of ``judge`` over every candidate set; a set the judge could not rank
    stays in the table with its status (nothing is dropped silently)."""
    requests = rank_requests(candidates)
    results = judge.rank(requests) if requests else []
    if len(results) != len(requests):
        raise RuntimeError(
            f"judge {getattr(judge, 'name', judge)!r} returned {len(results)} results for "
            f"{len(requests)} requests"
        )
    return rankings_frame(rankings_rows(results, requests))


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
