"""Tables of the feedback flow and the ids that tie them together.

Candidate ids hash the text with its origin, so the same answer sampled twice by one checkpoint
with different seeds stays two candidates, while a rerun reproduces every id. The hash is the one
``training.candidates.candidate_id`` computes (``stable_id`` of origin and the rest), so model and
dataset candidates share one id space.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from curation.schema import MESSAGES, stable_id

CANDIDATE = pl.Struct(
    {
        "candidate_id": pl.String,
        "text": pl.String,
        "origin": pl.String,  # model | dataset | reference
        "model": pl.String,  # checkpoint path or dataset (source) name
        "sampling": pl.String,  # JSON of the sampling settings; "" for existing completions
    }
)

CANDIDATES = pl.Schema(
    {
        "id": pl.String,
        "source": pl.String,
        "prompt": MESSAGES,
        "reference": pl.String,  # the human reference answer, where the source has one
        "answer": pl.String,  # a synthetic task's checkable answer
        "task": pl.String,  # optional: the synthetic task kind (some are case-sensitive)
        "candidates": pl.List(CANDIDATE),
    }
)

RANKINGS = pl.Schema(
    {
        "id": pl.String,
        "judge": pl.String,
        "origin": pl.String,  # ai | human
        "candidate_ids": pl.List(pl.String),
        "texts": pl.List(pl.String),
        "ranks": pl.List(pl.Int64),  # 1 = best, ties share a rank; null when there is none
        "status": pl.String,  # ok | unparseable | error | inconsistent
        "consistent": pl.Boolean,
        "meta": pl.String,  # JSON
    }
)


def candidate_id(origin: str, model: str, sampling: str, text: str) -> str:
    return stable_id(origin, f"{model}\x1f{sampling}\x1f{text}")


def prompt_key(prompt: Sequence[dict]) -> str:
    """A canonical string for a prompt (its roles and texts), used to match the same prompt
    across the prompt dataset, the preference table and the conversations."""
    return json.dumps([[m["role"], m["content"]] for m in prompt], ensure_ascii=False)


def prompt_id(source: str, prompt: Sequence[dict]) -> str:
    """Id of a prompt that is not in the prompt dataset (e.g. an OpenAssistant sibling set
    deeper in a tree than the thread that was kept)."""
    return stable_id(source, "prompt\x1f" + prompt_key(prompt))


def same_text(text: str) -> str:
    """Texts that differ only in surrounding whitespace are one candidate."""
    return text.strip()


def render_prompt(prompt: Sequence[dict]) -> str:
    """A prompt as plain text for people (annotation tools) and judges."""
    if len(prompt) == 1:
        return prompt[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt)


def rankings_frame(rows: Sequence[dict]) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=RANKINGS) if rows else pl.DataFrame(schema=RANKINGS)


def candidates_frame(rows: Sequence[dict]) -> pl.DataFrame:
    if not rows:
        return pl.DataFrame(schema=CANDIDATES)
    return pl.DataFrame(list(rows), schema=CANDIDATES)


def check_unique_ids(ids: Sequence[str | None], where: str) -> None:
    """Refuse a prompt id that appears twice: rankings are matched back to prompts by id, so a
    repeat would attach one row's ranking to another row's prompt (or fail after the judge was
    paid). Rows are counted from 0, as polars and the candidates stage count them."""
    first: dict[str | None, int] = {}
    for row, value in enumerate(ids):
        if value in first:
            raise ValueError(f"{where}: row {row}: id {value!r} repeats row {first[value]}")
        first[value] = row


def read_candidates(path: str | Path) -> pl.DataFrame:
    """candidates.parquet from the training stage or from ``merge_candidates``; the optional
    columns missing from older files are added as nulls. A repeated prompt id is refused here,
    before any judge call is paid for."""
    data = pl.read_parquet(path)
    missing = [c for c in ("id", "prompt", "candidates") if c not in data.columns]
    if missing:
        raise ValueError(f"{path}: not a candidates table (missing {', '.join(missing)})")
    check_unique_ids(data["id"].to_list(), str(path))
    for name, dtype in CANDIDATES.items():
        if name not in data.columns:
            data = data.with_columns(pl.lit(None, dtype=dtype).alias(name))
    return data.select([pl.col(n).cast(t) for n, t in CANDIDATES.items()])
