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


class ItemCalls:
    """Counts ``Tensor.item`` (a host-device synchronisation on a GPU) per training step."""

    def __init__(self) -> None:
        self.total, self.per_step, self._at_begin = 0, [], 0

    def callback(self):
        from transformers import TrainerCallback

        counter = self

        class PerStep(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                counter._at_begin = counter.total

            def on_step_end(self, args, state, control, **kwargs):
                counter.per_step.append(counter.total - counter._at_begin)

        return PerStep()


def train_counting_item_calls(
    workspace, monkeypatch, name, trainer_class, eval_steps=None, **overrides
):
    import training.sft

    calls = ItemCalls()
    item = torch.Tensor.item

    def counted(tensor):
        calls.total += 1
        return item(tensor)

    monkeypatch.setattr(training.sft, "StageSFTTrainer", trainer_class)
    settings = dict(max_steps=6, logging_steps=3, save_steps=100, seed=3)
    config = sft_config(workspace, name, **{**settings, **overrides})
    trainer, _ = build_trainer(config, [calls.callback()])
    assert type(trainer) is trainer_class
    if eval_steps:  # evaluate during training, on the prepared training rows
        trainer.args.eval_strategy, trainer.args.eval_steps = "steps", eval_steps
        trainer.eval_dataset = trainer.train_dataset
    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "item", counted)
        trainer.train()
    return calls.per_step, trainer.state


@pytest.mark.parametrize("packing", [True, False])
def test_steps_that_do_not_log_read_nothing_back_from_the_device(
    sft_workspace, monkeypatch, packing
):
    """Our trainer skips TRL's per-step metric reads, and logs what TRL logs: the same losses,
    the same token counts (padding-free shapes when packed, attention masks when not)."""
    from trl import SFTTrainer

    from training.sft import StageSFTTrainer

    ours, ours_state = train_counting_item_calls(
        sft_workspace, monkeypatch, f"ours-{packing}", StageSFTTrainer, packing=packing
    )
    trl, trl_state = train_counting_item_calls(
        sft_workspace, monkeypatch, f"trl-{packing}", SFTTrainer, packing=packing
    )
    assert len(ours) == len(trl) == 6
    # steps 3 and 6 log; TRL reads entropy, accuracy and the token count back at every step
    assert [ours[i] for i in (0, 1, 3, 4)] == [0, 0, 0, 0]
    assert ours[2] > 0 and ours[5] > 0
    assert all(calls > 0 for calls in trl)

    def logged(state, key):
        return [row[key] for row in state.log_history if key in row]

    assert logged(ours_state, "loss") == pytest.approx(logged(trl_state, "loss"), rel=1e-6)
    assert len(logged(ours_state, "loss")) == 2
    assert logged(ours_state, "num_tokens") == logged(trl_state, "num_tokens")
    assert logged(ours_state, "num_tokens")[-1] > logged(ours_state, "num_tokens")[0] > 0
    assert ours_state.num_input_tokens_seen == trl_state.num_input_tokens_seen > 0
    for key in ("entropy", "mean_token_accuracy"):
        assert len(logged(ours_state, key)) == len(logged(trl_state, key)) == 2


def test_the_last_steps_tokens_count_after_the_last_log(sft_workspace, monkeypatch):
    """Steps after the last log still reach TRL's token total in the end-of-training log."""
    from trl import SFTTrainer

    from training.sft import StageSFTTrainer

    _, ours = train_counting_item_calls(
        sft_workspace, monkeypatch, "tail-ours", StageSFTTrainer, max_steps=5
    )
    _, trl = train_counting_item_calls(
        sft_workspace, monkeypatch, "tail-trl", SFTTrainer, max_steps=5
    )
    assert ours.log_history[-1]["num_tokens"] == trl.log_history[-1]["num_tokens"]


