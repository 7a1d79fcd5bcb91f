"""Helpers every reader shares: source naming, ids, provenance and fast column building.

Readers decode rows into msgspec structs (``curation.records``), pull plain Python lists out of
them with list comprehensions, and build the nested columns here in one go: text columns become
message lists through polars expressions, ragged turn lists through one pyarrow ``ListArray``.
No per-row dicts are built for a whole frame, which is what keeps a million rows in seconds.
"""

from __future__ import annotations

import gc
import os
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import accumulate
from pathlib import PurePath, PurePosixPath
from typing import TypeVar

import msgspec
import polars as pl
import pyarrow as pa

from curation.ingest import IngestResult, ReadOptions, meta_json
from curation.schema import MESSAGES, REJECTED, frame, rejected_row, stable_id_expr

P = TypeVar("P")  # a path, or for HF datasets a name
Turn = tuple[str, str]  # (role, content), role already one of schema.ROLES


def source_name(options: ReadOptions, default: str) -> str:
    return options.source or default


def positional_labels(paths: Sequence[P]) -> dict[P, str]:
    """The label each input's rows are known by when they carry no id of their own
    (``label:line``): the file name, or, where two inputs of one read share a name, the
    shortest trailing part of the path that tells them apart (``d1/train.jsonl``).

    Why this rule: a row's id must be unique across the inputs read together and the same on
    every run, and ``name:line`` is what every existing id, golden file, ledger and trace of
    inputs with distinct names already holds, so it must not change where it was unique. The
    full path would be unique too, but it would change every id whenever the data moved folder
    (or the command ran from another directory); a suffix changes only with the folders that
    actually distinguish the colliding files, and ``trace --row d1/train.jsonl:1`` still finds
    the row by its provenance path. Paths are made absolute first, so ``a/x.jsonl`` and
    ``../a/x.jsonl`` are told apart by the folder above ``a``. A path given twice is the same
    input twice and keeps one label: its rows are the same rows, and duplicates of each other.
    A label depends on which inputs are read together: a file read alone keeps its name.
    """
    parts = {path: PurePath(os.path.abspath(path)).parts for path in paths}
    by_name: dict[str, set[tuple[str, ...]]] = {}
    for full in parts.values():
        by_name.setdefault(full[-1], set()).add(full)
    labels = {}
    for path, full in parts.items():
        others = by_name[full[-1]] - {full}
        depth = 1
        # Distinct absolute paths differ in some component (the root counts as one), so the
        # loop ends by the full path at the latest.
        while any(other[-depth:] == full[-depth:] for other in others):
            depth += 1
        labels[path] = PurePosixPath(*full[-depth:]).as_posix()
    return labels


def source_ids(ids: Sequence[object], lines: Sequence[int], label: str) -> list[str]:
    """The input's own id when it has one, else ``label:line``; ``label`` comes from
    ``positional_labels`` so that it is unique across the inputs of one read."""
    return [
        f"{label}:{line}" if raw is None else str(raw) for raw, line in zip(ids, lines, strict=True)
    ]


def provenance_expr(file: str, line: pl.Expr | None = None) -> pl.Expr:
    line = pl.col("line") if line is None else line
    return pl.struct(
        file=pl.lit(file, dtype=pl.String),
        line=line.cast(pl.Int64),
        ids=pl.lit([], dtype=pl.List(pl.String)),
    )


def text_messages(data: pl.DataFrame, *turns: tuple[str, str]) -> pl.Series:
    """A messages column from text columns: ``text_messages(df, ("user", "inputs"), ...)``.

    Every row gets the same turns, so the structs are stacked turn by turn, interleaved with one
    gather and cut into fixed-size rows by ``reshape``. That moves only string views; the obvious
    ``pl.concat_list`` of structs copies every string and was 20x slower on FLAN-sized rows.
    """
    height, width = data.height, len(turns)
    stacked = pl.concat(
        [
            data.select(m=pl.struct(role=pl.lit(role, dtype=pl.String), content=pl.col(column)))
            for role, column in turns
        ]
    ).get_column("m")
    # Row r's turn t sits at t * height + r in the stack; read them back in row-major order.
    order = pl.int_range(height * width, eager=True)
    order = (order % width) * height + order // width
    return stacked.gather(order).reshape((height, width)).cast(MESSAGES).alias("messages")


def messages_series(name: str, rows: Sequence[Sequence[Turn]]) -> pl.Series:
    """A messages column from ragged per-row turn lists, built as one Arrow array (no dicts)."""
    offsets = [0, *accumulate(len(turns) for turns in rows)]
    values = pl.DataFrame(
        {
            "role": [role for turns in rows for role, _ in turns],
            "content": [content for turns in rows for _, content in turns],
        },
        schema={"role": pl.String, "content": pl.String},
    ).to_struct("m")
    array = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), values.to_arrow())
    return pl.Series(name, array).cast(MESSAGES)


def with_ids(
    data: pl.DataFrame, source: str, file: str, namespace: str | None = None
) -> pl.DataFrame:
    """Add ``id``, ``source`` and ``provenance`` from ``source_id`` and ``line`` columns.

    ``namespace`` keeps ids apart when one input row yields rows of two tables (an HH line is a
    conversation and a pair): the ledger's ``row_id`` must name exactly one row.
    """
    return data.with_columns(
        id=stable_id_expr(f"{source}/{namespace}" if namespace else source, pl.col("source_id")),
        source=pl.lit(source, dtype=pl.String),
        provenance=provenance_expr(file),
    )


