"""Generic readers: any JSONL file (or JSON array file), Parquet file or HF dataset in a common
chat/instruction layout.

The layout is detected from the columns present (after ``options.columns`` renames them):

- ``messages`` (or ShareGPT's ``conversations``): a list of {role, content} or {from, value};
- ``prompt`` + ``completion``: strings, or message lists (TRL's conversational form);
- ``instruction`` + ``output`` (+ optional ``input``): Alpaca;
- ``chosen`` + ``rejected`` (+ optional ``prompt``): TRL preference rows, alone or next to one of
  the above. Without a prompt, chosen and rejected are whole conversations and their shared
  leading turns are the prompt (TRL's "implicit prompt").

Each file is decoded with a msgspec struct made for its layout, so type errors, truncated lines and
bad bytes become rejected rows exactly as in the format-specific readers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import polars as pl

from curation.errors import SourceError
from curation.ingest import IngestResult, ReadOptions, meta_json
from curation.readers.common import (
    Message,
    RowError,
    Turn,
    message_lists,
    messages_series,
    positional_labels,
    read_each,
    reject,
    rejected_frame,
    source_ids,
    source_name,
    to_turns,
    with_ids,
)
from curation.records import (
    JsonUnits,
    Records,
    convert_rows,
    decode_units,
    describe_error,
    json_units,
    parquet_rows,
)

CANONICAL = (
    "messages",
    "prompt",
    "completion",
    "instruction",
    "input",
    "output",
    "chosen",
    "rejected",
    "system",
    "id",
    "lang",
    "meta",
)
Text = str | list[Message]
SNIFF_LINES = 1000
SNIFF_BYTES = 8 << 20


@dataclass(frozen=True)
class Layout:
    """Which shape a source has and where each canonical field lives in it."""

    conversation: str | None  # "messages" | "prompt_completion" | "alpaca" | None
    preference: bool
    columns: dict[str, str]  # canonical name → input column, for the fields read

    @property
    def mixed(self) -> bool:
        """Both a conversation and a preference layout: each row may carry either, or both."""
        return self.conversation is not None and self.preference

    def record_type(self) -> type[msgspec.Struct]:
        """A struct decoding exactly this layout: its key fields required (optional when the
        layout is mixed, since a row may hold only one of the two), the rest optional."""
        key: dict[str, Any] = {}
        if self.conversation == "messages":
            key["messages"] = list[Message]
        elif self.conversation == "prompt_completion":
            key.update(prompt=Text, completion=Text)
        elif self.conversation == "alpaca":
            key.update(instruction=str, output=str)
        if self.preference:
            key.update(chosen=Text, rejected=Text)
        optional = {
            "prompt": Text,
            "input": str,
            "system": str,
            "id": str | int,
            "lang": str,
            # The input's own metadata (an object, or a JSON string): merged into ``meta``.
            "meta": dict[str, Any] | str,
        }
        if self.mixed:
            optional = {**optional, **key}
            key = {}
        fields: list[tuple] = [(name, kind) for name, kind in key.items()]
        fields += [
            (name, kind | None, None)
            for name, kind in optional.items()
            if name in self.columns and name not in key
        ]
        return msgspec.defstruct(
            "GenericRow",
            fields,
            rename={name: self.columns[name] for name, *_ in fields},
            kw_only=True,
            gc=False,
        )


# In a mixed layout, the field whose presence says a row holds a conversation, and the field the
# conversation then also needs.
_CONVERSATION_KEY = {
    "messages": ("messages", None),
    "prompt_completion": ("completion", "prompt"),
    "alpaca": ("output", "instruction"),
}


class ColumnMappingError(SourceError):
    """The column mapping does not fit the source, or the source needs one. The message names
    the mapping as ``options.columns`` (the Python API and the launch form); ``naming`` words it
    for another interface, such as the CLI's ``--column`` flag."""

    def __init__(self, path: object, template: str, option: str = "options.columns") -> None:
        self.template = template  # holds OPTION where the mapping is named
        super().__init__(path, template.replace(OPTION, option))

    def naming(self, option: str) -> SourceError:
        return SourceError(self.path, self.template.replace(OPTION, option))


OPTION = "{option}"  # not str.format: column names in the message may hold braces


