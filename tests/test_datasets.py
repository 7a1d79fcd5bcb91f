"""Exported training sets: stable splits, Parquet + load_from_disk, and accepted by TRL."""

import copy

import datasets
import polars as pl
import pytest
import torch

from assets.resources import SAMPLES
from curation.datasets import (
    ExportConfig,
    export,
    preference_rows,
    prompt_rows,
    sft_rows,
    split_expr,
)
from curation.ingest import ingest
from curation.schema import CONVERSATIONS, frame
from training.tokenizer import TokenizerConfig, corpus_texts, to_transformers, train_tokenizer


@pytest.fixture(scope="module")
def sources():
    oasst = ingest("oasst", [SAMPLES / "oasst_trees.jsonl"])
    hh = ingest("hh", [SAMPLES / "hh_rlhf.jsonl"])
    return oasst, hh


def test_split_is_stable_and_independent_of_other_rows():
    ids = pl.DataFrame({"id": [f"row{i}" for i in range(5000)]})
    first = ids.with_columns(split=split_expr(0.1))
    again = ids.head(100).with_columns(split=split_expr(0.1))
    assert first.head(100).equals(again)  # a row's split does not depend on the others
    share = first.filter(pl.col("split") == "test").height / ids.height
    assert 0.08 < share < 0.12


def test_prompts_end_at_the_last_user_turn():
    rows = [
        {
            "id": "a",
            "source": "s",
            "source_id": "a",
            "lang": "en",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "q1"},
                {"role": "assistant", "content": "a1"},
                {"role": "user", "content": "q2"},
                {"role": "assistant", "content": "a2"},
            ],
            "meta": "{}",
            "provenance": {"file": "f", "line": 1, "ids": []},
        }
    ]
    prompts = prompt_rows(frame(rows, CONVERSATIONS))
    assert [m["content"] for m in prompts["prompt"][0]] == ["be brief", "q1", "a1", "q2"]


def test_export_writes_parquet_and_a_loadable_dataset_with_a_card(tmp_path, sources):
    oasst, _ = sources
    summary = export(
        "sft", sft_rows(oasst.conversations), tmp_path, ExportConfig(eval_fraction=0.2)
    )
    train = pl.read_parquet(tmp_path / "sft" / "train.parquet")
    test = pl.read_parquet(tmp_path / "sft" / "test.parquet")
    assert train.height + test.height == oasst.conversations.height
    assert summary["rows"] == {"train": train.height, "test": test.height}
    loaded = datasets.load_from_disk(str(tmp_path / "sft" / "hf"))
    assert loaded["train"].num_rows == train.height
    assert loaded["train"][0]["messages"][0]["role"] == "user"
    card = (tmp_path / "sft" / "hf" / "README.md").read_text()
    assert "oasst" in card and "train" in card
    assert not list(tmp_path.glob("sft/.*tmp*"))


def tiny_llama(tokenizer, classification: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        num_labels=1,
    )
    torch.manual_seed(0)
    return (LlamaForSequenceClassification if classification else LlamaForCausalLM)(config)


def test_trl_trainers_accept_the_exported_sets(tmp_path, sources):
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

    oasst, hh = sources
    export("sft", sft_rows(oasst.conversations), tmp_path)
    export("preference", preference_rows(hh.preferences), tmp_path)
    sft = datasets.load_from_disk(str(tmp_path / "sft" / "hf"))["train"].select(range(16))
    pairs = datasets.load_from_disk(str(tmp_path / "preference" / "hf"))["train"].select(range(8))
    tokenizer = to_transformers(
        train_tokenizer(corpus_texts(SAMPLES / "pretrain.jsonl"), TokenizerConfig(vocab_size=512))
    )
    common = dict(
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        per_device_train_batch_size=4,
        report_to=[],
        max_length=256,
        save_strategy="no",
        use_cpu=True,
    )
    model = tiny_llama(tokenizer)
    before = [p.detach().clone() for p in model.parameters()]
    sft_trainer = SFTTrainer(
        model=model,
        processing_class=tokenizer,
        train_dataset=sft,
        args=SFTConfig(**common, assistant_only_loss=True),
    )
    assert sft_trainer.train().training_loss > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    DPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),
        processing_class=tokenizer,
        train_dataset=pairs,
        args=DPOConfig(**common),
    ).train()
    RewardTrainer(
        model=tiny_llama(tokenizer, classification=True),
        processing_class=tokenizer,
        train_dataset=pairs,
        args=RewardConfig(**common),
    ).train()
