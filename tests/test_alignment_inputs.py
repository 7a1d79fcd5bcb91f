"""Inputs of the alignment-side stages that must be refused or noticed before any work: a reward
checkpoint named as a policy or reference, a checkpoint republished at the same path or prompts
edited under the same ids (candidates must not reuse stale shards), and the alignment report's
prompts file and policies' tokenizers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assets.resources import SAMPLES
from training.checkpoint import CheckpointError, publish
from training.models import ModelConfig, build_causal_lm, llama_config, require_causal_lm
from training.tokenizer import TokenizerConfig, corpus_texts, to_transformers, train_tokenizer

TINY = ModelConfig(preset="tiny", max_position_embeddings=128)


def make_tokenizer(vocab_size: int):
    texts = corpus_texts(SAMPLES / "pretrain.jsonl")
    return to_transformers(train_tokenizer(texts, TokenizerConfig(vocab_size=vocab_size)))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A tiny SFT-like policy, a reward checkpoint on the same tokenizer, and a policy built on
    another tokenizer."""
    from transformers import LlamaForSequenceClassification

    root = tmp_path_factory.mktemp("alignment-inputs")
    tokenizer = make_tokenizer(400)
    publish(build_causal_lm(TINY, tokenizer), tokenizer, root / "sft", {"stage": "sft"})
    reward = LlamaForSequenceClassification(llama_config(TINY, tokenizer, num_labels=1))
    publish(reward, tokenizer, root / "reward", {"stage": "reward"})
    other = make_tokenizer(300)
    publish(build_causal_lm(TINY, other), other, root / "other_tok", {"stage": "sft"})
    return root


def test_a_reward_checkpoint_is_refused_as_a_causal_lm_naming_path_and_architecture(workspace):
    reward = workspace / "reward"
    with pytest.raises(CheckpointError) as caught:
        require_causal_lm(reward)
    message = str(caught.value)
    assert str(reward) in message and "LlamaForSequenceClassification" in message
    # every stage loads its policy and reference through build_causal_lm
    with pytest.raises(CheckpointError, match="LlamaForSequenceClassification"):
        build_causal_lm(ModelConfig(), None, path=str(reward))


def test_causal_lms_and_folders_naming_no_architecture_pass(workspace, tmp_path):
    require_causal_lm(workspace / "sft")
    require_causal_lm(str(workspace / "sft"))
    preset = tmp_path / "preset"
    preset.mkdir()
    (preset / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    require_causal_lm(preset)
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    require_causal_lm(gpt2)  # a causal LM under an older class name
    model = build_causal_lm(ModelConfig(), None, path=str(workspace / "sft"))
    assert type(model).__name__ == "LlamaForCausalLM"
