"""Typed, line-exact reading of JSONL and Parquet sources.

Each reader declares its record as a ``msgspec.Struct``; decoding validates types in C, so a row
with a wrong type, a missing field, a truncated line or a bad UTF-8 byte becomes a rejected row that
names the file, the line and the field, and every good row keeps its line number for provenance.
A file holding one JSON array of records reads the same way, its elements' positions standing
in for line numbers.

Speed: lines are decoded a chunk at a time as one JSON array (one C call per chunk). Only a chunk
that holds a bad line is decoded again line by line, so clean data never pays for the slow path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import polars as pl

from curation.errors import SourceError
from curation.schema import rejected_row

T = TypeVar("T")

CHUNK_LINES = 20_000
UTF8_BOM = b"\xef\xbb\xbf"
# msgspec raises RecursionError past ~1000 levels of nesting (a pathological tree export).
DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
_FIELD_AT = re.compile(r"at `\$(?:\[\d+\])?\.?([^`]*)`")


@dataclass
class Records:
    """Decoded records with their 1-based line numbers, plus the lines that failed."""

    items: list[Any] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)

    def extend(self, other: Records) -> None:
        self.items.extend(other.items)
        self.lines.extend(other.lines)
        self.rejected.extend(other.rejected)


def describe_error(
    error: Exception, raw: bytes | None = None, unit: str = "line"
) -> tuple[str, str | None]:
    """A readable reason and the offending field (when the decoder names one). ``raw`` is the
    record's bytes (a ``unit`` of the file), which places a bad UTF-8 byte."""
    if isinstance(error, UnicodeDecodeError):
        if raw is not None:
            return _bad_utf8(raw, unit)
        return f"invalid UTF-8 byte at offset {error.start} of a string value", None
    if isinstance(error, RecursionError):
        return "nested too deeply to decode", None
    message = str(error)
    match = _FIELD_AT.search(message)
    field_name = match.group(1) or None if match else None
    if not isinstance(error, msgspec.ValidationError):
        if "truncated" in message:
            return "truncated JSON (line ends before the value does)", field_name
        return f"malformed JSON: {message}", field_name
    missing = re.search(r"missing required field `([^`]+)`", message)
    if missing:
        return f"missing required field '{missing.group(1)}'", missing.group(1)
    reason = _FIELD_AT.sub("", message).strip(" -")
    return (f"field '{field_name}': {reason}" if field_name else reason), field_name


def _bad_utf8(raw: bytes, unit: str) -> tuple[str, str | None]:
    """The first invalid UTF-8 byte of a record, by its offset in the record (msgspec gives the
    offset inside the string value it was decoding, which locates nothing) and character
    column, with the top-level field holding it."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as error:
        start = error.start
    else:  # msgspec found one, so this is not reached; say so rather than guess
        return "invalid UTF-8", None
    column = len(raw[:start].decode("utf-8")) + 1
    reason = (
        f"invalid UTF-8 byte 0x{raw[start]:02x} at byte {start} of the {unit} (column {column})"
    )
    # Characters before the bad byte are unchanged by the replacement, so its column holds.
    return reason, _key_at(raw.decode("utf-8", "replace"), column - 1)


_BLANK = re.compile(r"[ \t\r\n]*")


def _key_at(text: str, position: int) -> str | None:
    """The key of the top-level object member whose value spans ``position``; None when the
    text is not an object or the position is not inside a member's value."""
    scan = json.JSONDecoder()
    at = _BLANK.match(text).end()
    if text[at : at + 1] != "{":
        return None
    at += 1
    try:
        while True:
            key, at = scan.raw_decode(text, _BLANK.match(text, at).end())
            at = _BLANK.match(text, at).end()
            if not isinstance(key, str) or text[at : at + 1] != ":":
                return None
            start = _BLANK.match(text, at + 1).end()
            _, at = scan.raw_decode(text, start)
            if start <= position < at:
                return key
            at = _BLANK.match(text, at).end()
            if text[at : at + 1] != ",":
                return None
            at += 1
    except ValueError:  # json.JSONDecodeError: past the last member
        return None


def read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise SourceError(path, "no such file")
    if path.is_dir():
        raise SourceError(path, "is a directory, expected a file")
    data = path.read_bytes()
    if not data.strip(b" \t\r\n" + UTF8_BOM):
        raise SourceError(path, "empty file")
    return data


@dataclass
class JsonUnits:
    """A JSON file cut into one undecoded value per record: the lines of a JSONL file, or the
    elements of a file holding one JSON array (Alpaca-style ``.json``). ``array`` says which, so
    that messages name an "element N" where a JSONL file has a "line N"; either way the 1-based
    position is what ids, provenance and rejected rows record as the line."""

    path: Path
    units: list[bytes] | list[msgspec.Raw]
    array: bool

    @property
    def unit(self) -> str:
        return "element" if self.array else "line"


def json_units(path: Path) -> JsonUnits:
    """Read a JSON Lines file, or a JSON array file (its first non-blank byte is ``[``).

    An array is checked whole, for syntax only (msgspec's ``Raw`` keeps each element as a slice
    of the file's bytes, undecoded): a malformed array has no trustworthy element boundaries, so
    it is one error for the file, naming where it breaks, rather than a rejected row per line.
    Either shape is held in memory whole, as JSONL always was: a few hundred MB is fine.
    """
    data = read_bytes(path)
    if data.startswith(UTF8_BOM):  # written by some Windows tools; harmless, so read through it
        data = data[len(UTF8_BOM) :]
    if data.lstrip()[:1] == b"[":
        return JsonUnits(path, _array_elements(path, data), array=True)
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the final newline ends the last line, it does not start a new one
    return JsonUnits(path, lines, array=False)


