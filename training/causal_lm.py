"""Causal-LM training on text: the stable phase (pretrain) and the decay phase (midtrain).

MiniCPM's schedule: warmup, then a long stable phase at the peak learning rate on pretraining
text; then a short decay phase (about 10% of tokens) on a mix of pretraining and instruction
data, the learning rate falling to a floor. The decay phase starts from the stable checkpoint's
weights *and* optimizer state, as if the run had never stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import DataCollatorForLanguageModeling, Trainer

from training.checkpoint import load_optimizer_state, publish, verify
from training.common import (
    MetricsCallback,
    RunConfig,
    TokensCountedOnHost,
    at_least,
    data_digests,
    ids_digest,
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

CAUSAL_LM_STAGES = ("pretrain", "midtrain")


@dataclass(frozen=True)
class CausalLMConfig(RunConfig):
    """A causal-LM stage (see ``RunConfig`` for the shared settings).

    Attributes:
        stage: ``pretrain`` or ``midtrain``, recorded in lineage.json; ``python -m training
            <stage>`` sets it from the stage it runs and refuses a recipe that says otherwise.
        data: a dataset folder with a ``text`` column (``save_to_disk`` or train/test Parquet);
            a ``tokens`` column, when present, caps each document's tokens (exact mixtures).
        tokenizer: tokenizer.json, its folder, or a transformers tokenizer folder.
        model: preset or pretrained model, used when ``init_from`` is empty.
        init_from: a checkpoint directory to start from (its weights, and its optimizer state
            when it saved one and ``load_optimizer`` is on).
        load_optimizer: continue the optimizer of ``init_from`` (the decay phase does).
        save_optimizer: store the optimizer state in the checkpoint (the stable phase does).
        warmup_steps / stable_steps / decay_steps: the warmup-stable-decay schedule; a stable
            phase has ``decay_steps: 0`` (constant after warmup), a decay phase ``warmup_steps:
            0, stable_steps: 0`` and ``decay_steps`` = ``max_steps``.
        min_lr_ratio: the floor the decay reaches, as a fraction of the peak.
    """

    stage: Literal["pretrain", "midtrain"] = "pretrain"
    data: str = ""
    tokenizer: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    init_from: str | None = None
    load_optimizer: bool = False
    save_optimizer: bool = True
    warmup_steps: int = 2
    stable_steps: int | None = None
    decay_steps: int = 0
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stage not in CAUSAL_LM_STAGES:
            # the type hint is checked for recipes only; lineage must never record another name
            raise ValueError(f"stage: {self.stage!r} is not one of {list(CAUSAL_LM_STAGES)}")
        if not self.data:
            raise ValueError("data: a dataset folder is required")
        if not self.tokenizer and not self.init_from:
            raise ValueError("tokenizer: required unless init_from names a checkpoint")
        at_least("min_lr_ratio", self.min_lr_ratio, 0)
        if self.min_lr_ratio > 1:
            raise ValueError(
                f"min_lr_ratio: must be <= 1 (a floor below the peak), got {self.min_lr_ratio!r}"
            )
        stable = self.stable_steps
        if stable is None:
            stable = self.max_steps - self.warmup_steps - self.decay_steps
        phases = {"warmup_steps": self.warmup_steps, "stable_steps": stable}
        phases["decay_steps"] = self.decay_steps
        if min(phases.values()) < 0 or sum(phases.values()) > self.max_steps:
            # transformers would quietly cut the schedule short: a decay phase that never
            # reaches its floor, or a warmup that never reaches the peak
            raise ValueError(
                f"{', '.join(phases)}: {' + '.join(map(str, phases.values()))} steps do not fit "
                f"in max_steps {self.max_steps}"
            )


def pack(dataset: Any, tokenizer: Any, block: int) -> tuple[Any, dict[str, int]]:
    """Tokenize, cap each document at its ``tokens`` budget, join with EOS and cut into blocks
    of ``block`` tokens (the tail shorter than a block is dropped and counted)."""
    has_budget = "tokens" in dataset.column_names
    eos = tokenizer.eos_token_id

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        if has_budget:
            ids = [row[:budget] for row, budget in zip(ids, batch["tokens"], strict=True)]
        return {"ids": [row + [eos] for row in ids]}

    tokenized = dataset.map(tokenize, batched=True, remove_columns=dataset.column_names)

    def group(batch: dict[str, list]) -> dict[str, list]:
        stream = [token for row in batch["ids"] for token in row]
        usable = len(stream) // block * block
        return {"input_ids": [stream[i : i + block] for i in range(0, usable, block)]}

    # A batch too short for one block yields no rows, so the tails are counted from totals
    # rather than carried on rows that may not exist.
    total = sum(len(row) for row in tokenized["ids"])
    packed = tokenized.map(group, batched=True, batch_size=1000, remove_columns=["ids"])
    stats = {
        "blocks": len(packed),
        "tokens": len(packed) * block,
        "tail_tokens_dropped": total - len(packed) * block,
    }
    return packed, stats


def main(config: CausalLMConfig) -> Path:
    """Train, publish ``<output_dir>/checkpoint`` with lineage.json, return its path."""

    out = Path(config.output_dir)
    reporter = Reporter(out / "metrics.jsonl")
    parent = str(verify(config.init_from)) if config.init_from else None
    tokenizer = load_training_tokenizer(parent or config.tokenizer)
    splits = load_splits(config.data, required=("text",))
    data_sha256, data_digest = data_digests(config.data, None if parent else config.tokenizer)
    parent_pin = pin_parent(config, parent)
    fingerprint = run_fingerprint(config, data_digest, [parent])
    if published := already_published(config, fingerprint, reporter, config.stage):
        return published
    train, train_stats = pack(splits["train"], tokenizer, config.max_length)
    if len(train) == 0:
        raise ValueError(
            f"{config.data}: not enough text for one block of {config.max_length} tokens"
        )
    model = build_causal_lm(config.model, tokenizer, path=parent)
    check_context(config.max_length, model, config.stage)
    args = training_arguments(
        config,
        out / "runs",
        lr_scheduler_type="warmup_stable_decay",
        lr_scheduler_kwargs={
            "num_decay_steps": config.decay_steps,
            "num_stable_steps": config.stable_steps
            if config.stable_steps is not None
            else config.max_steps - config.warmup_steps - config.decay_steps,
            "min_lr_ratio": config.min_lr_ratio,
        },
        warmup_steps=config.warmup_steps,
        include_num_input_tokens_seen=True,
    )
    optimizer_state = load_optimizer_state(parent) if parent and config.load_optimizer else None
    if parent and config.load_optimizer and optimizer_state is None:
        raise ValueError(
            f"{config.stage}: load_optimizer is on but {parent} holds no optimizer state; "
            "publish the stable phase with save_optimizer: true, or turn load_optimizer off"
        )
    metrics = MetricsCallback(reporter)
    trainer = _Trainer(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        callbacks=[metrics],
        optimizer_state=optimizer_state,
    )
    resume, started = claim_runs(out / "runs", fingerprint, reporter, config.resume)
    reporter.log(
        f"{config.stage}: {count_parameters(model) / 1e6:.2f}M parameters, {len(train)} blocks of "
        f"{config.max_length}, resume from {resume or 'scratch'}"
    )
    with resource_errors(config.stage, out / "runs", lambda: trainer.state.global_step):
        train_or_restore(trainer, resume, config.max_steps)
    if metrics.nan_step is not None:
        raise FloatingPointError(
            f"{config.stage}: non-finite loss at step {metrics.nan_step}; the last good state is "
            f"the latest checkpoint in {out / 'runs'}"
        )
    evaluation = {}
    if "test" in splits and len(splits["test"]):
        test, _ = pack(splits["test"], tokenizer, config.max_length)
        if len(test):
            loss = trainer.evaluate(eval_dataset=test)["eval_loss"]
            evaluation = {"eval_loss": loss, "perplexity": float(torch.exp(torch.tensor(loss)))}
    final = {
        "train_loss": whole_run_loss(trainer, resume),
        # passes over the train split: below 1, some of the rows its hash names were not seen
        "epochs": round(trainer.state.epoch or 0.0, 4),
        **train_stats,
        **evaluation,
    }
    lineage = lineage_record(
        config.stage,
        config,
        {
            **config.inputs,
            "data": config.data,
            "data_sha256": data_sha256,
            "row_ids_sha256": ids_digest(splits["train"]),
        },
        parent,
        final,
        started,
        fingerprint,
        parent_pin=parent_pin,
    )
    with resource_errors(config.stage, out / "runs"):
        checkpoint = publish(
            trainer.model,
            tokenizer,
            out / "checkpoint",
            lineage,
            reporter.metrics_path,
            optimizer=trainer.optimizer if config.save_optimizer else None,
        )
    reporter.log(f"{config.stage}: published {checkpoint} {final}")
    reporter.done({"checkpoint": str(checkpoint), **final})
    reporter.close()
    return checkpoint


class _Trainer(TokensCountedOnHost, Trainer):
    """Counts tokens on the host and loads a saved optimizer state into the freshly created
    optimizer (decay phase)."""

    def __init__(self, *args: Any, optimizer_state: dict | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._optimizer_state = optimizer_state

    def create_optimizer(self, *args: Any, **kwargs: Any):
        optimizer = super().create_optimizer(*args, **kwargs)
        if self._optimizer_state is not None:
            state = self._optimizer_state
            # This phase's schedule decides the learning rate, not the saved groups.
            groups = [
                {**saved, "lr": group["lr"], "initial_lr": group.get("initial_lr", group["lr"])}
                for saved, group in zip(state["param_groups"], optimizer.param_groups, strict=True)
            ]
            optimizer.load_state_dict({"state": state["state"], "param_groups": groups})
            self._optimizer_state = None
        return optimizer