def meta_for_groups(data: pl.DataFrame, keys: Sequence[str]) -> pl.Series:
    """``meta_json`` of ``keys`` per row, computed once per distinct key combination.

    Columns like FLAN's task fields take few distinct values, so this runs ``meta_json`` a few
    thousand times instead of once per row and stays byte-identical to it.
    """
    keys = list(keys)
    combos = data.select(keys).unique()
    metas = [meta_json(row) for row in combos.iter_rows(named=True)]
    combos = combos.with_columns(meta=pl.Series(metas, dtype=pl.String))
    joined = data.select(keys).join(
        combos, on=keys, how="left", nulls_equal=True, maintain_order="left"
    )
    return joined.get_column("meta")


def raw_text(item: object) -> str:
    """A decoded record back as JSON, for the ``raw`` preview of a row rejected after decoding."""
    return msgspec.json.encode(item).decode()


def rejected_frame(rows: Iterable[dict]) -> pl.DataFrame:
    """Rejected rows of one file in line order (they are found in several passes)."""
    return frame(rows, REJECTED).sort("line", maintain_order=True, nulls_last=True)


def reject(
    source: str, file: str, line: int | None, reason: str, item: object, field: str | None
) -> dict:
    """A rejected row for a record that decoded but cannot be used."""
    return rejected_row(source, file, line, reason, raw_text(item), field)


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while millions of records are made.

    Decoding allocates one container per row (structs, message lists); each allocation burst
    triggers collections that walk every live object again, which cost as much as the decoding
    itself (3.5 s against 1.9 s for a million chat rows). These objects hold no cycles, so
    reference counting frees them all the same.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_each(paths: Sequence[P], read_one: Callable[[P], IngestResult]) -> IngestResult:
    """Read every path on its own and stack the results. A reader labels positional ids with
    ``positional_labels(paths)[path]``, not the path's name, so that two inputs of one read
    with the same file name never give two rows one id."""
    with paused_gc():
        return IngestResult.concat([read_one(path) for path in paths])


# Chat messages as they come in the wild: {role, content} (OpenAI/TRL) or {from, value}
# (ShareGPT). Both keys are optional here so that a message with a missing or null part decodes
# and is then rejected with a reason that names the message, not a generic type error.
class Message(msgspec.Struct, gc=False):
    role: str | None = None
    content: str | None = None
    sender: str | None = msgspec.field(default=None, name="from")
    value: str | None = None


ROLE_ALIASES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "system": "system",
}


class RowError(ValueError):
    """A decoded row that still cannot be used; ``reason`` and ``field`` go to the rejected row."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


def to_turns(value: str | list[Message], default_role: str, field: str) -> list[Turn]:
    """One input value as canonical turns: a string is one ``default_role`` turn."""
    if isinstance(value, str):
        return [(default_role, value)]
    turns = []
    for index, message in enumerate(value):
        raw_role = message.role if message.role is not None else message.sender
        content = message.content if message.content is not None else message.value
        where = f"{field}[{index}]"
        if raw_role is None:
            raise RowError(f"{where} has no role", f"{where}.role")
        role = ROLE_ALIASES.get(raw_role.strip().lower())
        if role is None:
            raise RowError(f"{where} has unknown role {raw_role!r}", f"{where}.role")
        if content is None:
            raise RowError(f"{where} has null content", f"{where}.content")
        turns.append((role, content))
    return turns


def message_lists(rows: Sequence[Sequence[Message]]) -> tuple[pl.Series, list[int]]:
    """A messages column from decoded message lists, and the indices of the rows that are bad
    (an unknown role, a null content, or no message at all).

    The lists are flattened once with comprehensions; role mapping and null checks run on the
    flat polars columns, and the nested column is cut back out of them by offsets. Bad rows keep
    a placeholder in the column: the caller drops them and explains each with ``to_turns``.
    """
    lengths = [len(messages) for messages in rows]
    flat = [message for messages in rows for message in messages]
    raw_roles = pl.Series(
        [m.role if m.role is not None else m.sender for m in flat], dtype=pl.String
    )
    contents = pl.Series(
        [m.content if m.content is not None else m.value for m in flat], dtype=pl.String
    )
    # Few distinct role spellings: normalise each once, then map the whole column.
    spellings = raw_roles.unique().drop_nulls().to_list()
    roles = raw_roles.replace_strict(
        {raw: ROLE_ALIASES.get(raw.strip().lower()) for raw in spellings},
        default=None,
        return_dtype=pl.String,
    )
    offsets = [0, *accumulate(lengths)]
    flat_bad = (roles.is_null() | contents.is_null()).arg_true().to_list()
    bad = {bisect_right(offsets, index) - 1 for index in flat_bad}
    bad.update(index for index, length in enumerate(lengths) if length == 0)
    # Through a polars struct: pyarrow's own StructArray of these columns made the ListArray
    # constructor 4x slower.
    values = pl.DataFrame({"role": roles, "content": contents}).to_struct("m").to_arrow()
    array = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), values)
    return pl.Series("messages", array).cast(MESSAGES), sorted(bad)
