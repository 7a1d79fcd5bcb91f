"""UltraFeedback reader: one instruction with K rated completions → a ranking.

Every pair of completions with different scores becomes a preference pair (higher score chosen,
margin = score difference); the best completion also becomes an SFT conversation. The ratings come
from GPT-4, so the pairs are AI feedback (origin "ai") and name their judge.

Scores: UltraFeedback's ``overall_score`` (the critique's 1-10 rating) and the per-aspect ratings
(1-5) are on different scales, so one instruction never mixes them. It is ranked on the scale
that scores the most of its completions, ``overall_score`` on a tie (so whenever every completion
has one); the aspect scale is each completion's mean aspect rating (``fine-grained_score`` when
given, which is that mean). A completion with no usable score on that scale (missing, "N/A",
NaN) is left out of the ranking with a ledger row that says what it lacks; the others are still
ranked, and one scored completion is still an SFT conversation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import msgspec
import polars as pl

from curation.ingest import IngestResult, ReadOptions, meta_json
from curation.readers.common import (
    Turn,
    messages_series,
    read_each,
    rejected_frame,
    source_ids,
    source_name,
    with_ids,
)
from curation.records import read_records
from curation.schema import ledger_row, stable_id

JUDGE = meta_json({"model": "gpt-4", "dataset": "ultrafeedback"})
Number = str | int | float | None


class Aspect(msgspec.Struct, gc=False):
    rating: Number = msgspec.field(default=None, name="Rating")


class Completion(msgspec.Struct, gc=False):
    response: str
    model: str | None = None
    # Aspect → rating; some exports keep one entry per annotator, hence the list form, and
    # Parquet exports write an aspect missing from one completion as null.
    annotations: dict[str, Aspect | list[Aspect] | None] = {}
    overall_score: int | float | None = None
    fine_grained_score: int | float | None = msgspec.field(default=None, name="fine-grained_score")


class UltraFeedbackRow(msgspec.Struct, gc=False):
    instruction: str
    completions: list[Completion]
    source: str | None = None
    id: str | int | None = None
    # Reference answers (UltraFeedback keeps them for TruthfulQA-style prompts): carried into
    # the conversation's meta so evaluation can check answers without a judge.
    correct_answers: list[Any] | None = None
    incorrect_answers: list[Any] | None = None


def rating_value(value: Number) -> float | None:
    """A rating as a number; "N/A", blanks, NaN and other non-numbers count as no rating."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def aspect_mean(completion: Completion) -> float | None:
    """``fine-grained_score`` when it is a number (Parquet exports write NaN for "none"), else
    the mean of the numeric aspect ratings; None when there is neither."""
    given = rating_value(completion.fine_grained_score)
    if given is not None:
        return given
    ratings = []
    for aspect in completion.annotations.values():
        for entry in aspect if isinstance(aspect, list) else [aspect] if aspect else []:
            value = rating_value(entry.rating)
            if value is not None:
                ratings.append(value)
    return sum(ratings) / len(ratings) if ratings else None


def score_completions(completions: Sequence[Completion]) -> tuple[str, list[float | None]]:
    """The scale used for this instruction and each completion's score (None: unscored)."""
    overall = [rating_value(c.overall_score) for c in completions]
    aspects = [aspect_mean(c) for c in completions]
    if _scored(overall) >= _scored(aspects):
        return "overall_score", overall
    return "aspect_mean", aspects


def _scored(scores: list[float | None]) -> int:
    return sum(score is not None for score in scores)


def unscored_reason(index: int, completion: Completion, scale: str) -> str:
    """Why completion ``index`` is out of a ranking on ``scale``: what it lacks, and that a
    score it has on the other scale cannot stand in (one instruction never mixes scales)."""
    name = f"completion {index} ({completion.model or 'unknown model'})"
    ranked_by = "the scale that scores the most of its completions"
    if scale == "overall_score" and aspect_mean(completion) is not None:
        return (
            f"{name} has no numeric overall_score, which ranks this instruction ({ranked_by}); "
            "its aspect ratings are on another scale"
        )
    if scale == "aspect_mean" and rating_value(completion.overall_score) is not None:
        return (
            f"{name} has no numeric aspect rating, which ranks this instruction ({ranked_by}); "
            "its overall_score is on another scale"
        )
    return f"{name} has no numeric overall_score and no numeric aspect rating"


def read_ultrafeedback(paths: Sequence[Path], options: ReadOptions) -> IngestResult:
    source = source_name(options, "ultrafeedback")
    return read_each(paths, lambda path: _read_file(path, source))


