"""Direct preference optimisation through TRL's DPOTrainer: the policy learns the preferences
without a reward model, loss = -log sigmoid(beta log(pi(y+|x)/ref(y+|x)) - beta log(pi(y-|x)/
ref(y-|x))), where ref is the frozen SFT checkpoint.

The reference is a second copy loaded from disk, frozen and never sharing a tensor with the
policy, so nothing the optimizer does can move it. With ``precompute_ref_log_probs`` TRL scores
every pair with it once before training (it tripled throughput in our GPU baseline), and training
then needs one forward pass per step instead of two.

TRL logs the implicit reward beta log(pi/ref) of each answer: rewards/margins (chosen minus
rejected) and rewards/accuracies (share of pairs where chosen wins) are the evidence that the
policy moved towards the preferred answers; they land in metrics.jsonl and lineage.json.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from trl import DPOConfig, DPOTrainer

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
from training.models import ModelConfig, build_causal_lm, check_context, count_parameters
from training.ranks import world_size
from training.reporting import Reporter, read_metrics
from training.reward import (
    describe_dropped,
    dropped_metrics,
    encode_pair,
    load_preferences,
    tokenizer_digest,
)
from training.rewards import ANSWER_KEY_TASKS, synthetic_answer_key
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

PAIR_COLUMNS = ["prompt", "chosen", "rejected"]


@dataclass(frozen=True)
class DPOStageConfig(RunConfig):
    """The DPO stage (see ``RunConfig`` for the shared settings).

    Attributes:
        data: the ``preference_dataset`` folder (conversational prompt/chosen/rejected).
        init_from: the policy's starting checkpoint (SFT in recipes); required.
        reference: the frozen reference checkpoint; ``init_from`` when empty.
        model: how checkpoints are loaded (dtype, attention implementation).
        beta: strength of the pull towards the reference (higher: smaller moves).
        loss_type: TRL's DPO losses (``sigmoid`` is the paper's; ``ipo``, ``hinge``, ...);
            adding ``sft`` (the chosen answer's NLL, as in RPO) keeps a small model from
            unlearning the chosen answers while it pushes the rejected ones down.
        loss_weights: one weight per loss type (all 1 when empty).
        min_pair_margin: drop (and count) train pairs whose recorded ``pair_margin`` is below
            this (near-ties); pairs with no recorded margin are kept.
        checkable_pairs: for prompts with a checkable answer (the synthetic tasks), keep a pair
            exactly when its chosen answer is right and its rejected one wrong, whatever its
            margin (``min_pair_margin`` then applies to the other prompts only). This is what
            lets sampled answers ranked by a judge (ranks 1 apart) teach DPO.
        answer_key_tasks / answer_key_seed: ``generate_tasks(n, seed)`` whose prompts the data
            may contain (the embedded samples' stream).
        precompute_ref_log_probs: score every pair with the reference once, before training.
        precompute_ref_batch_size: batch size of that pass (the train batch size when empty).
        truncation_mode: which end of a pair longer than ``max_length`` TRL keeps. With
            ``keep_start`` a pair whose prompt alone fills ``max_length`` keeps no answer
            token; TRL drops those, so the stage drops and counts them first
            (``prompt_fills_max_length``), and they are not among the rows used.
        warmup_steps: linear warmup, then cosine decay.
    """

    data: str = ""
    init_from: str = ""
    reference: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    beta: float = 0.1
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"])
    loss_weights: list[float] | None = None
    min_pair_margin: float | None = None
    checkable_pairs: bool = False
    answer_key_tasks: int = ANSWER_KEY_TASKS
    answer_key_seed: int = 0
    precompute_ref_log_probs: bool = False
    precompute_ref_batch_size: int | None = None
    truncation_mode: Literal["keep_start", "keep_end"] = "keep_start"
    warmup_steps: int = 2
    learning_rate: float = 5e-6

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data:
            raise ValueError("data: the preference dataset folder is required")
        if not self.init_from:
            raise ValueError("init_from: the checkpoint DPO starts from is required")
        # 0 makes every DPO loss flat (sigmoid: nothing trains; ipo divides by it), and a
        # negative beta inverts the objective: the policy would learn the rejected answers
        above("beta", self.beta, 0)
        at_least("warmup_steps", self.warmup_steps, 0)
        if self.precompute_ref_batch_size is not None:
            at_least("precompute_ref_batch_size", self.precompute_ref_batch_size, 1)


def frozen_reference(config: DPOStageConfig, tokenizer: Any, path: str) -> Any:
    """A separate, frozen copy of the reference: its own tensors, no gradients, eval mode."""
    reference = build_causal_lm(config.model, tokenizer, path=path)
    reference.requires_grad_(False)
    return reference.eval()


def prompt_fills(split: Any, tokenizer: Any, max_length: int) -> list[bool]:
    """Per pair, whether its prompt rendered for generation (as TRL renders it) holds at least
    ``max_length`` tokens: truncated at the end, such a pair keeps no answer token."""
    if len(split) == 0:
        return []
    rendered = tokenizer.apply_chat_template(
        list(split["prompt"]), add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return [len(ids) >= max_length for ids in rendered]


def without_full_prompts(
    splits: dict[str, Any],
    dropped: dict[str, dict[str, int]],
    tokenizer: Any,
    path: str,
    max_length: int,
) -> dict[str, Any]:
    """The splits without the pairs whose prompt fills ``max_length`` (``keep_start``
    truncation), counted in ``dropped['prompt_fills_max_length']``. TRL drops them silently
    inside the trainer, after the log and lineage had counted them as trained, and with none
    left failed after both models loaded (``num_samples=0``)."""
    kept, counts = {}, {}
    for name, split in splits.items():
        full = prompt_fills(split, tokenizer, max_length)
        counts[name] = sum(full)
        kept[name] = split.select([i for i, f in enumerate(full) if not f]) if any(full) else split
    dropped["prompt_fills_max_length"] = counts
    if len(kept["train"]) == 0:
        raise ValueError(
            f"{path}: no usable preference pairs left in the train split (dropped: "
            f"{describe_dropped(dropped)}); the prompts left all fill max_length={max_length} "
            "tokens, leaving no room for an answer: raise max_length or use truncation_mode: "
            "keep_end"
        )
    return kept


def too_long_pairs(split: Any, tokenizer: Any, max_length: int) -> int:
    """Pairs that TRL's collator will truncate to ``max_length`` (counted, never silent)."""
    return sum(
        1 for row in split if max(len(ids) for ids in encode_pair(tokenizer, row)) > max_length
    )


def reward_trend(metrics_path: Path) -> dict[str, float]:
    """First and last logged implicit-reward margin and accuracy of the training run."""
    logged = [r for r in read_metrics(metrics_path) if "rewards/margins" in r]
    if not logged:
        return {}
    return {
        "reward_margin_first": logged[0]["rewards/margins"],
        "reward_margin_last": logged[-1]["rewards/margins"],
        "reward_accuracy_first": logged[0]["rewards/accuracies"],
        "reward_accuracy_last": logged[-1]["rewards/accuracies"],
    }


def check_reference_tokenizer(tokenizer: Any, parent: str, reference_path: str) -> None:
    if reference_path == parent:
        return
    if tokenizer_digest(load_training_tokenizer(reference_path)) != tokenizer_digest(tokenizer):
        raise ValueError(
            f"reference {reference_path}: its tokenizer differs from the policy's ({parent}); "
            "log-probability ratios need the same tokens"
        )


def on_shared_disk(splits: dict[str, Any], folder: Path) -> list[Any]:
    """The splits saved by the main rank and loaded by every rank. TRL writes precomputed
    reference log-probs beside the dataset's own files, on the main rank alone; an in-memory
    dataset's files are in each process's own temporary folder, so the other ranks looked for
    a file that was never written there (FileNotFoundError)."""
    import datasets
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        shutil.rmtree(folder, ignore_errors=True)
        for name, split in splits.items():
            if split is not None:
                split.save_to_disk(str(folder / name))
    state.wait_for_everyone()
    return [
        datasets.load_from_disk(str(folder / name)) if split is not None else None
        for name, split in splits.items()
    ]


def build_trainer(
    config: DPOStageConfig, callbacks: list | None = None, reporter: Reporter | None = None
) -> tuple[DPOTrainer, dict[str, Any]]:
    """TRL's DPOTrainer set up as the stage runs it (benchmarks time exactly this), and what the
    stage reports of its inputs."""
    out = Path(config.output_dir)
    parent = str(verify(config.init_from))
    reference_path = str(verify(config.reference)) if config.reference else parent
    tokenizer = load_training_tokenizer(parent)
    check_reference_tokenizer(tokenizer, parent, reference_path)
    key = (
        synthetic_answer_key(config.answer_key_tasks, config.answer_key_seed)
        if config.checkable_pairs
        else None
    )
    splits, dropped = load_preferences(config.data, config.min_pair_margin, key)
    if config.truncation_mode == "keep_start":
        splits = without_full_prompts(splits, dropped, tokenizer, config.data, config.max_length)
    train = splits["train"]
    truncated = too_long_pairs(train, tokenizer, config.max_length)
    test = splits["test"] if "test" in splits and len(splits["test"]) else None
    policy = build_causal_lm(config.model, tokenizer, path=parent)
    check_context(config.max_length, policy, "dpo")
    reference = frozen_reference(config, tokenizer, reference_path)
    if shares_storage(policy, reference):
        raise RuntimeError("dpo: the reference shares tensors with the policy; it would move too")
    args = training_arguments(
        config,
        out / "runs",
        DPOConfig,
        lr_scheduler_type="cosine",
        warmup_steps=config.warmup_steps,
        beta=config.beta,
        loss_type=list(config.loss_type),
        loss_weights=list(config.loss_weights) if config.loss_weights else None,
        precompute_ref_log_probs=config.precompute_ref_log_probs,
        precompute_ref_batch_size=config.precompute_ref_batch_size,
        max_length=config.max_length,
        truncation_mode=config.truncation_mode,
        include_num_input_tokens_seen=True,
        logging_nan_inf_filter=False,  # a NaN must reach MetricsCallback, not be averaged away
        dataset_num_proc=None,
    )
    if config.precompute_ref_log_probs and world_size() > 1:
        train, test = on_shared_disk({"train": train, "test": test}, out / "pairs")
    if reporter is not None:
        reporter.log(
            f"dpo: {count_parameters(policy) / 1e6:.2f}M parameters, {len(train)} pairs, beta "
            f"{config.beta}, loss {'+'.join(config.loss_type)}, reference {reference_path}"
            f"{' (log-probs precomputed)' if config.precompute_ref_log_probs else ''}; dropped "
            f"from train: {describe_dropped(dropped)}; {truncated} longer than "
            f"{config.max_length} tokens (truncated, {config.truncation_mode})"
        )
    with resource_errors("dpo", out / "runs"):
        trainer = DPOTrainer(
            model=policy,
            ref_model=reference,
            args=args,
            train_dataset=train.select_columns(PAIR_COLUMNS),
            eval_dataset=test.select_columns(PAIR_COLUMNS) if test is not None else None,
            processing_class=tokenizer,
            callbacks=callbacks,
        )
    return trainer, {
        "parent": parent,
        "reference": reference_path,
        "tokenizer": tokenizer,
        "train": train,
        "test": test,
        "dropped": dropped,
        "truncated": truncated,
    }


def main(config: DPOStageConfig) -> Path:
    """Train, publish ``<output_dir>/checkpoint`` with lineage.json, return its path."""
    out = Path(config.output_dir)
    reporter = Reporter(out / "metrics.jsonl")
    metrics = MetricsCallback(reporter)
    # Before the trainer: building it runs the reference model over every pair when the
    # log-probs are precomputed, which an unchanged re-run must not pay for.
    parent = str(verify(config.init_from))
    reference_path = str(verify(config.reference)) if config.reference else parent
    # a reference replaced in place (without lineage) keeps its path: refused even unchanged
    check_reference_tokenizer(load_training_tokenizer(parent), parent, reference_path)
    data_digest = content_digest(config.data)
    parent_pin = pin_parent(config, parent)
    # the log-probability ratios are taken against this reference: one republished mid-run
    # would leave the lineage naming a model the policy was not compared with
    pins = pin_inputs({"reference_checkpoint": reference_path})
    fingerprint = run_fingerprint(config, data_digest, [parent, reference_path])
    if published := already_published(config, fingerprint, reporter, "dpo"):
        return published
    trainer, built = build_trainer(config, [metrics], reporter)
    tokenizer = built["tokenizer"]
    train, test, dropped, truncated = (
        built["train"],
        built["test"],
        built["dropped"],
        built["truncated"],
    )
    resume, started = claim_runs(out / "runs", fingerprint, reporter, config.resume)
    reporter.log(f"dpo: resume from {resume or 'scratch'}")
    with resource_errors("dpo", out / "runs", lambda: trainer.state.global_step):
        train_or_restore(trainer, resume, config.max_steps)
    if metrics.nan_step is not None:
        raise FloatingPointError(
            f"dpo: non-finite loss at step {metrics.nan_step}; the last good state is "
            f"{last_run_checkpoint(out / 'runs') or 'none (no step was saved before it)'}"
        )
    final: dict[str, Any] = {
        "train_loss": whole_run_loss(trainer, resume),
        "pairs": len(train),
        **dropped_metrics(dropped),
        "truncated": truncated,
        **reward_trend(out / "metrics.jsonl"),
    }
    if test is not None:
        evaluation = trainer.evaluate()
        for key in ("eval_loss", "eval_rewards/margins", "eval_rewards/accuracies"):
            if key in evaluation:
                final[key.replace("/", "_")] = evaluation[key]
    offered = load_splits(config.data)["train"]  # the split as published
    lineage = lineage_record(
        "dpo",
        config,
        {
            **config.inputs,
            "data": config.data,
            # the dataset's train split as published (a trace re-hashes it), then the pairs
            # actually used after dropping
            "data_sha256": data_digest,
            "row_ids_sha256": ids_digest(offered),
            "row_ids_used_sha256": ids_digest(train),
            # no usable text, too long, chosen equal to rejected: a trace must not claim them
            **left_out_entry(offered, train),
            "rows_used": len(train),
            "reference_checkpoint": reference_path,
            "dropped": dropped,
        },
        parent,
        final,
        started,
        fingerprint,
        parent_pin=parent_pin,
        input_pins=pins,
    )
    with resource_errors("dpo", out / "runs"):
        checkpoint = publish(
            trainer.model, tokenizer, out / "checkpoint", lineage, reporter.metrics_path
        )
    reporter.log(f"dpo: published {checkpoint} {final}")
    reporter.done({"checkpoint": str(checkpoint), **final})
    reporter.close()
    return checkpoint


@torch.no_grad()
def shares_storage(first: Any, second: Any) -> bool:
    """Whether two models have any parameter tensor in common (a reference must not)."""
    pointers = {p.data_ptr() for p in first.parameters()}
    return any(p.data_ptr() in pointers for p in second.parameters())
