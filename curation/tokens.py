"""Token counts for profiling, exact and fast.

Byte-level BPE with the GPT-2 split pattern never lets a token run from a non-space character
into the whitespace after it, so the position before every whitespace run is a token boundary.
A text's count is therefore the sum of the counts of its ``\\s*\\S+`` units, and units repeat
(Zipf): we split in polars (Rust), tokenize each distinct unit once, and sum. On instruction data
this is several times faster than ``encode_batch`` over whole texts and gives identical counts
(tests/test_tokens.py and bench/ingest_profile.py check equality). Tokenizers without that
property (Metaspace, Llama-3's pattern, normalizers) take the plain ``encode_batch_fast`` path,
and so do those with an added token that contains whitespace or whose match depends on its
neighbours (``lstrip``/``rstrip`` swallow adjacent whitespace, which may sit in another unit;
``single_word`` looks at the characters around it). ``normalized`` is harmless: with no
normalizer the normalized text is the text.
Whole texts repeat too (FLAN's "yes", copied prompts): each distinct text is split once.
"""

from __future__ import annotations

import json

import polars as pl
from tokenizers import Tokenizer, pre_tokenizers

UNIT_PATTERN = r"\s*\S+|\s+"


def splits_at_whitespace(tokenizer: Tokenizer) -> bool:
    """True when the unit decomposition is exact for this tokenizer (see module docstring)."""
    spec = json.loads(tokenizer.to_str())
    pre = spec.get("pre_tokenizer") or {}
    if spec.get("normalizer") is not None or pre.get("type") != "ByteLevel":
        return False
    if not pre.get("use_regex", True) or pre.get("add_prefix_space"):
        return False
    return not any(_context_dependent(t) for t in spec.get("added_tokens", []))


def _context_dependent(added: dict) -> bool:
    """An added token whose match or length could differ between a unit and the whole text."""
    if any(added.get(flag) for flag in ("lstrip", "rstrip", "single_word")):
        return True
    return any(c.isspace() for c in added["content"])


def tokens_within_bytes(tokenizer: Tokenizer) -> bool:
    """True when a text of b UTF-8 bytes always has between min(b, 1) and b tokens (counted
    without special tokens, as ``count_tokens_plain`` does). Filters use it to settle length
    bounds without counting (``LengthFilter``).

    Why, for a byte-level BPE: with no normalizer, the ByteLevel pre-tokenizer turns each UTF-8
    byte into exactly one character of its 256-character alphabet, and its pieces cover the
    whole text. Added tokens are split off first, each one token for at least one byte (their
    content is not empty). BPE starts each piece from one symbol per character, all in the
    vocabulary (checked here, so none is dropped), and merges only join symbols: it ends with
    between 1 and that many tokens. No padding, no truncation.
    """
    if not splits_at_whitespace(tokenizer):
        return False
    spec = json.loads(tokenizer.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or spec.get("padding") or spec.get("truncation"):
        return False
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return False
    if any(not t.get("content") for t in spec.get("added_tokens", [])):
        return False
    vocab = tokenizer.get_vocab(with_added_tokens=False)
    return all(c in vocab for c in pre_tokenizers.ByteLevel.alphabet())


def count_tokens_plain(tokenizer: Tokenizer, texts: list[str], batch_size: int = 8192) -> list[int]:
    counts: list[int] = []
    for start in range(0, len(texts), batch_size):
        encodings = tokenizer.encode_batch_fast(
            texts[start : start + batch_size], add_special_tokens=False
        )
        counts.extend(len(encoding) for encoding in encodings)  # len() builds no id list
    return counts


class TokenCounter:
    """Callable ``texts -> counts`` that remembers unit counts across calls.

    ``tokens_within_bytes``: see the function of that name (true for byte-level BPE)."""

    def __init__(self, tokenizer: Tokenizer, chunk_texts: int = 200_000) -> None:
        self.tokenizer = tokenizer
        self.chunk_texts = chunk_texts
        self.by_units = splits_at_whitespace(tokenizer)
        self.tokens_within_bytes = tokens_within_bytes(tokenizer)
        self.cache = pl.DataFrame(schema={"unit": pl.String, "n": pl.Int64})

    def __call__(self, texts: list[str]) -> list[int]:
        if not self.by_units:
            return count_tokens_plain(self.tokenizer, texts)
        counts: list[int] = []
        for start in range(0, len(texts), self.chunk_texts):
            counts.extend(self._count_chunk(texts[start : start + self.chunk_texts]))
        return counts

    def _count_chunk(self, texts: list[str]) -> list[int]:
        text = pl.Series("text", texts, dtype=pl.String).fill_null("")
        distinct = text.unique().to_frame().with_row_index("row")
        units = (
            distinct.select("row", pl.col("text").str.extract_all(UNIT_PATTERN).alias("unit"))
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
        per_text = distinct.join(per_row, on="row", how="left").select(
            "text", pl.col("n").fill_null(0)
        )
        return (
            text.to_frame()
            .join(per_text, on="text", how="left", maintain_order="left")["n"]
            .to_list()
        )
