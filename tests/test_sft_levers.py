"""The SFT stage's speed levers change how a step is computed, never what it learns: compiled
training follows eager training, and both loss types give the same loss on the same batch. Each
test also checks that its lever really took effect, so a setting that silently did nothing
fails here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.models import ModelConfig
from training.recipe import build
from training.sft import SFTStageConfig, build_trainer

BATCH, MAX_LENGTH = 4, 192


def sft_config(workspace: Path, name: str, **overrides) -> SFTStageConfig:
    values = dict(
        output_dir=str(workspace / name),
        data=str(workspace / "data" / "sft"),
        tokenizer=str(workspace / "tokenizer"),
        model=ModelConfig(preset="tiny", max_position_embeddings=256),
        per_device_train_batch_size=BATCH,
        max_length=MAX_LENGTH,
        packing=True,
        use_cpu=True,
        resume=False,
    )
    return SFTStageConfig(**{**values, **overrides})


def train_losses(workspace: Path, name: str, **overrides) -> tuple[list[float], object]:
    config = sft_config(workspace, name, max_steps=3, logging_steps=1, save_steps=100, **overrides)
    trainer, _ = build_trainer(config)
    trainer.train()
    return [row["loss"] for row in trainer.state.log_history if "loss" in row], trainer


def test_compiled_training_compiles_each_block_and_learns_what_eager_does(
    sft_workspace, monkeypatch
):
    from accelerate.utils import has_compiled_regions, is_compiled_module

    monkeypatch.delenv("ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION", raising=False)
    eager, _ = train_losses(sft_workspace, "eager")
    compiled, trainer = train_losses(sft_workspace, "compiled", torch_compile=True)
    # Regional compilation: every decoder layer is compiled on its own, the model as a whole
    # is not (compiling the whole graph costs three times as long for a 24-layer model).
    prepared = trainer.model_wrapped
    assert has_compiled_regions(prepared) and not is_compiled_module(prepared)
    assert all(is_compiled_module(layer) for layer in prepared.model.layers)
    assert len(compiled) == len(eager) == 3
    assert compiled == pytest.approx(eager, rel=1e-4)
    assert compiled[-1] < compiled[0]


def loss_and_outputs(workspace: Path, loss_type: str | None):
    trainer, _ = build_trainer(sft_config(workspace, f"loss-{loss_type}", loss_type=loss_type))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(BATCH)])
    labelled = torch.tensor(int((batch["labels"] != -100).sum()))
    trainer.model.train()
    loss, outputs = trainer.compute_loss(
        trainer.model, dict(batch), return_outputs=True, num_items_in_batch=labelled
    )
    return trainer, loss.item(), outputs, batch


def test_both_loss_types_compute_the_same_loss_their_own_way(sft_workspace):
    default, default_loss, _, _ = loss_and_outputs(sft_workspace, None)
    assert default.args.loss_type == "chunked_nll"  # unset keeps TRL's choice
    chunked, chunked_loss, chunked_out, _ = loss_and_outputs(sft_workspace, "chunked_nll")
    full, full_loss, full_out, batch = loss_and_outputs(sft_workspace, "nll")
    assert full.args.loss_type == "nll"
    # nll materialises the whole batch's logits; chunked_nll never returns them
    assert full_out.logits.shape == (*batch["input_ids"].shape, len(full.processing_class))
    assert getattr(chunked_out, "num_valid_tokens", None) is not None
    assert full_loss == pytest.approx(chunked_loss, rel=1e-5)
    assert default_loss == pytest.approx(chunked_loss, rel=1e-6)


def test_a_loss_type_is_checked_before_any_work(sft_workspace):
    with pytest.raises(ValueError, match="loss_type: 'dtf' is not one of"):
        sft_config(sft_workspace, "bad", loss_type="dtf")
    with pytest.raises(ValueError, match="loss_type: use_liger_kernel .* needs 'nll'"):
        sft_config(sft_workspace, "bad", loss_type="chunked_nll", use_liger_kernel=True)
    recipe = {"data": "sft", "tokenizer": "tok", "loss_type": "nll", "use_cpu": True}
    assert build(SFTStageConfig, recipe, "sft").loss_type == "nll"


@pytest.mark.parametrize("packing", [False, True])
def test_the_loss_covers_assistant_tokens_only(sft_workspace, packing):
    """Every labelled token lies inside an assistant answer (with its closing marker); no
    system, user or template token is learned. The golden hashes pin the batch; this says it
    is right."""
    from training.common import load_splits

    trainer, _ = build_trainer(sft_config(sft_workspace, f"labels-{packing}", packing=packing))
    tokenizer = trainer.processing_class
    answers = [
        message["content"] + "<|im_end|>"
        for messages in load_splits(sft_workspace / "data" / "sft")["train"]["messages"]
        for message in messages
        if message["role"] == "assistant"
    ]
    batch = next(iter(trainer.get_train_dataloader()))
    runs, run, unlabelled = [], [], 0
    for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), strict=True):
        for token, label in zip(ids, labels, strict=True):
            if label != -100:
                assert label == token
                run.append(token)
                continue
            unlabelled += 1
            if run:
                runs.append((tokenizer.decode(run), True))
                run = []
        if run:  # an answer cut at max_length, or the row's last one
            runs.append((tokenizer.decode(run), False))
            run = []
    assert len(runs) >= BATCH and unlabelled > 0
    outside = [text for text, _ in runs if not any(text in answer for answer in answers)]
    assert outside == []
    # An answer that ends inside the row is learned with its closing marker, so the model
    # learns to stop.
    closed = [text for text, inside in runs if inside]
    assert closed and all(text.endswith("<|im_end|>") for text in closed)
