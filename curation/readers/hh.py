"""Anthropic HH-RLHF reader: ``chosen``/``rejected`` transcripts → one preference pair per line.

Both transcripts hold the whole dialogue ("\\n\\nHuman: ..." / "\\n\\nAssistant: ...") and must
agree on every turn but the last Assistant one. The shared turns are the prompt. Each line also
gives one conversation (prompt + chosen answer) so SFT can learn from HH's preferred answers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import msgspec
import polars as pl

from curation.ingest import IngestResult, ReadOptions, meta_json
from curation.readers.common import (
    Turn,
    messages_series,
    positional_labels,
    read_each,
    reject,
    rejected_frame,
    source_ids,
    source_name,
    with_ids,
)
from curation.records import read_records

# A speaker tag opens a turn at the start of the text or after a blank line. HH sometimes leaves
# an empty last turn ("\n\nAssistant:" and nothing after), so the space after the colon is optional.
_SPEAKER = re.compile(r"(?:\A\s*|\n\n)(Human|Assistant):[ ]?")
_ROLE = {"Human": "user", "Assistant": "assistant"}
CONVERSATION_META = meta_json({"from": "hh_chosen"})


class HHRow(msgspec.Struct, gc=False):
    chosen: str
    rejected: str
    id: str | int | None = None


class PairError(ValueError):
    """Why a chosen/rejected pair cannot become a preference row (the rejected row's reason)."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


def parse_transcript(text: str, field: str) -> list[Turn]:
    """Split one HH transcript into (role, content) turns, content stripped."""
    parts = _SPEAKER.split(text)
    # split() gives [before, speaker, content, speaker, content, ...]
    if parts[0].strip():
        raise PairError(f"{field} has text before its first Human/Assistant tag", field)
    turns = [
        (_ROLE[speaker], content.strip())
        for speaker, content in zip(parts[1::2], parts[2::2], strict=True)
    ]
    if not turns:
        raise PairError(f"{field} has no Human/Assistant turns", field)
    return turns


def split_pair(chosen: str, rejected: str) -> tuple[list[Turn], Turn, Turn]:
    """(prompt turns, chosen answer, rejected answer), or ``PairError`` naming the problem."""
    if chosen == rejected:
        raise PairError("chosen equals rejected")
    chosen_turns = parse_transcript(chosen, "chosen")
    rejected_turns = parse_transcript(rejected, "rejected")
    for field, turns in (("chosen", chosen_turns), ("rejected", rejected_turns)):
        if not any(role == "assistant" for role, _ in turns):
            raise PairError(f"{field} has no Assistant turn", field)
        if turns[-1][0] != "assistant":
            raise PairError(f"{field} does not end with an Assistant turn", field)
    prompt = chosen_turns[:-1]
    if prompt != rejected_turns[:-1]:
        if not prompt or not rejected_turns[:-1] or prompt[0] != rejected_turns[0]:
            raise PairError("chosen and rejected share no common prompt")
        raise PairError("chosen and rejected differ before the last Assistant turn")
    if not prompt or prompt[-1][0] != "user":
        raise PairError("prompt does not end with a Human turn")
    if chosen_turns[-1] == rejected_turns[-1]:
        # Same turns once whitespace is stripped: nothing to prefer.
        raise PairError("chosen equals rejected")
    return prompt, chosen_turns[-1], rejected_turns[-1]


def read_hh(paths: Sequence[Path], options: ReadOptions) -> IngestResult:
    source = source_name(options, "hh")
    labels = positional_labels(paths)
    return read_each(paths, lambda path: _read_file(path, source, labels[path]))


def _read_file(path: Path, source: str, label: str) -> IngestResult:
    """One file; ``label`` names its rows that have no id (``label:line``)."""
    file = str(path)
    records = read_records(path, HHRow, source)
    ids = source_ids([row.id for row in records.items], records.lines, label)
    rejected = list(records.rejected)
    kept_ids: list[str] = []
    kept_lines: list[int] = []
    prompts: list[list[Turn]] = []
    chosen: list[list[Turn]] = []
    rejected_answers: list[list[Turn]] = []
    for row, line, source_id in zip(records.items, records.lines, ids, strict=True):
        try:
            prompt, good, bad = split_pair(row.chosen, row.rejected)
        except PairError as error:
            rejected.append(reject(source, file, line, error.reason, row, error.field))
            continue
        kept_ids.append(source_id)
        kept_lines.append(line)
        prompts.append(prompt)
        chosen.append([good])
        rejected_answers.append([bad])

    base = pl.DataFrame(
        {"source_id": kept_ids, "line": kept_lines},
        schema={"source_id": pl.String, "line": pl.Int64},
    )
    preferences = with_ids(
        base.with_columns(
            messages_series("prompt", prompts),
            messages_series("chosen", chosen),
            messages_series("rejected", rejected_answers),
            lang=pl.lit("en"),
            origin=pl.lit("human"),
            margin=pl.lit(None, dtype=pl.Float64),
            judge=pl.lit(None, dtype=pl.String),
            source_ids=pl.concat_list(pl.col("source_id")),
        ),
        source,
        file,
        namespace="pair",
    )
    conversations = with_ids(
        base.with_columns(
            messages_series("messages", [p + c for p, c in zip(prompts, chosen, strict=True)]),
            lang=pl.lit("en"),
            meta=pl.lit(CONVERSATION_META),
        ),
        source,
        file,
    )
    return IngestResult.build(
        conversations=conversations, preferences=preferences, rejected=rejected_frame(rejected)
    )
