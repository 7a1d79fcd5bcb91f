"""Shared test setup: no hub access, a throwaway Dagster instance, outputs under tmp_path."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import dagster as dg  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def instance(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as test_instance:
        yield test_instance


@pytest.fixture(scope="session")
def sft_workspace(tmp_path_factory) -> Path:
    """24 synthetic conversations exported as an sft dataset (``data/sft``) and a 512-token
    byte-level BPE (``tokenizer``): what the SFT stage reads, small enough for many trainers."""
    from assets.resources import SAMPLES
    from curation.datasets import ExportConfig, export, sft_rows
    from curation.ingest import ingest
    from training.tokenizer import TokenizerConfig, corpus_texts, save_tokenizer, train_tokenizer

    root = tmp_path_factory.mktemp("sft-workspace")
    chats = ingest("jsonl", [SAMPLES / "synthetic_chat.jsonl"]).conversations.head(24)
    export("sft", sft_rows(chats), root / "data", ExportConfig(eval_fraction=0.0))
    tokenizer = train_tokenizer(
        corpus_texts(SAMPLES / "pretrain.jsonl"), TokenizerConfig(vocab_size=512)
    )
    save_tokenizer(tokenizer, root / "tokenizer")
    return root