def detect_layout(found: Iterable[str], mapping: dict[str, str], where: str) -> Layout:
    """The layout of a source with columns ``found``; ``SourceError`` when there is none."""
    found = set(found)
    unknown = sorted(set(mapping) - set(CANONICAL))
    if unknown:
        raise ColumnMappingError(
            where, f"unknown canonical name(s) {unknown} in {OPTION}; known: {list(CANONICAL)}"
        )
    missing = [
        f"{column!r} (for {name})" for name, column in mapping.items() if column not in found
    ]
    if missing:
        raise SourceError(
            where, f"missing column(s) {', '.join(missing)}; columns found: {sorted(found)}"
        )
    columns = {name: mapping.get(name, name) for name in CANONICAL}
    columns = {name: column for name, column in columns.items() if column in found}
    if "messages" not in columns and "messages" not in mapping and "conversations" in found:
        columns["messages"] = "conversations"  # ShareGPT
    if "messages" in columns:
        conversation = "messages"
    elif "prompt" in columns and "completion" in columns:
        conversation = "prompt_completion"
    elif "instruction" in columns and "output" in columns:
        conversation = "alpaca"
    else:
        conversation = None
    preference = "chosen" in columns and "rejected" in columns
    if conversation is None and not preference:
        raise ColumnMappingError(
            where,
            f"no known layout in columns {sorted(found)}: expected messages, "
            "prompt+completion, instruction+output or chosen+rejected "
            f"(or map yours with {OPTION})",
        )
    return Layout(conversation, preference, columns)


# ---- reading -------------------------------------------------------------------------------


def read_jsonl(paths: Sequence[Path], options: ReadOptions) -> IngestResult:
    labels = positional_labels(paths)

    def read_one(path: Path) -> IngestResult:
        source = source_name(options, path.stem)
        units = json_units(path)
        layout = detect_layout(json_columns(units), options.columns, str(path))
        records = decode_units(units, layout.record_type(), source)
        return build(records, layout, source, str(path), labels[path])

    return read_each(paths, read_one)


def read_parquet(paths: Sequence[Path], options: ReadOptions) -> IngestResult:
    labels = positional_labels(paths)

    def read_one(path: Path) -> IngestResult:
        source = source_name(options, path.stem)
        if not path.is_file():
            raise SourceError(path, "no such file" if not path.exists() else "not a file")
        try:
            found = pl.read_parquet_schema(path).keys()
        except Exception as error:  # polars raises several types for a file that is not Parquet
            raise SourceError(path, f"not a Parquet file ({type(error).__name__})") from None
        layout = detect_layout(found, options.columns, str(path))
        # Not read_records: it picks the format by suffix, and this reader was told it is Parquet.
        records = parquet_rows(path, layout.record_type(), source)
        return build(records, layout, source, str(path), labels[path])

    return read_each(paths, read_one)


def read_hf(paths: Sequence[str | Path], options: ReadOptions) -> IngestResult:
    """HF datasets: a ``save_to_disk`` folder, a local data file or folder, or a hub id (which
    needs the network unless cached; nothing here forces a download)."""
    # Hub ids are labelled like paths: ``a/data`` and ``b/data`` share the name ``data``.
    labels = positional_labels([str(path).rstrip("/") for path in paths])

    def read_one(path: str | Path) -> IngestResult:
        name = str(path)
        dataset = load_hf_dataset(name, options.split)
        source = source_name(options, Path(name.rstrip("/")).stem)
        layout = detect_layout(dataset.column_names, options.columns, name)
        if len(dataset) == 0:
            raise SourceError(name, f"split {options.split!r} has no rows")
        table = pl.from_arrow(dataset.with_format("arrow")[:])
        records = convert_rows(table.iter_rows(named=True), layout.record_type(), source, name)
        if not records.items and records.rejected:
            first = records.rejected[0]
            raise SourceError(
                name, f"no row could be read (row {first['line']}: {first['reason']})"
            )
        return build(records, layout, source, name, labels[name.rstrip("/")])

    return read_each(paths, read_one)


