"""GRPO through TRL's GRPOTrainer: several completions per prompt, each scored by reward
functions (the reward model and, on the synthetic tasks, the checkable answer), the advantage of
a completion being its reward relative to its group; no value model.

The trainer gets the SFT checkpoint's *path*, not a model: it loads the policy from it and
rebuilds the frozen reference from the same path. RLOO (``training/rloo.py``) shares everything
here but the trainer class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.checkpoint import publish, verify
from training.common import (
    MetricsCallback,
    RunConfig,
    above,
    at_least,
    ids_digest,
    left_out_entry,
    load_splits,
    load_training_tokenizer,
    resource_errors,
    training_arguments,
)
from training.datafiles import content_digest
from training.models import require_causal_lm
from training.ranks import local_device
from training.reporting import Reporter, read_metrics
from training.rewards import (
    ANSWER_KEY_TASKS,
    CheckableAnswerReward,
    RewardModelScorer,
    attach_answers,
    check_same_tokenizer,
    synthetic_answer_key,
)
from training.rows import usable_rows
from training.runs import (
    already_published,
    claim_runs,
    last_run_checkpoint,
    lineage_record,
    pin_inputs,
    pin_parent,
    run_fingerprint,
    train_or_restore,
    whole_run_loss,
)

REWARDS = ("reward_model", "checkable_answer")


@dataclass(frozen=True)
class GroupRLConfig(RunConfig):
    """Settings GRPO and RLOO share (see ``RunConfig`` too; ``max_length`` caps prompt tokens:
    longer prompts are left out and counted, as are prompts without a user's text).

    Attributes:
        data: the ``prompt_dataset`` folder (conversational ``prompt``; an ``answer`` column,
            and ``task_kind`` for case-sensitive tasks, are used by the checkable reward).
        init_from: the SFT checkpoint: the policy starts from it and it is the reference.
        reward_model: a reward checkpoint, needed when ``reward_weights`` has ``reward_model``.
        reward_weights: weight per reward function (``reward_model``, ``checkable_answer``).
        answer_key_tasks / answer_key_seed: ``generate_tasks(n, seed)`` whose prompts the data
            holds without answers (the embedded data: seed 0, see ``ANSWER_KEY_TASKS``).
        only_answerable: with the checkable reward alone, train only on prompts whose answer is
            known (the others would give no signal).
        num_generations: completions per prompt (the group).
        max_completion_length: tokens per completion.
        beta: weight of the KL penalty to the reference (0: none, and no reference is loaded).
        temperature: sampling temperature (> 0).
    """

    data: str = ""
    init_from: str = ""
    reward_model: str | None = None
    reward_weights: dict[str, float] = field(default_factory=lambda: {"checkable_answer": 1.0})
    answer_key_tasks: int = ANSWER_KEY_TASKS
    answer_key_seed: int = 0
    only_answerable: bool = True
    num_generations: int = 4
    max_completion_length: int = 16
    beta: float = 0.04
    temperature: float = 1.0
    learning_rate: float = 1e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.init_from:
            raise ValueError("init_from: the SFT checkpoint (policy and reference) is required")
        if not self.data:
            raise ValueError("data: the prompt dataset folder is required")
        # a negative beta pays the policy for drifting from the reference
        at_least("beta", self.beta, 0)
        above("temperature", self.temperature, 0)
        at_least("max_completion_length", self.max_completion_length, 1)
        at_least("answer_key_tasks", self.answer_key_tasks, 0)
        for name, weight in self.reward_weights.items():
            at_least(f"reward_weights.{name}", weight, 0)
        unknown = sorted(set(self.reward_weights) - set(REWARDS))
        if unknown:
            raise ValueError(f"reward_weights: unknown reward {unknown}; expected {list(REWARDS)}")
        if not any(w > 0 for w in self.reward_weights.values()):
            raise ValueError("reward_weights: at least one reward needs a positive weight")
        if "reward_model" in self.reward_weights and not self.reward_model:
            raise ValueError("reward_model: reward_weights uses the reward model but none is set")
        if self.reward_model and "reward_model" not in self.reward_weights:
            raise ValueError(
                "reward_weights: reward_model is set but has no weight; add reward_model: <w>"
            )
        if self.num_generations < 2:
            raise ValueError("num_generations: a group needs at least 2 completions")
        batch = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if batch % self.num_generations:
            raise ValueError(
                f"num_generations: {self.num_generations} does not divide the {batch} completions "
                "of one step (per_device_train_batch_size x gradient_accumulation_steps)"
            )


@dataclass(frozen=True)
class GRPOStageConfig(GroupRLConfig):
    """GRPO (see ``GroupRLConfig``)."""


def reward_functions(config: GroupRLConfig, tokenizer: Any) -> tuple[list[Any], list[float]]:
    """The recipe's reward functions and weights, in a fixed order; the reward model is checked
    against the policy's tokenizer before anything trains."""
    functions, weights = [], []
    if "reward_model" in config.reward_weights:
        # TRL moves only nn.Module rewards to its device; a callable's model goes there itself,
        # to this rank's GPU ("cuda" alone would put every rank's copy on the first one).
        scorer = RewardModelScorer(
            config.reward_model,
            max_length=4 * config.max_length,
            device=local_device(config.use_cpu),
        )
        check_same_tokenizer(tokenizer, scorer.tokenizer, str(config.reward_model))
        functions.append(scorer)
        weights.append(config.reward_weights["reward_model"])
    if "checkable_answer" in config.reward_weights:
        key = synthetic_answer_key(config.answer_key_tasks, config.answer_key_seed)
        functions.append(CheckableAnswerReward(key))
        weights.append(config.reward_weights["checkable_answer"])
    return functions, weights


def training_prompts(config: GroupRLConfig, tokenizer: Any) -> tuple[Any, dict[str, int]]:
    """The prompt split with ``answer``/``task_kind`` attached where the checkable reward is
    used; prompts without a user's text (``training.rows``; a malformed one is refused, named),
    too long, or (checkable reward alone) without an answer, are left out and counted."""
    train = load_splits(config.data)["train"]
    if "prompt" not in train.column_names:
        raise ValueError(f"{config.data}: no 'prompt' column (expected the prompt dataset)")
    rows, empty = usable_rows(config.data, "train", train, {"prompt": "prompt"})
    if not rows:
        raise ValueError(
            f"{config.data}: no usable prompt: none of the {len(train)} prompts of the train "
            "split has a user message with text"
        )
    if len(rows) < len(train):
        train = train.select(rows).flatten_indices(keep_in_memory=True)
    rendered = tokenizer.apply_chat_template(
        list(train["prompt"]), add_generation_prompt=True, tokenize=True, return_dict=False
    )
    fits = [len(ids) <= config.max_length for ids in rendered]
    stats = {**empty, "prompts_too_long": fits.count(False)}
    columns = ["prompt"]
    if "checkable_answer" in config.reward_weights:
        key = synthetic_answer_key(config.answer_key_tasks, config.answer_key_seed)
        found = attach_answers(train, key)
        train = (
            train.remove_columns([c for c in ("answer", "task_kind") if c in train.column_names])
            .add_column("answer", [a for a, _ in found])
            .add_column("task_kind", [k for _, k in found])
        )
        columns += ["answer", "task_kind"]
        stats["prompts_with_answer"] = sum(1 for a, _ in found if a)
        if set(config.reward_weights) == {"checkable_answer"} and config.only_answerable:
            fits = [f and bool(a) for f, (a, _) in zip(fits, found, strict=True)]
    kept = train.select([i for i, ok in enumerate(fits) if ok])
    stats["prompts"] = len(kept)
    if len(kept) == 0:
        raise ValueError(
            f"{config.data}: no usable prompt ({stats}); the checkable reward needs prompts from "
            f"generate_tasks({config.answer_key_tasks}, seed={config.answer_key_seed}) or an "
            "'answer' column"
        )
    return kept.select_columns(["id", *columns] if "id" in kept.column_names else columns), stats


def run_group_stage(
    config: GroupRLConfig, stage: str, trainer_class: type, args_class: type
) -> Path:
    """Train with TRL's ``trainer_class`` (GRPOTrainer or RLOOTrainer) and publish."""
    out = Path(config.output_dir)
    runs = out / "runs"
    parent = str(verify(config.init_from))
    # TRL loads the policy from this path itself: a reward checkpoint there failed mid-run
    # ("'LlamaForSequenceClassification' object has no attribute 'generate'")
    require_causal_lm(parent)
    reporter = Reporter(out / "metrics.jsonl")
    # Before the reward model, the prompts or the policy are loaded: an unchanged re-run has
    # nothing to train.
    data_digest = content_digest(config.data)
    parent_pin = pin_parent(config, parent)
    # the reward model scores completions only when the recipe weighs it: pin it exactly then
    scores_with_model = "reward_model" in config.reward_weights
    pins = pin_inputs({"reward_model": config.reward_model} if scores_with_model else {})
    fingerprint = run_fingerprint(config, data_digest, [parent, config.reward_model])
    if published := already_published(config, fingerprint, reporter, stage):
        return published
    tokenizer = load_training_tokenizer(parent)
    train, stats = training_prompts(config, tokenizer)
    functions, weights = reward_functions(config, tokenizer)
    args = training_arguments(
        config,
        runs,
        args_class,
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        beta=config.beta,
        temperature=config.temperature,
        reward_weights=weights,
        model_init_kwargs={"dtype": "float32", "use_safetensors": True},
        remove_unused_columns=False,
        log_completions=False,
    )
    metrics = MetricsCallback(reporter)
    trainer = trainer_class(
        model=parent,
        reward_funcs=functions,
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
        callbacks=[metrics],
    )
    resume, started = claim_runs(runs, fingerprint, reporter, config.resume)
    reporter.log(
        f"{stage}: {stats['prompts']} prompts ({stats}), {config.num_generations} completions "
        f"each, rewards {dict(zip([f.__name__ for f in functions], weights, strict=True))}, "
        f"resume from {resume or 'scratch'}"
    )
    with resource_errors(stage, runs, lambda: trainer.state.global_step):
        train_or_restore(trainer, resume, config.max_steps)
    if metrics.nan_step is not None:
        raise FloatingPointError(
            f"{stage}: non-finite loss at step {metrics.nan_step}; nothing was published, the last "
            f"good state is {last_run_checkpoint(runs) or 'the SFT checkpoint ' + parent}"
        )
    final = {
        "train_loss": whole_run_loss(trainer, resume),
        **stats,
        **reward_summary(out),
    }
    offered = load_splits(config.data)["train"]  # the split as published
    lineage = lineage_record(
        stage,
        config,
        {
            **config.inputs,
            "data": config.data,
            "reward_model": config.reward_model,
            "reward_weights": dict(config.reward_weights),
            # the prompt split as published (a trace re-hashes it), then the prompts used
            "data_sha256": data_digest,
            "row_ids_sha256": ids_digest(offered),
            "row_ids_used_sha256": ids_digest(train),
            # no usable text, too long, chosen equal to rejected: a trace must not claim them
            **left_out_entry(offered, train),
            "rows_used": len(train),
        },
        parent,
        final,
        started,
        fingerprint,
        parent_pin=parent_pin,
        input_pins=pins,
    )
    with resource_errors(stage, runs):
        checkpoint = publish(
            trainer.model, tokenizer, out / "checkpoint", lineage, reporter.metrics_path
        )
    reporter.log(f"{stage}: published {checkpoint} {final}")
    reporter.done({"checkpoint": str(checkpoint), **final})
    reporter.close()
    return checkpoint


def reward_summary(out: Path) -> dict[str, float]:
    """Mean reward over the first and last quarter of logged steps, and the last KL."""
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "reward" in r]
    if not rows:
        return {}
    quarter = max(1, len(rows) // 4)

    def mean(key: str, part: list[dict]) -> float:
        values = [float(r[key]) for r in part if key in r and math.isfinite(float(r[key]))]
        return sum(values) / len(values) if values else float("nan")

    return {
        "reward_first": mean("reward", rows[:quarter]),
        "reward_last": mean("reward", rows[-quarter:]),
        "kl_last": mean("kl", rows[-quarter:]),
    }


def main(config: GRPOStageConfig) -> Path:
    from trl import GRPOConfig, GRPOTrainer

    return run_group_stage(config, "grpo", GRPOTrainer, GRPOConfig)
