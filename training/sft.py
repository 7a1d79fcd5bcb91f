"""Supervised fine-tuning through TRL's SFTTrainer (InstructGPT's first stage).

Loss on assistant tokens only: the chat template marks assistant text with {% generation %},
so the model learns to answer rather than to predict what users type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer
from trl import SFTConfig as TrlSFTConfig
from trl import SFTTrainer

from training.checkpoint import publish, verify
from training.common import (
    MetricsCallback,
    RunConfig,
    TokensCountedOnHost,
    at_least,
    data_digests,
    ids_digest,
    ids_left_out,
    load_splits,
    load_training_tokenizer,
    resource_errors,
    training_arguments,
)
from training.models import ModelConfig, build_causal_lm, check_context, count_parameters
from training.reporting import Reporter
from training.runs import (
    already_published,
    claim_runs,
    lineage_record,
    pin_parent,
    run_fingerprint,
    train_or_restore,
    whole_run_loss,
)

LOSS_TYPES = frozenset({"nll", "chunked_nll"})


@dataclass(frozen=True)
class SFTStageConfig(RunConfig):
    """SFT (see ``RunConfig`` for the shared settings).

    Attributes:
        data: the ``sft_dataset`` folder (conversational ``messages``).
        init_from: the checkpoint to fine-tune (the midtrained one by default in recipes).
        tokenizer: used only when ``init_from`` is empty (a preset model from scratch).
        model: preset or pretrained model when ``init_from`` is empty.
        assistant_only_loss: train on assistant tokens only.
        packing: pack conversations (best-fit decreasing) into rows of ``max_length`` tokens and
            flatten each batch into one padding-free row; documents never attend to each other
            (transformers derives per-document masks from the restarting ``position_ids``).
        fixed_shape: with packing, pad every flattened batch to ``batch * max_length`` tokens so
            compiled kernels (flex attention, ``torch_compile``) see one shape instead of
            recompiling for each batch.
        loss_type: unset keeps TRL's choice: ``chunked_nll``, or ``nll`` with Liger.
            ``chunked_nll`` projects only the labelled tokens, 256 at a time under activation
            checkpointing: bounded memory for large vocabularies, but each chunk's projection
            is computed twice and its loss dispatches 5x the ops (3,629 against 696 for a
            16k-token batch, ``bench/sft_loss_ops.py``), each a kernel launch on a GPU. ``nll``
            computes the batch's logits in one matmul and holds them: for a 32k vocabulary and
            32k tokens, roughly 12 GiB more at the peak. ``use_liger_kernel`` fuses projection
            and loss instead and needs ``nll``.
        warmup_steps: linear warmup, then cosine decay.
    """

    data: str = ""
    init_from: str | None = None
    tokenizer: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    assistant_only_loss: bool = True
    packing: bool = False
    fixed_shape: bool = True
    loss_type: str | None = None
    warmup_steps: int = 2
    learning_rate: float = 5e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data:
            raise ValueError("data: the sft dataset folder is required")
        at_least("warmup_steps", self.warmup_steps, 0)
        if not self.init_from and not self.tokenizer:
            raise ValueError("init_from: required unless tokenizer is set (a model from scratch)")
        if self.loss_type is not None and self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type: {self.loss_type!r} is not one of {sorted(LOSS_TYPES)}")
        if self.use_liger_kernel and self.loss_type == "chunked_nll":
            raise ValueError("loss_type: use_liger_kernel fuses its own loss; it needs 'nll'")


# Jinja's {% generation %} block, with or without whitespace control.
GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")


class StageSFTTrainer(TokensCountedOnHost, SFTTrainer):
    """TRL's SFTTrainer without a host-device synchronisation on steps that do not log.

    TRL reads entropy, token accuracy and the token count back from the device at every
    step (``.item()``), and transformers does the same for ``num_input_tokens_seen``
    (``TokensCountedOnHost``). Each read makes the host wait until the GPU has drained its
    queue, so the next step's kernels start into an idle device. Here the loss is the same,
    and what TRL logs is the same except that ``entropy`` and ``mean_token_accuracy`` describe
    the logging step's batch rather than the mean over the steps since the last log.
    ``num_tokens`` stays exact: the skipped steps' counts accumulate on the device and are
    read once, at the next log. Evaluation, MoE auxiliary losses and epoch-wise logging keep
    TRL's path unchanged.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Batches since the token total was last read: the same on every rank (steps are
        # skipped by number), so the gather that reads them is made by all ranks or none.
        self._skipped_batches = 0
        # Their tokens: counted from shapes on the host, or summed from attention masks on
        # the device (reading those would be the synchronisation).
        self._unlogged_tokens = 0
        self._unlogged_masked_tokens: torch.Tensor | None = None

    def _logs_next_step(self) -> bool:
        args, step = self.args, self.state.global_step + 1
        if args.logging_strategy != "steps" or not self.state.logging_steps:
            return True
        return (step == 1 and args.logging_first_step) or step % self.state.logging_steps == 0

    def _count_unlogged_tokens(self) -> None:
        """Fold the skipped batches' tokens into TRL's running total: one read, when a log
        (training or evaluation) is about to report it."""
        if not self._skipped_batches:
            return
        tokens = torch.tensor([self._unlogged_tokens], device=self.args.device)
        if self._unlogged_masked_tokens is not None:
            tokens = tokens + self._unlogged_masked_tokens
        # gather, not gather_for_metrics: at the end of the data the latter keeps only the
        # first ranks' entries, and each entry here sums many steps.
        self._total_train_tokens += int(self.accelerator.gather(tokens).sum().item())
        self._skipped_batches, self._unlogged_tokens, self._unlogged_masked_tokens = 0, 0, None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001, ANN201
        if not model.training or self.aux_loss_enabled or self._logs_next_step():
            self._count_unlogged_tokens()  # TRL reports the total in evaluation logs too
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # The inputs TRL's compute_loss sets for training, without the metrics it reads back.
        inputs["use_cache"] = False
        if self.args.use_liger_kernel:
            inputs["skip_logits"] = True
            inputs["use_token_scaling"] = self.args.loss_type == "dft"
        self._skipped_batches += 1
        if "attention_mask" in inputs:
            masked = inputs["attention_mask"].sum().reshape(1)
            previous = self._unlogged_masked_tokens
            self._unlogged_masked_tokens = masked if previous is None else previous + masked
        else:  # padding-free: one flattened row, its length is known on the host
            self._unlogged_tokens += inputs["position_ids"].size(1)
        return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # The end-of-training log comes after steps that logged nothing; their tokens count.
        if self._skipped_batches:
            self._count_unlogged_tokens()
            if self.model.training:
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        super().log(logs, start_time)


