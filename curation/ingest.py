"""One entry point over every reader: ``ingest(format, paths, options)`` → ``IngestResult``."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from curation.errors import SourceError
from curation.schema import CONVERSATIONS, LEDGER, PREFERENCES, REJECTED, empty, frame


@dataclass(frozen=True)
class ReadOptions:
    """What a reader may need beyond the paths.

    ``source``: the name written to the ``source`` column (defaults to the format's name).
    ``columns``: for generic sources, a mapping from canonical names (``messages``, ``prompt``,
    ``completion``, ``instruction``, ``input``, ``output``, ``chosen``, ``rejected``, ``id``,
    ``lang``, ``system``, ``meta``) to the input's column names.
    ``split``: the split for HF datasets loaded by name or path.
    """

    source: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    split: str = "train"


@dataclass
class IngestResult:
    """Canonical tables from one or more inputs. Every input row is in exactly one of:
    conversations/preferences (read), rejected (unreadable), ledger (read but excluded)."""

    conversations: pl.DataFrame = field(default_factory=lambda: empty(CONVERSATIONS))
    preferences: pl.DataFrame = field(default_factory=lambda: empty(PREFERENCES))
    rejected: pl.DataFrame = field(default_factory=lambda: empty(REJECTED))
    ledger: pl.DataFrame = field(default_factory=lambda: empty(LEDGER))

    @classmethod
    def build(
        cls,
        conversations: pl.DataFrame | list[dict] | None = None,
        preferences: pl.DataFrame | list[dict] | None = None,
        rejected: pl.DataFrame | list[dict] | None = None,
        ledger: pl.DataFrame | list[dict] | None = None,
    ) -> IngestResult:
        """Accept frames or dict rows and cast each to its canonical schema."""

        def as_frame(value: pl.DataFrame | list[dict] | None, schema: pl.Schema) -> pl.DataFrame:
            if value is None:
                return empty(schema)
            if isinstance(value, pl.DataFrame):
                return value.select([pl.col(n).cast(t) for n, t in schema.items()])
            return frame(value, schema)

        return cls(
            as_frame(conversations, CONVERSATIONS),
            as_frame(preferences, PREFERENCES),
            as_frame(rejected, REJECTED),
            as_frame(ledger, LEDGER),
        )

    @classmethod
    def concat(cls, results: Sequence[IngestResult]) -> IngestResult:
        if not results:
            return cls()
        return cls(
            *(
                pl.concat([getattr(r, name) for r in results], how="vertical")
                for name in ("conversations", "preferences", "rejected", "ledger")
            )
        )

    def counts(self) -> dict[str, int]:
        return {
            "conversations": self.conversations.height,
            "preferences": self.preferences.height,
            "rejected": self.rejected.height,
            "excluded": self.ledger.filter(pl.col("verdict") == "drop").height,
        }

    def summary(self) -> str:
        return " ".join(f"{name}={count}" for name, count in self.counts().items())


Reader = Callable[[Sequence[Path], ReadOptions], IngestResult]

# format name → "module:function"; imported lazily so a reader's heavy deps load only when used.
READERS: dict[str, str] = {
    "oasst": "curation.readers.oasst:read_oasst",
    "flan": "curation.readers.flan:read_flan",
    "hh": "curation.readers.hh:read_hh",
    "ultrafeedback": "curation.readers.ultrafeedback:read_ultrafeedback",
    "jsonl": "curation.readers.generic:read_jsonl",
    "parquet": "curation.readers.generic:read_parquet",
    "hf": "curation.readers.generic:read_hf",
}


def reader_for(fmt: str) -> Reader:
    try:
        target = READERS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(READERS)}") from None
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def ingest(
    fmt: str, paths: Sequence[str | Path], options: ReadOptions | None = None
) -> IngestResult:
    """Read ``paths`` in format ``fmt``. Raises ``SourceError`` only when an input cannot be
    read at all; bad rows become rejected rows."""
    if not paths:
        raise SourceError("<no input>", "no input paths given")
    options = options or ReadOptions()
    resolved = [Path(p) if fmt != "hf" else p for p in paths]
    return reader_for(fmt)(resolved, options)


def meta_json(values: dict) -> str:
    """``meta`` column value: JSON without null values, keys sorted so hashes are stable."""
    return json.dumps(
        {k: v for k, v in values.items() if v is not None}, sort_keys=True, ensure_ascii=False
    )
