"""Reward model (InstructGPT's second stage) through TRL's RewardTrainer.

A sequence-classification head (one scalar) on the SFT checkpoint learns Bradley-Terry
preferences: loss = -log sigmoid(r(x, y+) - r(x, y-)).

InstructGPT's option (``group_by_prompt``): all C(K, 2) comparisons of one prompt form a single
batch element. Two reasons from the paper: the pairs of one prompt are strongly correlated, so
shuffling them as independent examples overfits; and each of the K completions needs one forward
pass, not one per pair it appears in. We implement it as a collator plus a ``compute_loss``
override, not a sampler: each dataset row *is* one prompt (its unique completions and the index
pairs between them), so ``per_device_train_batch_size`` counts prompts, the completions are scored
once, and the loss is averaged over each prompt's pairs before it is averaged over prompts. The
default (off) is TRL's own path, one pair per row.

Pairs are tokenized here (prompt + answer through the chat template) rather than by TRL, so a
pair longer than ``max_length`` is dropped *and counted*: the reward is read at the last token,
so truncating would score an answer the model never saw the end of.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from trl import RewardConfig, RewardTrainer

from curation.synthetic import SyntheticTask, check_answer
from training.checkpoint import publish, verify
from training.common import (
    MetricsCallback,
    RunConfig,
    at_least,
    data_digests,
    ids_digest,
    left_out_entry,
    load_splits,
    load_training_tokenizer,
    resource_errors,
    training_arguments,
)
from training.models import ModelConfig, check_context, count_parameters, llama_config
from training.reporting import Reporter
from training.rewards import (
    ANSWER_KEY_TASKS,
    completion_text,
    prompt_key,
    synthetic_answer_key,
)
from training.rows import usable_rows
from training.runs import (
    already_published,
    claim_runs,
    last_run_checkpoint,
    lineage_record,
    pin_parent,
    run_fingerprint,
    train_or_restore,
    whole_run_loss,
)

PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")
# what each column must hold (training.rows): a question, and two answers
PREFERENCE_FIELDS = {"prompt": "prompt", "chosen": "answer", "rejected": "answer"}


@dataclass(frozen=True)
class RewardStageConfig(RunConfig):
    """The reward stage (see ``RunConfig`` for the shared settings).

    Attributes:
        data: the ``preference_dataset`` folder (conversational prompt/chosen/rejected, origin).
        init_from: the checkpoint whose transformer carries the reward head (SFT in recipes).
        tokenizer: used only when ``init_from`` is empty (a preset model from scratch).
        model: preset model when ``init_from`` is empty.
        group_by_prompt: InstructGPT's grouping: one batch element per prompt with all its
            pairs, loss averaged per prompt (``per_device_train_batch_size`` counts prompts).
        use_pair_margin: subtract ``pair_margin`` inside the sigmoid (TRL's margin loss);
            missing margins count as 0.
        center_rewards_coefficient: TRL's penalty that keeps rewards centred on zero.
        min_pair_margin: drop (and count) train pairs whose recorded ``pair_margin`` is below
            this: near-ties, whose winner is a coin toss, teach noise. Pairs with no recorded
            margin are kept.
        clear_pair_margin: also report held-out accuracy on the pairs whose recorded margin is
            at least this (``heldout_accuracy_clear``): the pairs with a known winner (in the
            demo, a right against a wrong synthetic answer; two wrong answers differ by 1).
            Held-out right-vs-wrong pairs of checkable prompts are always reported as well
            (``heldout_accuracy_checkable``), found by the answer key rather than a margin.
        checkable_pairs: train, for prompts with a checkable answer, on right-vs-wrong pairs
            only, whatever their margin (see ``load_preferences``).
        answer_key_tasks / answer_key_seed: ``generate_tasks(n, seed)`` whose prompts the data
            may contain (the embedded samples' stream).
        warmup_steps: linear warmup, then cosine decay.
        eval_batch_size: sequences per forward pass when scoring the held-out pairs.
    """

    data: str = ""
    init_from: str | None = None
    tokenizer: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    group_by_prompt: bool = False
    use_pair_margin: bool = False
    center_rewards_coefficient: float | None = None
    min_pair_margin: float | None = None
    clear_pair_margin: float | None = None
    checkable_pairs: bool = False
    answer_key_tasks: int = ANSWER_KEY_TASKS
    answer_key_seed: int = 0
    warmup_steps: int = 2
    learning_rate: float = 1e-4
    eval_batch_size: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data:
            raise ValueError("data: the preference dataset folder is required")
        if not self.init_from and not self.tokenizer:
            raise ValueError("init_from: required unless tokenizer is set (a model from scratch)")
        at_least("warmup_steps", self.warmup_steps, 0)
        at_least("eval_batch_size", self.eval_batch_size, 1)
        if self.center_rewards_coefficient is not None:
            at_least("center_rewards_coefficient", self.center_rewards_coefficient, 0)


def right_vs_wrong(row: Mapping[str, Any], answer_key: Mapping[str, SyntheticTask]) -> bool | None:
    """For a pair whose prompt has a checkable answer: whether the chosen answer is right and
    the rejected one wrong. None when the key does not know the prompt."""
    task = answer_key.get(prompt_key(row["prompt"]))
    if task is None:
        return None
    chosen, rejected = completion_text(row["chosen"]), completion_text(row["rejected"])
    return check_answer(task, chosen) and not check_answer(task, rejected)


def load_preferences(
    path: str | Path,
    min_pair_margin: float | None = None,
    answer_key: Mapping[str, SyntheticTask] | None = None,
) -> tuple[Any, dict[str, dict[str, int]]]:
    """The train/test splits of a preference folder, in memory (later maps must not write cache
    files into the dataset folder), without the pairs that teach nothing: a prompt without a
    user's text or an answer without the assistant's (``training.rows``; a malformed row is
    refused, named), chosen equal to rejected (both splits), and, when ``min_pair_margin`` is
    set, train pairs whose recorded margin is below it (pairs with no recorded margin are kept).

    With an ``answer_key``, a train pair whose prompt has a checkable answer is kept exactly when
    it puts a right answer over a wrong one, whatever its margin: the answer decides, where a
    margin only approximates it (a judge's ranks of sampled answers differ by 1 between a right
    and a wrong answer, as between two wrong ones). Returns the splits and, per reason and
    split, how many rows were dropped."""
    import datasets

    datasets.disable_progress_bars()  # logs, not terminals, read this output
    splits = load_splits(path)
    missing = [c for c in PREFERENCE_COLUMNS if c not in splits["train"].column_names]
    if missing:
        raise ValueError(f"{path}: not a preference dataset, missing column(s) {missing}")
    kept: dict[str, Any] = {}
    dropped: dict[str, dict[str, int]] = {}
    for name, split in splits.items():
        rows, empty = usable_rows(path, name, split, PREFERENCE_FIELDS)
        for reason, count in empty.items():
            dropped.setdefault(reason, {})[name] = count
        splits[name] = split.select(rows) if len(rows) < len(split) else split
    dropped["chosen_equals_rejected"] = {}
    for name, split in splits.items():
        # flatten_indices copies the rows into memory: no later map writes beside the source.
        kept[name] = split.filter(
            lambda row: row["chosen"] != row["rejected"], keep_in_memory=True
        ).flatten_indices(keep_in_memory=True)
        dropped["chosen_equals_rejected"][name] = len(split) - len(kept[name])
    key = answer_key or {}
    if key:
        before = len(kept["train"])
        kept["train"] = (
            kept["train"]
            .filter(lambda row: right_vs_wrong(row, key) is not False, keep_in_memory=True)
            .flatten_indices(keep_in_memory=True)
        )
        dropped["not_right_vs_wrong"] = {"train": before - len(kept["train"])}
    if min_pair_margin is not None and "pair_margin" in kept["train"].column_names:
        before = len(kept["train"])
        kept["train"] = (
            kept["train"]
            .filter(
                lambda row: (
                    row["pair_margin"] is None
                    or row["pair_margin"] >= min_pair_margin
                    or prompt_key(row["prompt"]) in key
                ),
                keep_in_memory=True,
            )
            .flatten_indices(keep_in_memory=True)
        )
        dropped["below_min_pair_margin"] = {"train": before - len(kept["train"])}
    if len(kept["train"]) == 0:
        raise ValueError(
            f"{path}: no usable preference pairs left in the train split (dropped: "
            f"{describe_dropped(dropped)})"
        )
    return datasets.DatasetDict(kept), dropped


def without_none(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def describe_dropped(dropped: dict[str, dict[str, int]]) -> str:
    """The train split's drops by reason, the reasons that dropped nothing left out."""
    described = [
        f"{n['train']} {why.replace('_', ' ')}" for why, n in dropped.items() if n.get("train")
    ]
    return ", ".join(described) or "none"


def dropped_metrics(dropped: dict[str, dict[str, int]]) -> dict[str, int]:
    """``dropped_<reason>`` (train) and ``dropped_<reason>_test`` as flat metric keys."""
    return {
        f"dropped_{reason}{'' if split == 'train' else '_' + split}": count
        for reason, counts in dropped.items()
        for split, count in counts.items()
    }


def tokenizer_digest(tokenizer: Any) -> str:
    """A hash of the vocabulary and merges: a later stage can refuse a reward model whose
    tokenizer differs from its policy's before any work."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:
        text = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def encode_pair(tokenizer: Any, row: dict[str, Any]) -> tuple[list[int], list[int]]:
    def encode(answer: list[dict]) -> list[int]:
        encoded = tokenizer.apply_chat_template(row["prompt"] + answer, tokenize=True)
        return list(encoded["input_ids"])

    return encode(row["chosen"]), encode(row["rejected"])


def tokenize_pairs(
    split: Any,
    tokenizer: Any,
    max_length: int,
    use_margin: bool,
    answer_key: Mapping[str, SyntheticTask] | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """One record per pair that fits ``max_length`` (chosen_ids, rejected_ids, margin, origin,
    prompt key, ``row``: its position in ``split``, and with an ``answer_key`` whether it is a
    right-vs-wrong pair of a checkable prompt) and the number of pairs dropped for being
    longer."""
    records, too_long = [], 0
    for position, row in enumerate(split):
        chosen, rejected = encode_pair(tokenizer, row)
        if max(len(chosen), len(rejected)) > max_length:
            too_long += 1
            continue
        recorded = row.get("pair_margin")
        records.append(
            {
                "row": position,
                "chosen_ids": chosen,
                "rejected_ids": rejected,
                "margin": float(recorded) if use_margin and recorded is not None else 0.0,
                "recorded_margin": recorded,
                "origin": row.get("origin") or "unknown",
                "prompt_key": json.dumps(row["prompt"], sort_keys=True),
                "checkable": bool(answer_key) and right_vs_wrong(row, answer_key) is True,
            }
        )
    return records, too_long


def group_pairs(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per prompt: its distinct completions (``sequences``) and, per pair, the index of
    the chosen and the rejected completion among them."""
    by_prompt: dict[str, dict[str, Any]] = {}
    for record in records:
        group = by_prompt.setdefault(
            record["prompt_key"],
            {"sequences": [], "chosen_index": [], "rejected_index": [], "margin": []},
        )
        for side in ("chosen", "rejected"):
            ids = record[f"{side}_ids"]
            try:
                index = group["sequences"].index(ids)
            except ValueError:
                group["sequences"].append(ids)
                index = len(group["sequences"]) - 1
            group[f"{side}_index"].append(index)
        group["margin"].append(record["margin"])
    return list(by_prompt.values())


@dataclass
class GroupedPreferenceCollator:
    """Prompts → one padded batch of their distinct completions, plus pair indices into it and
    the prompt each pair belongs to."""

    pad_token_id: int

    def __call__(self, groups: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences, chosen, rejected, margins, owner = [], [], [], [], []
        for number, group in enumerate(groups):
            offset = len(sequences)
            sequences.extend(group["sequences"])
            chosen.extend(offset + i for i in group["chosen_index"])
            rejected.extend(offset + i for i in group["rejected_index"])
            margins.extend(group["margin"])
            owner.extend([number] * len(group["chosen_index"]))
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, ids in enumerate(sequences):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "chosen_index": torch.tensor(chosen),
            "rejected_index": torch.tensor(rejected),
            "margin": torch.tensor(margins, dtype=torch.float),
            "pair_group": torch.tensor(owner),
        }


class GroupedRewardTrainer(RewardTrainer):
    """RewardTrainer whose batch elements are prompts (see the module docstring)."""

    def _prepare_dataset(self, dataset, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if "sequences" in dataset.column_names:
            return dataset  # already tokenized and grouped by us
        return super()._prepare_dataset(dataset, *args, **kwargs)

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = ["sequences", "chosen_index", "rejected_index", "margin"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
        mode = "train" if self.model.training else "eval"
        outputs = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False
        )
        rewards = outputs.logits.squeeze(-1)
        chosen = rewards[inputs["chosen_index"]]
        rejected = rewards[inputs["rejected_index"]]
        per_pair = -torch.nn.functional.logsigmoid(chosen - rejected - inputs["margin"])
        owner = inputs["pair_group"]
        prompts = int(owner.max()) + 1
        sums = torch.zeros(prompts, dtype=per_pair.dtype, device=per_pair.device)
        counts = torch.zeros_like(sums)
        sums = sums.index_add(0, owner, per_pair)
        counts = counts.index_add(0, owner, torch.ones_like(per_pair))
        loss = (sums / counts).mean()
        if self.args.center_rewards_coefficient is not None:
            loss = loss + self.args.center_rewards_coefficient * torch.mean(rewards**2)
        with torch.no_grad():
            self._metrics[mode]["accuracy"].append((chosen > rejected).float().mean().item())
            self._metrics[mode]["margin"].append((chosen - rejected).mean().item())
            self._metrics[mode]["mean_reward"].append(rewards.mean().item())
            self._metrics[mode]["pairs_per_prompt"].append(len(per_pair) / prompts)
        return (loss, outputs) if return_outputs else loss


def build_reward_model(config: RewardStageConfig, tokenizer: Any, parent: str | None):
    """One-output sequence classifier on ``parent``'s transformer (a new, seeded head), or on a
    seeded preset; its pad token set, since the head reads the last non-pad token."""
    from transformers import AutoModelForSequenceClassification, LlamaForSequenceClassification
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    torch.manual_seed(config.seed)
    dtype = getattr(torch, config.model.dtype)
    if parent:
        with suppress_seqcls_warning():
            model = AutoModelForSequenceClassification.from_pretrained(
                parent,
                num_labels=1,
                dtype=dtype,
                use_safetensors=True,
                attn_implementation=config.model.attn_implementation,
            )
    else:
        torch.manual_seed(config.model.seed)
        model = LlamaForSequenceClassification(
            llama_config(config.model, tokenizer, num_labels=1)
        ).to(dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


@torch.no_grad()
def score_sequences(model: Any, sequences: list[list[int]], pad_id: int, batch: int) -> list[float]:
    """The scalar reward of each token sequence (right-padded batches)."""
    model.eval()
    device = next(model.parameters()).device
    scores: list[float] = []
    for start in range(0, len(sequences), batch):
        chunk = sequences[start : start + batch]
        width = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, seq in enumerate(chunk):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        scores.extend(logits.squeeze(-1).float().cpu().tolist())
    return scores


def pair_accuracy(
    model: Any,
    records: list[dict[str, Any]],
    pad_id: int,
    batch: int,
    clear_margin: float | None = None,
) -> dict[str, float]:
    """Held-out accuracy (share of pairs with r(chosen) > r(rejected)) and mean margin
    r(chosen) - r(rejected), as flat metric keys: overall, per origin (``_human``, ``_ai``) and,
    with ``clear_margin``, on the pairs whose recorded margin is at least that (``_clear``),
    and on the right-vs-wrong pairs of checkable prompts when the records know (``_checkable``)."""
    if not records:
        return {"heldout_pairs": 0}
    sequences = [r["chosen_ids"] for r in records] + [r["rejected_ids"] for r in records]
    scores = score_sequences(model, sequences, pad_id, batch)
    chosen, rejected = scores[: len(records)], scores[len(records) :]
    by_origin: dict[str, list[float]] = defaultdict(list)
    for record, good, bad in zip(records, chosen, rejected, strict=True):
        by_origin["all"].append(good - bad)
        by_origin[record["origin"]].append(good - bad)
        recorded = record.get("recorded_margin")
        if clear_margin is not None and recorded is not None and recorded >= clear_margin:
            by_origin["clear"].append(good - bad)
        if record.get("checkable"):
            by_origin["checkable"].append(good - bad)
    metrics: dict[str, float] = {}
    for origin, margins in sorted(by_origin.items()):
        suffix = "" if origin == "all" else f"_{origin}"
        metrics[f"heldout_pairs{suffix}"] = len(margins)
        metrics[f"heldout_accuracy{suffix}"] = sum(m > 0 for m in margins) / len(margins)
        metrics[f"heldout_margin{suffix}"] = sum(margins) / len(margins)
    return metrics


def main(config: RewardStageConfig) -> Path:
    """Train, publish ``<output_dir>/checkpoint`` (reward model + lineage.json), return it."""
    import datasets

    out = Path(config.output_dir)
    reporter = Reporter(out / "metrics.jsonl")
    parent = str(verify(config.init_from)) if config.init_from else None
    # Before any data is read or model built: an unchanged re-run has nothing to train. A
    # model trained from scratch takes its tokenizer from the recipe, so the tokenizer's files
    # count too (a tokenizer rebuilt at the same path trains again).
    data_sha256, data_digest = data_digests(config.data, None if parent else config.tokenizer)
    parent_pin = pin_parent(config, parent)
    fingerprint = run_fingerprint(config, data_digest, [parent])
    if published := already_published(config, fingerprint, reporter, "reward"):
        return published
    tokenizer = load_training_tokenizer(parent or config.tokenizer)
    key = synthetic_answer_key(config.answer_key_tasks, config.answer_key_seed)
    splits, dropped = load_preferences(
        config.data, config.min_pair_margin, key if config.checkable_pairs else None
    )
    train_records, too_long = tokenize_pairs(
        splits["train"], tokenizer, config.max_length, config.use_pair_margin
    )
    if not train_records:
        raise ValueError(
            f"{config.data}: every train pair is longer than max_length={config.max_length} tokens"
        )
    # the pairs trained on, for lineage: a pair too long for max_length never reached the model
    used = splits["train"].select([record["row"] for record in train_records])
    test_records, test_too_long = (
        tokenize_pairs(splits["test"], tokenizer, config.max_length, False, key)
        if "test" in splits
        else ([], 0)
    )
    if config.group_by_prompt:
        train = datasets.Dataset.from_list(group_pairs(train_records))
        collator = GroupedPreferenceCollator(tokenizer.pad_token_id)
    else:
        columns = ["chosen_ids", "rejected_ids"] + (["margin"] if config.use_pair_margin else [])
        train = datasets.Dataset.from_list([{c: r[c] for c in columns} for r in train_records])
        collator = None  # TRL's DataCollatorForPreference
    model = build_reward_model(config, tokenizer, parent)
    check_context(config.max_length, model, "reward")
    args = training_arguments(
        config,
        out / "runs",
        RewardConfig,
        lr_scheduler_type="cosine",
        warmup_steps=config.warmup_steps,
        max_length=config.max_length,
        center_rewards_coefficient=config.center_rewards_coefficient,
        include_num_input_tokens_seen=True,
        logging_nan_inf_filter=False,  # a NaN must reach MetricsCallback, not be averaged away
        dataset_num_proc=None,
    )
    metrics = MetricsCallback(reporter)
    trainer = (GroupedRewardTrainer if config.group_by_prompt else RewardTrainer)(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[metrics],
    )
    resume, started = claim_runs(out / "runs", fingerprint, reporter, config.resume)
    grouping = f"grouped into {len(train)} prompts" if config.group_by_prompt else "ungrouped"
    reporter.log(
        f"reward: {count_parameters(model) / 1e6:.2f}M parameters, {len(train_records)} pairs "
        f"({grouping}); dropped from train: {describe_dropped(dropped)}, {too_long} longer than "
        f"{config.max_length} tokens; resume from {resume or 'scratch'}"
    )
    with resource_errors("reward", out / "runs", lambda: trainer.state.global_step):
        train_or_restore(trainer, resume, config.max_steps)
    if metrics.nan_step is not None:
        raise FloatingPointError(
            f"reward: non-finite loss at step {metrics.nan_step}; the last good state is "
            f"{last_run_checkpoint(out / 'runs') or 'none (no step was saved before it)'}"
        )
    heldout = pair_accuracy(
        trainer.model,
        test_records,
        tokenizer.pad_token_id,
        config.eval_batch_size,
        config.clear_pair_margin,
    )
    final = {
        "train_loss": whole_run_loss(trainer, resume),
        "pairs": len(train_records),
        "prompts": len(train) if config.group_by_prompt else None,
        **dropped_metrics(dropped),
        "dropped_too_long": too_long,
        "dropped_too_long_test": test_too_long,
        **heldout,
    }
    offered = load_splits(config.data)["train"]  # the split as published
    lineage = lineage_record(
        "reward",
        config,
        {
            **config.inputs,
            "data": config.data,
            "data_sha256": data_sha256,
            # the split as published (a trace re-hashes it), then the pairs trained on
            "row_ids_sha256": ids_digest(offered),
            "row_ids_used_sha256": ids_digest(used),
            # no usable text, chosen equal to rejected, below the margin, not right over wrong,
            # longer than max_length: a trace must not claim them
            **left_out_entry(offered, used),
            "rows_used": len(used),
            "tokenizer_sha256": tokenizer_digest(tokenizer),
            "dropped": {
                **dropped,
                "longer_than_max_length": {"train": too_long, "test": test_too_long},
            },
        },
        parent,
        final,
        started,
        fingerprint,
        parent_pin=parent_pin,
    )
    with resource_errors("reward", out / "runs"):
        checkpoint = publish(
            trainer.model, tokenizer, out / "checkpoint", lineage, reporter.metrics_path
        )
    reporter.log(f"reward: published {checkpoint} {final}")
    reporter.done({"checkpoint": str(checkpoint), **without_none(final)})
    reporter.close()
    return checkpoint