_AT_BYTE = re.compile(r"\s*\(byte (\d+)\)$")


def _array_elements(path: Path, data: bytes) -> list[msgspec.Raw]:
    try:
        elements = msgspec.json.decode(data, type=list[msgspec.Raw])
    except msgspec.DecodeError as error:
        raise SourceError(path, f"malformed JSON array: {_where(str(error), data)}") from None
    except RecursionError:
        raise SourceError(path, "malformed JSON array: nested too deeply to decode") from None
    if not elements:
        raise SourceError(path, "empty JSON array: no records")
    return elements


def _where(message: str, data: bytes) -> str:
    """msgspec's message with its byte offset also given as a line and column of the file."""
    if "truncated" in message:
        return "the file ends before the array does (no closing ']')"
    message = message.removeprefix("JSON is malformed: ")
    at = _AT_BYTE.search(message)
    if at is None:
        return message
    offset = int(at.group(1))
    line = data.count(b"\n", 0, offset) + 1
    column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    return f"{message[: at.start()]} at line {line}, column {column} (byte {offset})"


def json_lines(
    path: Path, record_type: type[T], source: str, chunk_lines: int = CHUNK_LINES
) -> Records:
    """Decode a JSONL (or JSON array) file into ``record_type`` items, rejecting bad records
    with their reason."""
    return decode_units(json_units(path), record_type, source, chunk_lines)


def decode_units(
    units: JsonUnits, record_type: type[T], source: str, chunk_lines: int = CHUNK_LINES
) -> Records:
    """Decode each unit into ``record_type``; a unit that fails becomes a rejected row."""
    out = Records()
    values = units.units
    array_decoder = msgspec.json.Decoder(list[record_type])
    line_decoder = msgspec.json.Decoder(record_type)
    name = str(units.path)
    for start in range(0, len(values), chunk_lines):
        chunk = values[start : start + chunk_lines]
        try:
            items = array_decoder.decode(b"[" + b",".join(chunk) + b"]")
        except DECODE_ERRORS:
            items = None
        # A blank line makes the array invalid and a line holding two values makes it longer,
        # so a clean decode of the right length means every line held exactly one record.
        if items is not None and len(items) == len(chunk):
            out.items.extend(items)
            out.lines.extend(range(start + 1, start + len(chunk) + 1))
            continue
        for number, raw in enumerate(chunk, start=start + 1):
            raw = bytes(raw).removesuffix(b"\r")
            if not raw.strip():
                out.rejected.append(rejected_row(source, name, number, "blank line"))
                continue
            try:
                item = line_decoder.decode(raw)
            except DECODE_ERRORS as error:
                reason, field_name = describe_error(error, raw, units.unit)
                out.rejected.append(rejected_row(source, name, number, reason, raw, field_name))
                continue
            out.items.append(item)
            out.lines.append(number)
    if not out.items:
        unit = units.unit
        first = out.rejected[0] if out.rejected else {"line": None, "reason": "no records"}
        raise SourceError(
            units.path,
            f"not {article(source)} {source} file: no {unit} could be read "
            f"({unit} {first['line']}: {first['reason']})",
        )
    return out


def article(word: str) -> str:
    """'an oasst file', 'a flan file'."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def parquet_rows(path: Path, record_type: type[T], source: str) -> Records:
    """Read a Parquet file into ``record_type`` items; a missing required column is fatal."""
    if not path.exists():
        raise SourceError(path, "no such file")
    try:
        table = pl.read_parquet(path)
    except Exception as error:  # polars raises several types for a file that is not Parquet
        raise SourceError(path, f"not a Parquet file ({type(error).__name__}: {error})") from None
    required = [f.encode_name for f in msgspec.structs.fields(record_type) if f.required]
    missing = [name for name in required if name not in table.columns]
    if missing:
        raise SourceError(path, f"missing column(s) {', '.join(missing)} for {source}")
    if table.height == 0:
        raise SourceError(path, "empty file (no rows)")
    records = convert_rows(table.iter_rows(named=True), record_type, source, str(path))
    if not records.items:
        first = records.rejected[0]
        raise SourceError(
            path,
            f"not {article(source)} {source} file: no row could be read "
            f"(row {first['line']}: {first['reason']})",
        )
    return records


def convert_rows(
    rows: Iterator[dict], record_type: type[T], source: str, file: str, first_line: int = 1
) -> Records:
    """Validate already-parsed rows (Parquet, HF datasets); the 'line' is the 1-based row index."""
    out = Records()
    for number, row in enumerate(rows, start=first_line):
        try:
            item = msgspec.convert(row, record_type, strict=True)
        except (msgspec.ValidationError, RecursionError) as error:
            reason, field_name = describe_error(error)
            raw = msgspec.json.encode(row, enc_hook=str).decode()
            out.rejected.append(rejected_row(source, file, number, reason, raw, field_name))
            continue
        out.items.append(item)
        out.lines.append(number)
    return out


def read_records(path: Path, record_type: type[T], source: str) -> Records:
    """Parquet by suffix, else JSONL or a JSON array by content: the on-disk shapes every source
    format comes in."""
    suffix = path.suffix.lower()
    if suffix in {".parquet", ".pq"}:
        return parquet_rows(path, record_type, source)
    return json_lines(path, record_type, source)


def read_many(paths: list[Path], reader: Callable[[Path], Records]) -> Records:
    out = Records()
    for path in paths:
        out.extend(reader(path))
    return out
