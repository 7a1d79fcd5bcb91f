"""Golden hash of the curated SFT set built from the embedded data: any silent change in a
reader, a filter, the pipeline or the export shows up here. When a change is intended, update
the hash in the same commit and say why in its message."""

import hashlib
import json

import polars as pl

from assets.resources import SAMPLES
from curation.curate import build_filters, curate
from curation.datasets import sft_rows
from curation.ingest import IngestResult, ingest
from curation.tokens import TokenCounter
from training.tokenizer import TokenizerConfig, corpus_texts, train_tokenizer

SOURCES = [
    ("oasst", ["oasst_trees.jsonl", "oasst_messages.jsonl"]),
    ("flan", ["flan.jsonl", "synthetic_flan.jsonl"]),
    ("hh", ["hh_rlhf.jsonl"]),
    ("ultrafeedback", ["ultrafeedback.jsonl", "synthetic_ultrafeedback.jsonl"]),
    ("jsonl", ["synthetic_chat.jsonl"]),
]
GOLDEN_CURATED_SFT = "c3dc9fa54a42fab42c544f5bb1e66c7a805ce8b1db48acdf659d8a1d4c323c2c"


def curated_sft() -> pl.DataFrame:
    ingested = IngestResult.concat(
        [ingest(fmt, [SAMPLES / name for name in names]) for fmt, names in SOURCES]
    )
    tokenizer = train_tokenizer(corpus_texts(SAMPLES / "pretrain.jsonl"), TokenizerConfig())
    result = curate(ingested.conversations, build_filters({}, TokenCounter(tokenizer)))
    return sft_rows(result.curated)


def test_curated_sft_dataset_is_pinned():
    rows = curated_sft().sort("id")
    payload = json.dumps(
        [[r["id"], r["source"], r["messages"]] for r in rows.iter_rows(named=True)],
        ensure_ascii=False,
    ).encode()
    assert rows.height > 1000
    assert hashlib.sha256(payload).hexdigest() == GOLDEN_CURATED_SFT
