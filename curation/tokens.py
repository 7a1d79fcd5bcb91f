"""Token counts for profiling, exact and fast.

Byte-level BPE with the GPT-2 split pattern never lets a token run from a non-space character
into the whitespace after it, so the position before every whitespace run is a token boundary.
A text's count is therefore the sum of the counts of its ``\\s*\\S+`` units, and units repeat
(Zipf): we split in polars (Rust), tokenize each distinct unit once, and sum. On instruction data
this is several times faster than ``encode_batch`` over whole texts and gives identical counts
(tests/test_tokens.py and bench/ingest_profile.py check equality). Tokenizers without that
property (Metaspace, Llama-3's pattern, normalizers) take the plain ``encode_batch_fast`` path.
"""

from __future__ import annotations

import json

import polars as pl
from tokenizers import Tokenizer

UNIT_PATTERN = r"\s*\S+|\s+"


def splits_at_whitespace(tokenizer: Tokenizer) -> bool:
    """True when the unit decomposition is exact for this tokenizer (see module docstring)."""
    spec = json.loads(tokenizer.to_str())
    pre = spec.get("pre_tokenizer") or {}
    if spec.get("normalizer") is not None or pre.get("type") != "ByteLevel":
        return False
    if not pre.get("use_regex", True) or pre.get("add_prefix_space"):
        return False
    return not any(any(c.isspace() for c in t["content"]) for t in spec.get("added_tokens", []))


def count_tokens_plain(tokenizer: Tokenizer, texts: list[str], batch_size: int = 8192) -> list[int]:
    counts: list[int] = []
    for start in range(0, len(texts), batch_size):
        encodings = tokenizer.encode_batch_fast(
            texts[start : start + batch_size], add_special_tokens=False
        )
        counts.extend(len(encoding) for encoding in encodings)  # len() builds no id list
    return counts


class TokenCounter:
    """Callable ``texts -> counts`` that remembers unit counts across calls."""

    def __init__(self, tokenizer: Tokenizer, chunk_texts: int = 200_000) -> None:
        self.tokenizer = tokenizer
        self.chunk_texts = chunk_texts
        self.by_units = splits_at_whitespace(tokenizer)
        self.cache = pl.DataFrame(schema={"unit": pl.String, "n": pl.Int64})

    def __call__(self, texts: list[str]) -> list[int]:
        if not self.by_units:
            return count_tokens_plain(self.tokenizer, texts)
        counts: list[int] = []
        for start in range(0, len(texts), self.chunk_texts):
            counts.extend(self._count_chunk(texts[start : start + self.chunk_texts]))
        return counts

    def _count_chunk(self, texts: list[str]) -> list[int]:
        units = (
            pl.DataFrame({"text": pl.Series(texts, dtype=pl.String)})
            .with_row_index("row")
            .select("row", pl.col("text").fill_null("").str.extract_all(UNIT_PATTERN).alias("unit"))
            .explode("unit")
            .drop_nulls("unit")
        )
        new = units.select(pl.col("unit").unique()).join(self.cache, on="unit", how="anti")
        if new.height:
            fresh = count_tokens_plain(self.tokenizer, new["unit"].to_list())
            self.cache = pl.concat(
                [self.cache, new.with_columns(n=pl.Series(fresh, dtype=pl.Int64))]
            )
        per_row = (
            units.join(self.cache, on="unit", how="left").group_by("row").agg(pl.col("n").sum())
        )
        return (
            pl.DataFrame({"row": pl.arange(0, len(texts), eager=True, dtype=pl.UInt32)})
            .join(per_row, on="row", how="left")
            .sort("row")["n"]
            .fill_null(0)
            .to_list()
        )
