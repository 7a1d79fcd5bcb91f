"""Pretraining text: JSONL/Parquet with a ``text`` field, or plain ``.txt`` (one document per
blank-line-separated paragraph block)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec
import polars as pl

from curation.errors import SourceError
from curation.readers.common import positional_labels, source_ids
from curation.records import Records, read_bytes, read_records
from curation.schema import PROVENANCE, REJECTED, frame, stable_id_expr

TEXTS = pl.Schema(
    {
        "id": pl.String,
        "source": pl.String,
        "source_id": pl.String,
        "text": pl.String,
        "provenance": PROVENANCE,
    }
)


class TextRecord(msgspec.Struct):
    text: str
    id: str | int | None = None


@dataclass
class TextCorpus:
    texts: pl.DataFrame
    rejected: pl.DataFrame


def read_text_corpus(paths: Sequence[Path], source: str = "pretrain") -> TextCorpus:
    parts, rejected = [], []
    paths = [Path(path) for path in paths]
    # Two inputs named ``train.jsonl`` must not give their id-less documents one id.
    labels = positional_labels(paths)
    for path in paths:
        records = (
            _plain_text(path)
            if path.suffix.lower() == ".txt"
            else read_records(path, TextRecord, source)
        )
        rejected.extend(records.rejected)
        ids = source_ids([item.id for item in records.items], records.lines, labels[path])
        parts.append(
            pl.DataFrame(
                {
                    "source_id": ids,
                    "text": [item.text for item in records.items],
                    "line": records.lines,
                },
                schema={"source_id": pl.String, "text": pl.String, "line": pl.Int64},
            ).select(
                stable_id_expr(source, pl.col("source_id")).alias("id"),
                pl.lit(source).alias("source"),
                "source_id",
                "text",
                pl.struct(
                    pl.lit(str(path)).alias("file"),
                    pl.col("line"),
                    pl.lit([], dtype=pl.List(pl.String)).alias("ids"),
                ).alias("provenance"),
            )
        )
    texts = pl.concat(parts) if parts else pl.DataFrame(schema=TEXTS)
    return TextCorpus(texts=texts.cast(TEXTS), rejected=frame(rejected, REJECTED))


def _plain_text(path: Path) -> Records:
    raw = read_bytes(path)
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise SourceError(path, f"invalid UTF-8 byte at offset {error.start}") from None
    out = Records()
    line = 1
    for block in content.split("\n\n"):
        if block.strip():
            out.items.append(TextRecord(text=block.strip()))
            out.lines.append(line + (len(block) - len(block.lstrip("\n"))))
        line += block.count("\n") + 2
    return out