def test_batches_reach_the_device_without_waiting_for_it(sft_workspace):
    """Pinned batches copied with non_blocking: a blocking copy would wait for every kernel
    queued before it, once a step (a no-op on this CPU, so the setting itself is checked)."""
    import dataclasses

    from training.common import training_arguments

    config = dataclasses.replace(sft_config(sft_workspace, "non-blocking"), use_cpu=False)
    trainer, _ = build_trainer(config)
    assert trainer.args.dataloader_pin_memory and trainer.args.accelerator_config.non_blocking
    assert trainer.get_train_dataloader()._non_blocking is True
    # on the CPU neither applies (transformers would warn that nothing is pinned)
    on_the_cpu = training_arguments(sft_config(sft_workspace, "cpu"), sft_workspace)
    assert not on_the_cpu.dataloader_pin_memory and not on_the_cpu.accelerator_config.non_blocking


@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_checkpointing_is_off_unless_the_recipe_asks(sft_workspace, checkpointing):
    """TRL's SFTConfig turns it on by default (about a third more compute per step, never
    counted in MFU); the stage follows the recipe, off by default."""
    overrides = {"gradient_checkpointing": True} if checkpointing else {}
    name = f"checkpointing-{checkpointing}"
    config = sft_config(sft_workspace, name, max_steps=1, save_steps=100, **overrides)
    assert config.gradient_checkpointing is checkpointing
    trainer, _ = build_trainer(config)
    trainer.train()
    assert trainer.args.gradient_checkpointing is checkpointing  # both names, any 5.x
    assert trainer.model.is_gradient_checkpointing is checkpointing


def test_evaluations_between_logs_report_the_exact_token_total(sft_workspace, monkeypatch):
    """An evaluation at a step that does not log still sees every trained token (TRL reports
    the running total as ``eval_num_tokens``), and so does the end of training after it."""
    from trl import SFTTrainer

    from training.sft import StageSFTTrainer

    runs = {
        kind: train_counting_item_calls(
            sft_workspace, monkeypatch, f"eval-{kind.__name__}", kind, eval_steps=2, max_steps=7
        )[1]
        for kind in (StageSFTTrainer, SFTTrainer)
    }
    ours, trl = runs[StageSFTTrainer], runs[SFTTrainer]

    def evaluated(state):
        return [
            (row["step"], row["eval_num_tokens"]) for row in state.log_history if "eval_loss" in row
        ]

    assert [step for step, _ in evaluated(ours)] == [2, 4, 6, 7]
    assert evaluated(ours) == evaluated(trl)
    assert evaluated(ours)[0][1] > 0


def test_two_processes_count_every_token_between_logs(sft_workspace, tmp_path):
    """torchrun with two CPU processes: both ranks make the one gather that folds the skipped
    steps' tokens into the total, and it keeps every rank's sum, also at the end of the data,
    where a partial last batch is padded with a repeated row."""
    from torchrun_support import torchrun

    from training.reporting import read_metrics

    config = sft_config(sft_workspace, "unused")
    section = {
        "output_dir": str(tmp_path / "sft"),
        "data": config.data,
        "tokenizer": config.tokenizer,
        "model": {"preset": "tiny", "max_position_embeddings": 256},
        "packing": True,
        # 7 packed rows over 2 ranks of 1: every 4th step ends the data with one real row,
        # and the skipped steps' totals are read at that very step
        "max_length": 160,
        "per_device_train_batch_size": 1,
        "max_steps": 9,
        "logging_steps": 4,
        "save_steps": 100,
        "use_cpu": True,
    }
    launched = torchrun("sft", section, tmp_path)
    assert launched.returncode == 0, launched.stderr[-3000:]
    records = read_metrics(tmp_path / "sft" / "metrics.jsonl")
    # Packed batches are one padding-free row: TRL's token count is its length, and so is what
    # transformers counts as input tokens seen (gathered over the ranks at every step). They
    # differ only by the repeated row that pads the data's last batch, which TRL's own count of
    # that step leaves out (gather_for_metrics): 160 tokens at each end of the data (steps 4
    # and 8). The skipped steps' totals, read at those same steps, lose nothing.
    counted = [(r["step"], r["num_tokens"], r["tokens_seen"]) for r in records if "num_tokens" in r]
    assert [step for step, _, _ in counted] == [4, 8, 9]
    assert [seen - tokens for _, tokens, seen in counted] == [160, 320, 320]
    assert counted[-1][2] == 9 * 2 * 160
