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
    # as many tokens as the reference's, other ids: shapes agree, so only a check can tell
    texts = [text.upper() for text in corpus_texts(SAMPLES / "pretrain.jsonl")]
    same_size = to_transformers(train_tokenizer(texts, TokenizerConfig(vocab_size=400)))
    assert len(same_size) == len(tokenizer)
    publish(build_causal_lm(TINY, same_size), same_size, root / "same_size", {"stage": "sft"})
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


# --- candidates: shards are reused only for the same checkpoint weights and prompt texts ---


@pytest.fixture(scope="module")
def prompt_data(tmp_path_factory) -> Path:
    from curation.datasets import ExportConfig, export, prompt_rows
    from curation.ingest import ingest

    root = tmp_path_factory.mktemp("candidate-prompts")
    chats = ingest("jsonl", [SAMPLES / "synthetic_chat.jsonl"]).conversations.head(8)
    export("prompt", prompt_rows(chats), root, ExportConfig(eval_fraction=0.0))
    return root / "prompt"


def candidates_run(prompts: Path, checkpoint: Path, out: Path, monkeypatch) -> tuple[list, int]:
    """The stage's candidates.parquet rows and how many batches it sampled."""
    import pyarrow.parquet as pq

    import training.candidates as stage

    real, calls = stage.sample, []
    monkeypatch.setattr(stage, "sample", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    config = stage.CandidatesConfig(
        prompt_dataset=str(prompts),
        checkpoints=[str(checkpoint)],
        output_dir=str(out),
        num_candidates=2,
        max_new_tokens=4,
        batch_size=2,
        max_prompts=4,
        use_cpu=True,
    )
    rows = pq.read_table(stage.main(config)).to_pylist()
    monkeypatch.setattr(stage, "sample", real)
    return rows, len(calls)


def publish_policy(target: Path, seed: int) -> Path:
    tokenizer = make_tokenizer(400)
    model = build_causal_lm(
        ModelConfig(preset="tiny", max_position_embeddings=128, seed=seed), tokenizer
    )
    return publish(model, tokenizer, target, {"stage": "sft", "seed": seed})


def test_candidates_regenerate_for_a_checkpoint_republished_at_the_same_path(
    prompt_data, tmp_path, monkeypatch, capsys
):
    checkpoint = publish_policy(tmp_path / "sft", seed=0)
    first, sampled = candidates_run(prompt_data, checkpoint, tmp_path / "out", monkeypatch)
    assert sampled == 2
    again, sampled = candidates_run(prompt_data, checkpoint, tmp_path / "out", monkeypatch)
    assert (again, sampled) == (first, 0)  # unchanged inputs: every batch reused

    publish_policy(checkpoint, seed=1)  # retrained, published at the same path
    capsys.readouterr()
    resumed, sampled = candidates_run(prompt_data, checkpoint, tmp_path / "out", monkeypatch)
    assert sampled == 2
    assert "changed since: checkpoint_stamps" in capsys.readouterr().out
    fresh, _ = candidates_run(prompt_data, checkpoint, tmp_path / "fresh", monkeypatch)
    assert resumed == fresh and resumed != first


def test_candidates_regenerate_for_prompts_edited_under_the_same_ids(
    prompt_data, tmp_path, monkeypatch
):
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    checkpoint = publish_policy(tmp_path / "sft", seed=0)
    prompts = tmp_path / "prompt"
    shutil.copytree(prompt_data, prompts)
    shutil.rmtree(prompts / "hf")  # the stage reads the Parquet pair, the file edited below
    first, _ = candidates_run(prompts, checkpoint, tmp_path / "out", monkeypatch)

    table = pq.read_table(prompts / "train.parquet")
    rows = table.to_pylist()
    rows[0]["prompt"][-1]["content"] = "EDITED " + rows[0]["prompt"][-1]["content"]
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), prompts / "train.parquet")

    resumed, sampled = candidates_run(prompts, checkpoint, tmp_path / "out", monkeypatch)
    assert sampled == 1  # the edited prompt alone, not its batch or the other batch
    assert resumed[0]["id"] == first[0]["id"]
    assert resumed[0]["prompt"][-1]["content"].startswith("EDITED ")
    # its candidates were sampled for its new text; the others' are kept as they were
    assert resumed[0]["candidates"] != first[0]["candidates"]
    assert resumed[1:] == first[1:]


