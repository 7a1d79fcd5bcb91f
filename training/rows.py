"""Row checks for the conversational columns the preference and RL stages read, before any
model is loaded.

Two kinds of bad row, two policies:

- **malformed** (a null where messages belong, plain text instead of a list of messages, a
  message without a role or with null content): the dataset was written wrong, and training on
  the rest would hide it. The stage refuses, naming the dataset, split, the first offending
  rows with their ids, and the field. The libraries otherwise failed far from the cause
  (``TypeError: can only concatenate list (not "NoneType") to list``, a jinja2
  ``UndefinedError``, ``Chat messages should be dicts ... got 'W'``), some after the models
  were loaded, some mid-training.
- **semantically empty** (a prompt with no user text: an empty list, a system turn alone, an
  empty question; an answer with no assistant text: an empty list, an empty answer, a user
  turn in its place): well-formed but teaching nothing, as a pair whose chosen equals its
  rejected. Such rows are left out and counted, the way the stages already count the pairs
  they drop, and the count reaches metrics and lineage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

# What a column must hold to be usable: a prompt needs a user turn with text, an answer an
# assistant turn with text.
Kind = Literal["prompt", "answer"]
ROLE_NEEDED: dict[str, str] = {"prompt": "user", "answer": "assistant"}
# The reasons a row is left out, as they appear in ``dropped`` (lineage) and metrics.
EMPTY_REASON: dict[str, str] = {
    "prompt": "prompt_without_user_text",
    "answer": "answer_without_assistant_text",
}
NAMED_ROWS = 3  # offending rows quoted in a refusal


def message_problem(value: Any) -> str | None:
    """What is wrong with ``value`` as a list of ``{role, content}`` chat messages with string
    roles and contents (``null``, ``plain text '...'``, ``message 0 (assistant) has content
    None``), or None when it is one (an empty list is well-formed, if empty)."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"plain text {shorten(value)}"
    if not isinstance(value, Sequence):
        return f"a {type(value).__name__}"
    for number, message in enumerate(value):
        if not isinstance(message, Mapping):
            return f"message {number} is {shorten(message)}, not a mapping"
        role = message.get("role")
        if not isinstance(role, str) or not role:
            return f"message {number} has role {shorten(role)}"
        content = message.get("content")
        if not isinstance(content, str):
            return f"message {number} ({role}) has content {shorten(content)}"
    return None


def has_text(messages: Sequence[Mapping[str, Any]], role: str) -> bool:
    """Whether some message of ``role`` says something (not empty, not only whitespace)."""
    return any(m["role"] == role and m["content"].strip() for m in messages)


def shorten(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def usable_rows(
    path: str | Path, split_name: str, split: Any, fields: Mapping[str, Kind]
) -> tuple[list[int], dict[str, int]]:
    """The indices of the rows of ``split`` (a datasets.Dataset) whose ``fields`` (column →
    ``prompt`` or ``answer``) are usable, and how many were left out per reason
    (``EMPTY_REASON``; a row is counted once, under its first empty field).

    Raises ValueError naming ``path``, the split, the first malformed rows (index and id) and
    the field when a value is not a list of chat messages; and naming the column when the
    split lacks one."""
    missing = [column for column in fields if column not in split.column_names]
    if missing:
        raise ValueError(
            f"{path}: the {split_name} split lacks column(s) {missing} (it has "
            f"{sorted(split.column_names)})"
        )
    # whole columns as Python lists: a datasets Column reads Arrow again at every index
    ids = list(split["id"]) if "id" in split.column_names else [None] * len(split)
    columns = {column: list(split[column]) for column in fields}
    kept: list[int] = []
    dropped = {EMPTY_REASON[kind]: 0 for kind in fields.values()}
    malformed: list[str] = []
    bad_rows = 0
    for index in range(len(split)):
        problems = [
            (column, problem)
            for column in fields
            if (problem := message_problem(columns[column][index])) is not None
        ]
        if problems:
            bad_rows += 1
            if len(malformed) < NAMED_ROWS:
                column, problem = problems[0]
                where = f"row {index}" + (f" (id {ids[index]})" if ids[index] is not None else "")
                malformed.append(f"{where}: {column}: {problem}")
            continue
        empty = next(
            (
                kind
                for column, kind in fields.items()
                if not has_text(columns[column][index], ROLE_NEEDED[kind])
            ),
            None,
        )
        if empty is None:
            kept.append(index)
        else:
            dropped[EMPTY_REASON[empty]] += 1
    if malformed:
        more = f"; and {bad_rows - len(malformed)} more" if bad_rows > len(malformed) else ""
        names = ", ".join(fields)
        each = f"each of {names}" if len(fields) > 1 else names
        raise ValueError(
            f"{path}: {bad_rows} of the {len(split)} rows of the {split_name} split are "
            f"malformed: {'; '.join(malformed)}{more}; {each} must be a list of "
            "{role, content} messages with string role and content (the conversational format)"
        )
    return kept, dropped