def load_hf_dataset(name: str, split: str) -> Any:
    import datasets  # lazily: heavy, and only this reader needs it

    local = Path(name)
    try:
        if local.is_dir() and any(
            (local / marker).exists()
            for marker in ("dataset_info.json", "dataset_dict.json", "state.json")
        ):
            dataset = datasets.load_from_disk(name)
            if isinstance(dataset, datasets.DatasetDict):
                if split not in dataset:
                    raise SourceError(name, f"no split {split!r}; splits: {sorted(dataset)}")
                dataset = dataset[split]
            return dataset
        if local.is_file():
            builder = _HF_BUILDERS.get(local.suffix.lower())
            if builder is None:
                raise SourceError(name, f"no HF loader for {local.suffix!r} files")
            return datasets.load_dataset(builder, data_files={split: name}, split=split)
        if local.exists():  # a folder of data files: load_dataset's local builders
            return datasets.load_dataset(name, split=split)
        return _load_by_name(datasets, name, split)
    except SourceError:
        raise
    except datasets.exceptions.DatasetGenerationError as error:
        raise SourceError(name, _generation_problem(local, error)) from None
    except Exception as error:  # datasets raises many types (missing path, offline, bad split)
        raise SourceError(name, f"cannot load dataset ({type(error).__name__}: {error})") from None


class HubOffline(SourceError):
    """A name that is no local file or folder, and hub downloads are off: what a user who
    mistyped a local folder should read first, with the hub as the other thing it could be."""


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def _load_by_name(datasets: Any, name: str, split: str) -> Any:
    """A dataset by a name that is no local file or folder: a hub id, from the hub or from the
    Hugging Face cache when downloads are off (``HF_HUB_OFFLINE``, which the CLI sets unless
    told ``--allow-hub``). A name that cannot be a hub id is a missing local path: said so at
    once, rather than after the hub client's retries."""
    missing = "cannot load dataset: no such file or folder"
    if not _HUB_ID.fullmatch(name):
        raise SourceError(name, missing)
    if not datasets.config.HF_HUB_OFFLINE:
        return datasets.load_dataset(name, split=split)
    try:
        return datasets.load_dataset(name, split=split)
    except (ConnectionError, FileNotFoundError):
        raise HubOffline(
            name, f"{missing}, nor a hub dataset in the Hugging Face cache (hub downloads are off)"
        ) from None


def _generation_problem(local: Path, error: Exception) -> str:
    """Why ``datasets`` could not build a split, in words a user can act on.

    Its own message ("An error occurred while generating the dataset") names neither file nor
    row: the cause it wraps (pyarrow's parse error) says what broke, and for local JSON files
    our own reader finds the first bad record's file and line, which pyarrow does not give.
    """
    cause = error.__cause__ or error.__context__
    problem = f"{type(cause).__name__}: {cause}" if cause is not None else str(error)
    where = _first_bad_json_record(local)
    if where:
        problem = f"{problem}; first bad record: {where}"
    return (
        f"cannot load dataset ({problem}); the HF loader fails the whole input on one bad "
        "record, while --format jsonl reads row by row and rejects bad lines one by one"
    )


def _first_bad_json_record(local: Path) -> str | None:
    """``FILE line N: reason`` of the first record that is not valid JSON in a local JSON file
    (or folder of them); None when there is none, or the input is not local JSON."""
    if local.is_file():
        files = [local]
    elif local.is_dir():
        files = sorted(p for p in local.rglob("*") if p.suffix.lower() in {".json", ".jsonl"})
    else:
        return None
    for path in files:
        try:
            units = json_units(path)
        except SourceError as error:
            return str(error)
        for number, raw in enumerate(units.units, start=1):
            if not bytes(raw).strip():
                continue  # the HF JSON loader skips blank lines
            try:
                msgspec.json.decode(raw)
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
                reason = describe_error(error, bytes(raw), units.unit)[0]
                return f"{path} {units.unit} {number}: {reason}"
    return None


_HF_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".arrow": "arrow",
}


def json_columns(units: JsonUnits) -> set[str]:
    """The keys of the first objects of a JSONL or JSON array file: enough to pick the layout.
    (A key that first appears after them is not seen: layouts are expected to be uniform, as
    every dataset tool writes them.)"""
    keys: set[str] = set()
    seen = read = count = 0
    for raw in units.units:
        count += 1
        read += len(raw)
        try:
            value = msgspec.json.decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            value = None  # a bad record is reported when the file is decoded for real
        if isinstance(value, dict):
            keys.update(value)
            seen += 1
        if seen >= SNIFF_LINES or read >= SNIFF_BYTES:
            break
    if not keys:
        raise SourceError(units.path, f"no JSON object in the first {count} {units.unit}(s)")
    return keys


