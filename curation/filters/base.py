"""The contract between filters and the curation pipeline.

A filter sees a ``Batch``: one row per message (``messages``) and one per conversation
(``rows``), only for rows still alive. It returns ``Findings``: one ledger row per rule that
fired on a conversation (``row_id``, ``rule``, ``verdict``, ``reason``, ``score``) and, for
``rewrite`` verdicts, the new content of the messages it changed (``row_id``, ``turn``,
``content``). The pipeline does the rest: a ``drop`` removes the row from later filters, a
``rewrite`` replaces those messages before the next filter runs, ``flag`` and ``keep`` only
record. Rules are named ``<category>.<rule>`` (``reference.et_al``, ``pii.email``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Protocol

import polars as pl

Verdict = Literal["keep", "drop", "rewrite", "flag"]
VERDICTS = ("keep", "drop", "rewrite", "flag")

FINDINGS = pl.Schema(
    {
        "row_id": pl.String,
        "rule": pl.String,
        "verdict": pl.String,
        "reason": pl.String,
        "score": pl.Float64,
    }
)
REWRITES = pl.Schema({"row_id": pl.String, "turn": pl.UInt32, "content": pl.String})
MESSAGE_ROWS = pl.Schema(
    {
        "row_id": pl.String,
        "source": pl.String,
        "turn": pl.UInt32,
        "role": pl.String,
        "content": pl.String,
    }
)
REASON_SNIPPET = 80  # characters of matched text quoted in a reason


@dataclass(frozen=True)
class Batch:
    """What a filter sees. ``messages``: row_id, source, turn, role, content (never null: the
    pipeline's schema check drops rows with null content before any filter runs). ``rows``:
    row_id, source, lang, meta (JSON string), in input order."""

    messages: pl.DataFrame
    rows: pl.DataFrame

    @classmethod
    def from_conversations(cls, conversations: pl.DataFrame) -> Batch:
        """Explode canonical conversations (id, source, lang, meta, messages) into a batch.
        Assumes well-formed messages; the pipeline checks that before building batches."""
        messages = (
            conversations.select(
                pl.col("id").alias("row_id"),
                "source",
                pl.col("messages").list.eval(pl.int_range(pl.len(), dtype=pl.UInt32)).alias("turn"),
                "messages",
            )
            .explode("turn", "messages")
            .drop_nulls("turn")
            .select(
                "row_id",
                "source",
                "turn",
                pl.col("messages").struct.field("role"),
                pl.col("messages").struct.field("content"),
            )
        )
        rows = conversations.select(pl.col("id").alias("row_id"), "source", "lang", "meta")
        return cls(messages=messages.cast(MESSAGE_ROWS), rows=rows)

    def answers(self) -> pl.DataFrame:
        return self.messages.filter(pl.col("role") == "assistant")

    def prompts(self) -> pl.DataFrame:
        return self.messages.filter(pl.col("role") == "user")

    def texts(self, role: str) -> pl.DataFrame:
        """One row per conversation: row_id and all ``role`` turns joined by blank lines."""
        return (
            self.messages.filter(pl.col("role") == role)
            .group_by("row_id", maintain_order=True)
            .agg(pl.col("content").str.join("\n\n").alias("text"))
        )


@dataclass
class Findings:
    ledger: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=FINDINGS))
    rewrites: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=REWRITES))

    @classmethod
    def concat(cls, parts: list[Findings]) -> Findings:
        if not parts:
            return cls()
        return cls(
            pl.concat([p.ledger.select(FINDINGS.names()).cast(FINDINGS) for p in parts]),
            pl.concat([p.rewrites.select(REWRITES.names()).cast(REWRITES) for p in parts]),
        )


class Filter(Protocol):
    category: ClassVar[str]

    def __call__(self, batch: Batch) -> Findings: ...


@dataclass(frozen=True)
class Policy:
    """A verdict per source: ``default`` unless ``per_source`` names the source."""

    default: Verdict
    per_source: Mapping[str, Verdict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for verdict in (self.default, *self.per_source.values()):
            if verdict not in VERDICTS:
                raise ValueError(f"unknown verdict {verdict!r}; expected one of {VERDICTS}")

    def expr(self, source: pl.Expr | None = None) -> pl.Expr:
        """The verdict for each row's source, as a polars expression."""
        source = pl.col("source") if source is None else source
        if not self.per_source:
            return pl.lit(self.default, dtype=pl.String)
        return source.replace_strict(
            dict(self.per_source), default=self.default, return_dtype=pl.String
        )


def snippet(expr: pl.Expr, width: int = REASON_SNIPPET) -> pl.Expr:
    """A short, single-line quote of matched text for a human-readable reason."""
    return expr.str.replace_all(r"\s+", " ").str.slice(0, width)
