"""Packing for the pretrain/midtrain stages: every token is either in a block or counted as a
dropped tail, including a split too short for a single block (a small decay mixture's test
split), which once crashed the stage after training had finished."""

from __future__ import annotations

import datasets

from training.causal_lm import pack
from training.tokenizer import TokenizerConfig, to_transformers, train_tokenizer

TEXTS = ["the cat sat on the mat", "a dog ran in the park", "birds sing at dawn"] * 20


def _tokenizer():
    return to_transformers(train_tokenizer(TEXTS, TokenizerConfig(vocab_size=300)))


def _token_total(tokenizer, texts: list[str]) -> int:
    # +1 per document: pack joins documents with EOS
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts)


def test_every_token_is_packed_or_counted_as_tail():
    tokenizer = _tokenizer()
    dataset = datasets.Dataset.from_dict({"text": TEXTS})
    packed, stats = pack(dataset, tokenizer, block=16)
    assert stats["blocks"] == len(packed) > 0
    assert all(len(row) == 16 for row in packed["input_ids"])
    assert packed.column_names == ["input_ids"]
    assert stats["tokens"] + stats["tail_tokens_dropped"] == _token_total(tokenizer, TEXTS)
    assert 0 <= stats["tail_tokens_dropped"] < 16


def test_a_split_shorter_than_one_block_packs_to_nothing_and_counts_its_tokens():
    tokenizer = _tokenizer()
    dataset = datasets.Dataset.from_dict({"text": TEXTS[:1]})
    packed, stats = pack(dataset, tokenizer, block=512)
    assert len(packed) == 0
    assert stats["blocks"] == 0
    assert stats["tail_tokens_dropped"] == _token_total(tokenizer, TEXTS[:1])