# ---- building --------------------------------------------------------------------------------


def build(records: Records, layout: Layout, source: str, file: str, label: str) -> IngestResult:
    lines = records.lines
    ids = source_ids([getattr(row, "id", None) for row in records.items], lines, label)
    rejected = list(records.rejected)
    conversation_rows, preference_rows = _split_rows(records, layout, source, file, rejected)
    conversations = None
    preferences = None
    if conversation_rows is not None:
        items = [records.items[i] for i in conversation_rows]
        kept, bad = _conversations(
            items,
            [lines[i] for i in conversation_rows],
            [ids[i] for i in conversation_rows],
            layout,
        )
        for index in bad:
            reason, field = _explain(items[index], layout)
            line = lines[conversation_rows[index]]
            rejected.append(reject(source, file, line, reason, items[index], field))
        conversations = with_ids(kept, source, file)
    if preference_rows is not None:
        preferences = _preferences(
            [records.items[i] for i in preference_rows],
            [lines[i] for i in preference_rows],
            [ids[i] for i in preference_rows],
            layout,
            source,
            file,
            rejected,
        )
        preferences = with_ids(preferences, source, file, namespace="pair")
    return IngestResult.build(
        conversations=conversations, preferences=preferences, rejected=rejected_frame(rejected)
    )


def _split_rows(
    records: Records, layout: Layout, source: str, file: str, rejected: list[dict]
) -> tuple[list[int] | None, list[int] | None]:
    """Indices of the rows holding a conversation and of those holding a preference (None: no
    such part in this layout). Only a mixed layout needs a look at each row."""
    everything = list(range(len(records.items)))
    if not layout.mixed:
        return (
            everything if layout.conversation else None,
            everything if layout.preference else None,
        )
    key, partner = _CONVERSATION_KEY[layout.conversation or ""]
    conversation_rows: list[int] = []
    preference_rows: list[int] = []
    for index, row in enumerate(records.items):
        line = records.lines[index]
        has_conversation = getattr(row, key) is not None
        has_preference = row.chosen is not None or row.rejected is not None
        if has_conversation and partner and getattr(row, partner) is None:
            name = layout.columns[partner]
            rejected.append(reject(source, file, line, f"{name} is missing", row, name))
        elif has_conversation:
            conversation_rows.append(index)
        if has_preference:
            preference_rows.append(index)
        if not has_conversation and not has_preference:
            reason = f"row has neither {layout.columns[key]} nor chosen/rejected"
            rejected.append(reject(source, file, line, reason, row, None))
    return conversation_rows, preference_rows


def _row_messages(row: Any, layout: Layout) -> list[Message]:
    """The conversation of one row as raw messages (roles checked later, all rows at once)."""
    system = getattr(row, "system", None)
    head = [Message(role="system", content=system)] if system else []
    if layout.conversation == "messages":
        return head + row.messages if head else row.messages
    if layout.conversation == "prompt_completion":
        return head + _as_messages(row.prompt, "user") + _as_messages(row.completion, "assistant")
    user = row.instruction
    extra = getattr(row, "input", None)
    if extra:
        user = f"{user}\n\n{extra}"
    return [
        *head,
        Message(role="user", content=user),
        Message(role="assistant", content=row.output),
    ]


def _as_messages(value: str | list[Message], role: str) -> list[Message]:
    return [Message(role=role, content=value)] if isinstance(value, str) else value


def _explain(row: Any, layout: Layout) -> tuple[str, str | None]:
    """Why ``message_lists`` flagged a row: the same checks, one message at a time."""
    fields = {
        "messages": [("messages", "user")],
        "prompt_completion": [("prompt", "user"), ("completion", "assistant")],
    }.get(layout.conversation or "", [])
    try:
        for field, role in fields:
            name = layout.columns[field]
            if not to_turns(getattr(row, field), role, name):
                raise RowError(f"{name} is empty", name)
    except RowError as error:
        return error.reason, error.field
    return "conversation has no messages", None