def assistant_turns(dataset) -> int:  # noqa: ANN001
    return sum(
        1 for messages in dataset["messages"] if any(m["role"] == "assistant" for m in messages)
    )


def build_trainer(
    config: SFTStageConfig, callbacks: list | None = None
) -> tuple[SFTTrainer, dict[str, Any]]:
    """TRL's SFTTrainer set up as the stage runs it (benchmarks time exactly this), and what
    the stage reports of its dataset."""
    parent = str(verify(config.init_from)) if config.init_from else None
    tokenizer = load_training_tokenizer(parent or config.tokenizer)
    template = getattr(tokenizer, "chat_template", None) or ""
    if config.assistant_only_loss and not GENERATION_MARKER.search(template):
        # TRL would fail later, at the first batch, without naming the tokenizer.
        raise ValueError(
            f"assistant_only_loss: the chat template of {parent or config.tokenizer} has no "
            "{% generation %} markers, so assistant tokens cannot be told apart; use the "
            "project's tokenizer, a template with the markers, or assistant_only_loss: false"
        )
    splits = load_splits(config.data, required=("messages",))
    train = splits["train"]
    usable = assistant_turns(train)
    if usable == 0:
        raise ValueError(f"{config.data}: no conversation has an assistant turn; nothing to learn")
    model = build_causal_lm(config.model, tokenizer, path=parent)
    check_context(config.max_length, model, "sft")
    encoded = tokenizer.apply_chat_template(
        list(train["messages"]),
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=config.assistant_only_loss,
    )
    too_long = sum(1 for ids in encoded["input_ids"] if len(ids) > config.max_length)
    # A row with no assistant token in its first max_length tokens teaches nothing: TRL would
    # drop it after truncation without a word, or refuse the whole set when a row has no
    # assistant turn at all. Such rows are left out here, counted and kept out of the hash of
    # rows used.
    masks = encoded.get("assistant_masks") or [[1]] * len(train)
    used = [i for i, mask in enumerate(masks) if 1 in mask[: config.max_length]]
    if not used:
        raise ValueError(
            f"{config.data}: no conversation has an assistant token within max_length="
            f"{config.max_length}; raise max_length or shorten the prompts"
        )
    fixed = config.packing and config.fixed_shape
    args = training_arguments(
        config,
        Path(config.output_dir) / "runs",
        TrlSFTConfig,
        lr_scheduler_type="cosine",
        warmup_steps=config.warmup_steps,
        max_length=config.max_length,
        assistant_only_loss=config.assistant_only_loss,
        loss_type=config.loss_type,
        packing=config.packing,
        pad_to_multiple_of=config.per_device_train_batch_size * config.max_length
        if fixed
        else None,
        include_num_input_tokens_seen=True,
        dataset_num_proc=None,
    )
    trainer = StageSFTTrainer(
        model=model,
        args=args,
        train_dataset=train.select(used).select_columns(["messages"]),
        eval_dataset=splits["test"].select_columns(["messages"]) if "test" in splits else None,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    return trainer, {
        "conversations": len(train),
        "with_assistant": usable,
        "truncated": too_long,
        "without_answer_within_max_length": len(train) - len(used),
        "row_ids_sha256": ids_digest(train),
        "row_ids_used_sha256": ids_digest(train.select(used)),
        "rows_used": len(used),
        # no assistant token within max_length: a forward trace must not claim them
        "row_ids_left_out": ids_left_out(train, train.select(used)),
    }


def main(config: SFTStageConfig) -> Path:
    out = Path(config.output_dir)
    reporter = Reporter(out / "metrics.jsonl")
    parent = str(verify(config.init_from)) if config.init_from else None
    # Before the trainer: building it tokenizes every conversation, which an unchanged re-run
    # must not wait for.
    data_sha256, data_digest = data_digests(config.data, None if parent else config.tokenizer)
    parent_pin = pin_parent(config, parent)
    fingerprint = run_fingerprint(config, data_digest, [parent])
    if published := already_published(config, fingerprint, reporter, "sft"):
        return published
    metrics = MetricsCallback(reporter)
    trainer, counts = build_trainer(config, [metrics])
    model, tokenizer = trainer.model, trainer.processing_class
    too_long = counts["truncated"]
    resume, started = claim_runs(out / "runs", fingerprint, reporter, config.resume)
    reporter.log(
        f"sft: {count_parameters(model) / 1e6:.2f}M parameters, "
        f"{counts['conversations']} conversations ({too_long} truncated to "
        f"{config.max_length} tokens, {counts['without_answer_within_max_length']} left out: "
        f"no assistant token within them), resume from {resume or 'scratch'}"
    )
    with resource_errors("sft", out / "runs", lambda: trainer.state.global_step):
        train_or_restore(trainer, resume, config.max_steps)
    if metrics.nan_step is not None:
        raise FloatingPointError(
            f"sft: non-finite loss at step {metrics.nan_step}; the last good state is the latest "
            f"checkpoint in {out / 'runs'}"
        )
    final = {
        "train_loss": whole_run_loss(trainer, resume),
        # passes over the rows used: below 1, some of them were not seen
        "epochs": round(trainer.state.epoch or 0.0, 4),
        "conversations": counts["conversations"],
        "truncated": too_long,
        "without_answer_within_max_length": counts["without_answer_within_max_length"],
    }
    if trainer.eval_dataset is not None and len(trainer.eval_dataset):
        final["eval_loss"] = trainer.evaluate()["eval_loss"]
    lineage = lineage_record(
        "sft",
        config,
        {
            **config.inputs,
            "data": config.data,
            "data_sha256": data_sha256,
            # the split as published (a trace re-hashes it), then the rows actually trained on
            "row_ids_sha256": counts["row_ids_sha256"],
            "row_ids_used_sha256": counts["row_ids_used_sha256"],
            "rows_used": counts["rows_used"],
            "row_ids_left_out": counts["row_ids_left_out"],
        },
        parent,
        final,
        started,
        fingerprint,
        parent_pin=parent_pin,
    )
    with resource_errors("sft", out / "runs"):
        checkpoint = publish(
            trainer.model, tokenizer, out / "checkpoint", lineage, reporter.metrics_path
        )
    reporter.log(f"sft: published {checkpoint} {final}")
    reporter.done({"checkpoint": str(checkpoint), **final})
    reporter.close()
    return checkpoint