# --- the alignment report: prompts file, policies' tokenizers and architectures, context ---


def prompt_line(i: int, content: str | None = None) -> str:
    message = {"role": "user", "content": content or f"Add {i} and 2."}
    return json.dumps({"id": f"p{i}", "prompt": [message]}) + "\n"


def alignment(workspace: Path, prompts: Path, out: Path, **overrides):
    from training.alignment import AlignmentConfig, main

    values = dict(
        policies={"sft": str(workspace / "sft")},
        reference=str(workspace / "sft"),
        prompts=str(prompts),
        output=str(out),
        max_new_tokens=4,
        kl_samples=2,
        batch_size=4,
        use_cpu=True,
    )
    values.update(overrides)
    return main(AlignmentConfig(**values))


@pytest.mark.parametrize("policy", ["other_tok", "same_size"])
def test_alignment_refuses_a_policy_with_another_tokenizer_before_generating(
    workspace, tmp_path, policy
):
    from training.rewards import TokenizerMismatchError

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(prompt_line(0) + prompt_line(1))
    path = str(workspace / policy)
    policies = {"sft": str(workspace / "sft"), "x": path}
    with pytest.raises(TokenizerMismatchError) as caught:
        alignment(workspace, prompts, tmp_path / "out", policies=policies)
    message = str(caught.value)
    assert f"policy 'x' ({path})" in message and str(workspace / "sft") in message
    assert "vocabulary" in message
    assert not (tmp_path / "out").exists()  # refused before any answer was generated


def test_alignment_refuses_a_reward_checkpoint_as_a_policy(workspace, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(prompt_line(0))
    with pytest.raises(CheckpointError, match="LlamaForSequenceClassification"):
        alignment(workspace, prompts, tmp_path / "out", policies={"x": str(workspace / "reward")})
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (prompt_line(0) + '{"id": "p1", "messages": []}\n', ":2: no 'prompt'"),
        (prompt_line(0) + '{"id": "p1", "prompt": [\n', ":2: not valid JSON"),
        ("", ": no prompts"),
        ("\n\n", ": no prompts"),
        (None, ": no such prompts file"),
    ],
    ids=["missing-prompt", "bad-json", "empty", "blank-lines", "missing-file"],
)
def test_alignment_prompts_errors_name_the_file_and_line(workspace, tmp_path, content, expected):
    prompts = tmp_path / "prompts.jsonl"
    if content is not None:
        prompts.write_text(content)
    with pytest.raises(ValueError) as caught:
        alignment(workspace, prompts, tmp_path / "out")
    assert str(caught.value).startswith(f"{prompts}{expected}")
    assert not (tmp_path / "out").exists()


def test_alignment_skips_and_counts_prompts_longer_than_the_context_leaves(workspace, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    long = "Add these numbers please: " + " ".join(str(i) for i in range(200))
    prompts.write_text(prompt_line(0) + prompt_line(1, long) + prompt_line(2) + prompt_line(3))
    out = tmp_path / "out"
    report = alignment(workspace, prompts, out, reward_model=str(workspace / "reward"))
    assert (report["prompts"], report["prompts_too_long"]) == (3, 1)
    assert report["skipped_prompt_ids"] == ["p1"]
    lines = (out / "generations_sft.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["p0", "p2", "p3"]
    measured = report["policies"]["sft"]
    assert measured["kl_to_reference"] == pytest.approx(0.0, abs=1e-4)
    assert "reward_model_score" in measured