class _Tables:
    """Column lists for the conversations and preferences of one file."""

    def __init__(self) -> None:
        self.conversation_cols: dict[str, list] = {"source_id": [], "line": [], "meta": []}
        self.conversation_messages: list[list[Turn]] = []
        self.pair_cols: dict[str, list] = {"source_id": [], "line": [], "margin": [], "row": []}
        self.prompts: list[list[Turn]] = []
        self.chosen: list[list[Turn]] = []
        self.rejected: list[list[Turn]] = []


def _read_file(path: Path, source: str) -> IngestResult:
    file = str(path)
    records = read_records(path, UltraFeedbackRow, source)
    ids = source_ids([row.id for row in records.items], records.lines, path.name)
    tables = _Tables()
    ledger: list[dict] = []
    for row, line, source_id in zip(records.items, records.lines, ids, strict=True):
        ledger.extend(_add_row(tables, row, line, source_id, source))

    conversations = pl.DataFrame(
        tables.conversation_cols,
        schema={"source_id": pl.String, "line": pl.Int64, "meta": pl.String},
    ).with_columns(messages_series("messages", tables.conversation_messages), lang=pl.lit("en"))
    pairs = pl.DataFrame(
        tables.pair_cols,
        schema={"source_id": pl.String, "line": pl.Int64, "margin": pl.Float64, "row": pl.String},
    ).with_columns(
        messages_series("prompt", tables.prompts),
        messages_series("chosen", tables.chosen),
        messages_series("rejected", tables.rejected),
        lang=pl.lit("en"),
        origin=pl.lit("ai"),
        judge=pl.lit(JUDGE),
        source_ids=pl.concat_list(pl.col("row")),
    )
    return IngestResult.build(
        conversations=with_ids(conversations, source, file),
        preferences=with_ids(pairs, source, file),
        rejected=rejected_frame(records.rejected),
        ledger=ledger,
    )


def _add_row(
    tables: _Tables, row: UltraFeedbackRow, line: int, source_id: str, source: str
) -> list[dict]:
    """Append one instruction's conversation and pairs; return its ledger rows."""
    row_id = stable_id(source, source_id)
    scale, scores = score_completions(row.completions)
    ledger = [
        ledger_row(
            row_id, "ingest", "ingest.unscored", "drop", unscored_reason(index, completion, scale)
        )
        for index, (completion, score) in enumerate(zip(row.completions, scores, strict=True))
        if score is None
    ]
    # Best first; sorted() is stable, so equal scores keep the input order.
    ranked = sorted(
        ((index, score) for index, score in enumerate(scores) if score is not None),
        key=lambda item: -item[1],
    )
    if len(ranked) < 2:
        # With one scored completion the conversation is still kept, only the pairs are missing.
        ledger.append(
            ledger_row(
                row_id,
                "ingest",
                "ingest.too_few_completions",
                "flag" if ranked else "drop",
                f"{len(ranked)} scored completion(s) of {len(row.completions)}; "
                "a preference pair needs 2",
            )
        )
    if not ranked:
        return ledger

    prompt: list[Turn] = [("user", row.instruction)]
    best_index, best_score = ranked[0]
    best = row.completions[best_index]
    tables.conversation_cols["source_id"].append(source_id)
    tables.conversation_cols["line"].append(line)
    tables.conversation_cols["meta"].append(
        meta_json(
            {
                "model": best.model,
                "score": best_score,
                "score_scale": scale,
                "source": row.source,
                "correct_answers": _answers(row.correct_answers),
                "incorrect_answers": _answers(row.incorrect_answers),
                "ranking": [
                    {"model": row.completions[index].model, "score": score}
                    for index, score in ranked
                ],
            }
        )
    )
    tables.conversation_messages.append([*prompt, ("assistant", best.response)])

    for (high, high_score), (low, low_score) in combinations(ranked, 2):
        if high_score == low_score:
            continue  # a tie says nothing about which answer is better
        tables.pair_cols["source_id"].append(f"{source_id}:{high}>{low}")
        tables.pair_cols["line"].append(line)
        tables.pair_cols["margin"].append(high_score - low_score)
        tables.pair_cols["row"].append(source_id)
        tables.prompts.append(prompt)
        tables.chosen.append([("assistant", row.completions[high].response)])
        tables.rejected.append([("assistant", row.completions[low].response)])
    return ledger


def _answers(values: list[Any] | None) -> list[str] | None:
    """Reference answers as strings; none (or UltraFeedback's ["None"] placeholder) → None."""
    answers = [str(value) for value in values or [] if value is not None and value != "None"]
    return answers or None