def _conversations(
    items: list, lines: list[int], ids: list[str], layout: Layout
) -> tuple[pl.DataFrame, list[int]]:
    plain = layout.conversation == "messages" and "system" not in layout.columns
    # The common case passes the decoded lists straight through: no per-row Python at all.
    rows = [row.messages for row in items] if plain else [_row_messages(r, layout) for r in items]
    messages, bad = message_lists(rows)
    data = pl.DataFrame(
        {
            "source_id": ids,
            "line": lines,
            "lang": [getattr(row, "lang", None) for row in items],
        },
        schema={"source_id": pl.String, "line": pl.Int64, "lang": pl.String},
    ).with_columns(messages, meta=_meta_column(items, layout))
    if bad:
        keep = pl.Series([True] * len(items))
        keep = keep.scatter(bad, False)
        data = data.filter(keep)
    return data, bad


def _meta_column(items: list, layout: Layout) -> pl.Series | pl.Expr:
    """The ``meta`` column: the layout, plus the input's own meta when it has one."""
    if "meta" not in layout.columns:
        return pl.lit(meta_json({"layout": layout.conversation}))
    return pl.Series(
        [meta_json({**_input_meta(row.meta), "layout": layout.conversation}) for row in items],
        dtype=pl.String,
    )


def _input_meta(value: dict[str, Any] | str | None) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {"source_meta": value}
        if not isinstance(value, dict):
            return {"source_meta": value}
    return value or {}


def _preferences(
    items: list,
    lines: list[int],
    ids: list[str],
    layout: Layout,
    source: str,
    file: str,
    rejected: list[dict],
) -> pl.DataFrame:
    columns: dict[str, list] = {"source_id": [], "line": [], "lang": []}
    prompts: list[list[Turn]] = []
    chosen: list[list[Turn]] = []
    rejected_answers: list[list[Turn]] = []
    for row, line, source_id in zip(items, lines, ids, strict=True):
        try:
            prompt, good, bad = preference_turns(row, layout)
        except RowError as error:
            rejected.append(reject(source, file, line, error.reason, row, error.field))
            continue
        columns["source_id"].append(source_id)
        columns["line"].append(line)
        columns["lang"].append(getattr(row, "lang", None))
        prompts.append(prompt)
        chosen.append(good)
        rejected_answers.append(bad)
    return pl.DataFrame(
        columns, schema={"source_id": pl.String, "line": pl.Int64, "lang": pl.String}
    ).with_columns(
        messages_series("prompt", prompts),
        messages_series("chosen", chosen),
        messages_series("rejected", rejected_answers),
        origin=pl.lit("human"),
        margin=pl.lit(None, dtype=pl.Float64),
        judge=pl.lit(None, dtype=pl.String),
        source_ids=pl.concat_list(pl.col("source_id")),
    )


def preference_turns(row: Any, layout: Layout) -> tuple[list[Turn], list[Turn], list[Turn]]:
    """(prompt, chosen, rejected) turns of one TRL preference row; ``RowError`` if unusable."""
    names = layout.columns
    for name in ("chosen", "rejected"):
        if getattr(row, name) is None:  # only possible in a mixed layout
            raise RowError(f"{names[name]} is missing", names[name])
    chosen = to_turns(row.chosen, "assistant", names["chosen"])
    rejected = to_turns(row.rejected, "assistant", names["rejected"])
    if chosen == rejected:
        raise RowError("chosen equals rejected")
    system = getattr(row, "system", None)
    head: list[Turn] = [("system", system)] if system else []
    prompt_value = getattr(row, "prompt", None)
    if prompt_value is not None:
        prompt = head + to_turns(prompt_value, "user", names["prompt"])
    else:
        # Implicit prompt: the leading turns both conversations share.
        if isinstance(row.chosen, str) or isinstance(row.rejected, str):
            raise RowError("chosen/rejected are plain strings but the row has no prompt")
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        if shared == 0:
            raise RowError("chosen and rejected share no common prompt")
        prompt = head + chosen[:shared]
        chosen, rejected = chosen[shared:], rejected[shared:]
        if not chosen or not rejected:
            raise RowError("one of chosen/rejected is a prefix of the other: nothing to compare")
    if not any(role != "system" for role, _ in prompt):
        raise RowError("prompt is empty", names.get("prompt"))
    return prompt, chosen, rejected
