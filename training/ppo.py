"""PPO against a reward model (InstructGPT's third stage): maximise E[r(x, y)] - kl_coef KL(pi ||
pi_ref), with pi_ref the frozen SFT model and a value model initialised from the reward model.

TRL 1.12's ``trl.experimental.ppo.PPOTrainer`` does the work today, but the stage only talks to a
``PolicyOptimizer``: the day TRL's PPO leaves our pin, another implementation registers in
``OPTIMIZERS`` and neither the recipe nor the assets change.

PPO-ptx (InstructGPT's pretraining-loss term) is not in TRL's trainer; ``_StageTrainer`` adds it
by wrapping the one ``accelerator.backward`` call of TRL's PPO minibatch loop, so every policy
update also descends ``ptx_coef`` times the language-modelling loss on a pretraining block.

TRL scores a response at its stop token, while the reward stage trained (and
``training.rewards.RewardModelScorer`` scores) on the chat template's rendering, which ends one
newline later; on the demo the two agree in direction (PPO's training score and the scorer's
held-out score both rise).

TRL's PPO loop has no resume of its own, and its saves hold the policy alone. Each save here
also holds the value model (``value/``, written before transformers marks the save finished), so
a killed run continues from its last save: policy, value model, optimizer and schedule restored,
step numbering and the loss curve carried on, and only the remaining updates trained. The
rollouts after a resume sample other completions than an unbroken run would have (the sampling
generator starts again from the seed), and the prompts continue at the same offset of a pass
over them; a run killed after its last save publishes that save without training.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from transformers import TrainerCallback

from training.checkpoint import publish, verify
from training.common import (
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
from training.models import ModelConfig, build_causal_lm, count_parameters
from training.reporting import Reporter, read_metrics
from training.rewards import check_same_tokenizer, load_reward_model
from training.rows import usable_rows
from training.runs import (
    already_published,
    claim_runs,
    last_run_checkpoint,
    lineage_record,
    pin_inputs,
    pin_parent,
    run_fingerprint,
    saved_step,
)


@dataclass(frozen=True)
class PPOStageConfig(RunConfig):
    """PPO (see ``RunConfig`` for the shared settings; ``max_steps`` counts PPO updates, each on
    ``per_device_train_batch_size * gradient_accumulation_steps`` freshly sampled episodes, and
    ``max_length`` caps prompt tokens: longer prompts are left out and counted, as are prompts
    without a user's text).

    Attributes:
        data: the ``prompt_dataset`` folder (conversational ``prompt`` column).
        init_from: the SFT checkpoint: the policy starts from it and it is the frozen reference.
        reward_model: the reward checkpoint (the value model starts as a copy of it).
        implementation: which ``PolicyOptimizer`` runs the updates (``trl``).
        kl_coef: weight of the per-token KL penalty to the reference (>= 0).
        kl_estimator: ``k1`` (log-ratio) or ``k3`` (lower variance).
        response_length: tokens sampled per response.
        stop_token: ``eos`` ends a response at the tokenizer's EOS; ``none`` never stops early.
        missing_eos_penalty: subtracted from the score of a response that never emitted EOS.
        temperature: sampling temperature of the rollouts (> 0).
        num_ppo_epochs: passes over each batch of episodes.
        num_mini_batches: minibatches per PPO epoch.
        cliprange: PPO's policy ratio clip.
        vf_coef: weight of the value loss.
        whiten_rewards: normalise rewards per batch (needs minibatches of at least 8).
        ptx_coef: weight of the pretraining loss (PPO-ptx); 0 turns it off.
        ptx_data: a text dataset folder (``text`` column) for PPO-ptx.
    """

    data: str = ""
    init_from: str = ""
    reward_model: str = ""
    implementation: Literal["trl"] = "trl"
    kl_coef: float = 0.05
    kl_estimator: Literal["k1", "k3"] = "k1"
    response_length: int = 16
    stop_token: Literal["eos", "none"] = "eos"
    missing_eos_penalty: float | None = 1.0
    temperature: float = 0.7
    num_ppo_epochs: int = 4
    num_mini_batches: int = 1
    cliprange: float = 0.2
    vf_coef: float = 0.1
    whiten_rewards: bool = False
    ptx_coef: float = 0.0
    ptx_data: str | None = None
    learning_rate: float = 1e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.reward_model:
            raise ValueError(
                "reward_model: PPO needs a reward checkpoint to optimise against (the reward "
                "stage's output); set it, or run dpo, which needs none"
            )
        if not self.init_from:
            raise ValueError("init_from: the SFT checkpoint (policy and reference) is required")
        if not self.data:
            raise ValueError("data: the prompt dataset folder is required")
        at_least("ptx_coef", self.ptx_coef, 0)
        # a negative KL coefficient pays the policy for drifting from the reference
        at_least("kl_coef", self.kl_coef, 0)
        above("temperature", self.temperature, 0)
        at_least("response_length", self.response_length, 1)
        at_least("num_ppo_epochs", self.num_ppo_epochs, 1)
        at_least("num_mini_batches", self.num_mini_batches, 1)
        above("cliprange", self.cliprange, 0)
        at_least("vf_coef", self.vf_coef, 0)
        if self.ptx_coef > 0 and not self.ptx_data:
            raise ValueError("ptx_data: PPO-ptx (ptx_coef > 0) needs a pretraining text dataset")
        batch = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if batch % self.num_mini_batches:
            raise ValueError(
                f"num_mini_batches: {self.num_mini_batches} does not divide the {batch} episodes "
                "of one update"
            )


@dataclass
class PolicySetup:
    """Everything an implementation needs, already loaded and checked by the stage."""

    config: PPOStageConfig
    policy: Any
    reference: Any
    reward_model: Any
    value_model: Any
    tokenizer: Any
    prompts: Any  # a datasets.Dataset with input_ids (prompts rendered for generation)
    runs: Path
    callbacks: list[TrainerCallback] = field(default_factory=list)
    ptx_blocks: Any | None = None  # a datasets.Dataset of input_ids blocks
    # a finished save in ``runs/`` to continue from: policy and value model are already loaded
    # from it; the implementation restores its optimizer, schedule and step count
    resume_from: str | None = None


class PolicyOptimizer(Protocol):
    """Improves ``setup.policy`` against ``setup.reward_model``; reports through the setup's
    callbacks (``on_log`` with ``objective/scores``, ``objective/kl``... once per update)."""

    @property
    def step(self) -> int:
        """Updates done so far."""
        ...

    def train(self) -> Any:
        """Run every update and return the trained policy model."""
        ...


class GenerationTimer:
    """Seconds spent in ``model.generate`` since the last ``take``: the share of a PPO step
    spent sampling is what decides whether faster generation (vLLM, caching) is worth it."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, model: Any) -> None:
        generate = model.generate

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return generate(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        model.generate = timed

    def take(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


class NonFiniteLoss(FloatingPointError):
    def __init__(self, step: int, keys: list[str]) -> None:
        super().__init__(f"non-finite {', '.join(keys)} at step {step}")
        self.step = step


WATCHED = ("objective/scores", "objective/kl", "loss/policy_avg", "loss/value_avg", "loss/ptx_avg")


class RolloutMetrics(TrainerCallback):
    """One metrics.jsonl record per update, with the share of step time spent generating and
    episodes/s; a non-finite loss, score or KL stops the run before anything is saved over the
    last good checkpoint (TRL's PPO loop ignores ``should_training_stop``, so this raises)."""

    def __init__(
        self,
        reporter: Reporter,
        timer: GenerationTimer,
        episodes_per_step: int,
        ptx_losses: Callable[[], float | None] = lambda: None,
    ) -> None:
        self.reporter = reporter
        self.timer = timer
        self.episodes_per_step = episodes_per_step
        self.ptx_losses = ptx_losses
        self.last = time.perf_counter()
        self.records: list[dict[str, Any]] = []

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        self.last = time.perf_counter()
        self.timer.take()

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        generating = self.timer.take()
        record = {"step": state.global_step, **(logs or {})}
        ptx = self.ptx_losses()
        if ptx is not None:
            record["loss/ptx_avg"] = ptx
        if seconds > 0:
            record["step_seconds"] = seconds
            record["generation_share"] = generating / seconds
            record["episodes_per_s"] = self.episodes_per_step / seconds
        self.reporter.metrics(record)
        self.records.append(record)
        bad = [k for k in WATCHED if k in record and not math.isfinite(float(record[k]))]
        if bad:
            raise NonFiniteLoss(state.global_step, bad)
        return control


def _trl_ppo_classes():
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    class _StageTrainer(PPOTrainer):
        """TRL's PPOTrainer plus PPO-ptx (each PPO backward pass also carries ``ptx_coef``
        times the LM loss of one pretraining batch) and saves a resume can continue from."""

        def __init__(
            self, *args: Any, ptx: Iterator[torch.Tensor] | None, ptx_coef: float, **kwargs: Any
        ) -> None:
            super().__init__(*args, **kwargs)
            self.ptx_history: list[float] = []
            if ptx is None or ptx_coef <= 0:
                return
            backward = self.accelerator.backward
            policy = self.accelerator.unwrap_model(self.model).policy
            device = self.accelerator.device

            def backward_with_ptx(loss: torch.Tensor, **options: Any) -> Any:
                block = next(ptx).to(device)
                lm_loss = policy(input_ids=block, labels=block).loss
                self.ptx_history.append(float(lm_loss.detach()))
                return backward(loss + ptx_coef * lm_loss, **options)

            self.accelerator.backward = backward_with_ptx

        def take_ptx(self) -> float | None:
            if not self.ptx_history:
                return None
            mean = sum(self.ptx_history) / len(self.ptx_history)
            self.ptx_history.clear()
            return mean

        def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
            super().save_model(output_dir, _internal_call)  # the policy alone
            if _internal_call and output_dir and self.args.should_save:
                # A periodic save: transformers writes trainer_state.json after this returns,
                # so a save cut off here counts as unfinished and is never resumed from.
                value = self.accelerator.unwrap_model(self.model).value_model
                value.save_pretrained(Path(output_dir) / VALUE_MODEL_DIR)

    return PPOConfig, _StageTrainer


VALUE_MODEL_DIR = "value"  # inside each runs/checkpoint-N


class _ContinueAt(TrainerCallback):
    """Puts a resumed run's step and episode counters where its save left them: TRL's loop
    starts both at 0, which would renumber the loss curve and the saves."""

    def __init__(self, done: int, max_steps: int) -> None:
        self.done = done
        self.max_steps = max_steps

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        state.global_step = self.done
        state.episode = self.done * args.batch_size
        state.max_steps = self.max_steps


class _SkipFirst:
    """A dataloader whose first pass starts ``skip`` batches in, so a resumed run's prompts
    continue at the offset where the save left them; later passes are whole."""

    def __init__(self, loader: Any, skip: int) -> None:
        self.loader = loader
        self.skip = skip

    def __iter__(self) -> Iterator[Any]:
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.loader), skip, None)

    def __len__(self) -> int:
        return len(self.loader)


def _cycle(blocks: Any, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.tensor(blocks["input_ids"])
    while True:
        order = torch.randperm(len(ids), generator=generator)
        for start in range(0, len(ids) - batch_size + 1, batch_size):
            yield ids[order[start : start + batch_size]]


@contextlib.contextmanager
def accelerator_settings(bf16: bool, cpu: bool) -> Iterator[None]:
    """TRL's PPOTrainer builds its own ``Accelerator()``, which takes mixed precision and the
    CPU from the environment, not from the TrainingArguments (transformers 5 no longer exports
    them there): without this, ``bf16: true`` trained in fp32 without a word."""
    wanted = {"ACCELERATE_MIXED_PRECISION": "bf16" if bf16 else "no"}
    if cpu:  # otherwise a launcher's own choice (accelerate launch --cpu) stands
        wanted["ACCELERATE_USE_CPU"] = "true"
    saved = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class TRLPolicyOptimizer:
    """``PolicyOptimizer`` on TRL 1.12's experimental PPOTrainer."""

    def __init__(self, setup: PolicySetup) -> None:
        config = setup.config
        ppo_config, trainer_class = _trl_ppo_classes()
        episodes = config.per_device_train_batch_size * config.gradient_accumulation_steps
        args = training_arguments(
            config,
            setup.runs,
            ppo_config,
            total_episodes=config.max_steps * episodes,
            response_length=config.response_length,
            stop_token="eos" if config.stop_token == "eos" else None,
            missing_eos_penalty=config.missing_eos_penalty,
            temperature=config.temperature,
            kl_coef=config.kl_coef,
            kl_estimator=config.kl_estimator,
            num_ppo_epochs=config.num_ppo_epochs,
            num_mini_batches=config.num_mini_batches,
            cliprange=config.cliprange,
            vf_coef=config.vf_coef,
            whiten_rewards=config.whiten_rewards,
            local_rollout_forward_batch_size=episodes,
            num_sample_generations=0,
            per_device_eval_batch_size=min(8, len(setup.prompts)),
            sft_model_path=config.init_from,
            reward_model_path=config.reward_model,
        )
        ptx = None
        if setup.ptx_blocks is not None:
            ptx = _cycle(setup.ptx_blocks, config.per_device_train_batch_size, config.seed)
        with accelerator_settings(bf16=config.bf16, cpu=config.use_cpu):
            self.trainer = trainer_class(
                args=args,
                processing_class=setup.tokenizer,
                model=setup.policy,
                ref_model=setup.reference,
                reward_model=setup.reward_model,
                value_model=setup.value_model,
                train_dataset=setup.prompts,
                eval_dataset=setup.prompts.select(range(min(8, len(setup.prompts)))),
                callbacks=setup.callbacks,
                ptx=ptx,
                ptx_coef=config.ptx_coef,
            )
        if setup.resume_from:
            self._continue(setup.resume_from)

    def _continue(self, save: str) -> None:
        """Optimizer and schedule from ``save``, and the loop shortened to the updates left
        (the schedule was built for the whole run, so its rates continue where they were)."""
        trainer, done = self.trainer, saved_step(save)
        device = trainer.accelerator.device
        # tensors and plain containers only (weights_only): no pickled code runs on load
        optimizer = torch.load(Path(save, "optimizer.pt"), map_location=device, weights_only=True)
        schedule = torch.load(Path(save, "scheduler.pt"), weights_only=True)
        trainer.optimizer.load_state_dict(optimizer)
        trainer.lr_scheduler.load_state_dict(schedule)
        total = trainer.args.num_total_batches
        trainer.args.num_total_batches = total - done
        trainer.dataloader = _SkipFirst(trainer.dataloader, done % len(trainer.dataloader))
        trainer.add_callback(_ContinueAt(done, total))

    @property
    def step(self) -> int:
        return self.trainer.state.global_step

    def ptx_loss(self) -> float | None:
        return self.trainer.take_ptx()

    def train(self) -> Any:
        # TRL calls gc.collect() after every update; with torch and transformers loaded that
        # walk costs more than a tiny model's whole update. Freezing the objects that exist
        # before training keeps the collection to what the loop itself allocates.
        gc.freeze()
        try:
            self.trainer.train()
        finally:
            gc.unfreeze()
        return self.trainer.accelerator.unwrap_model(self.trainer.model).policy


OPTIMIZERS: dict[str, Callable[[PolicySetup], PolicyOptimizer]] = {"trl": TRLPolicyOptimizer}


def prompt_ids(rows: Any, tokenizer: Any, max_length: int) -> tuple[list[list[int]], list[int]]:
    """Prompts rendered for generation (chat template + assistant header) and the positions in
    ``rows`` of those kept: prompts longer than ``max_length`` tokens are left out (lineage
    names them) rather than cut mid-question."""
    if len(rows) == 0:
        return [], []
    ids = tokenizer.apply_chat_template(
        list(rows["prompt"]), add_generation_prompt=True, tokenize=True, return_dict=False
    )
    kept = [i for i, row in enumerate(ids) if len(row) <= max_length]
    return [ids[i] for i in kept], kept


def main(config: PPOStageConfig) -> Path:
    import datasets
    from transformers import AutoModelForSequenceClassification

    out = Path(config.output_dir)
    runs = out / "runs"
    parent = str(verify(config.init_from))
    # Before any model is loaded: an unchanged re-run has nothing to train.
    reporter = Reporter(out / "metrics.jsonl")
    data_digest = content_digest(config.data)
    if config.ptx_coef > 0:
        data_digest += " " + content_digest(config.ptx_data)
    parent_pin = pin_parent(config, parent)
    # the reward model scores every rollout and seeds the value model: one retrained while this
    # run trains would leave the lineage naming a model the policy was never optimised against
    pins = pin_inputs({"reward_model": config.reward_model})
    fingerprint = run_fingerprint(config, data_digest, [parent, config.reward_model])
    if published := already_published(config, fingerprint, reporter, "ppo"):
        return published
    tokenizer = load_training_tokenizer(parent)
    splits = load_splits(config.data)
    train = splits["train"]
    if "prompt" not in train.column_names:
        raise ValueError(f"{config.data}: no 'prompt' column (expected the prompt dataset)")
    rows, empty = usable_rows(config.data, "train", train, {"prompt": "prompt"})
    usable = train.select(rows) if len(rows) < len(train) else train
    ids, positions = prompt_ids(usable, tokenizer, config.max_length)
    too_long = len(usable) - len(positions)
    used = usable.select(positions) if too_long else usable
    episodes = config.per_device_train_batch_size * config.gradient_accumulation_steps
    if len(ids) < episodes:
        raise ValueError(
            f"{config.data}: {len(ids)} usable prompts ({too_long} longer than max_length "
            f"{config.max_length}, {len(train) - len(rows)} without a user's text), fewer than "
            f"the {episodes} episodes of one update"
        )
    ptx_blocks = None
    if config.ptx_coef > 0:
        from training.causal_lm import pack

        ptx_blocks, _ = pack(load_splits(config.ptx_data)["train"], tokenizer, config.max_length)
        if len(ptx_blocks) < config.per_device_train_batch_size:
            raise ValueError(f"{config.ptx_data}: too little text for one PPO-ptx batch")
    reward_model, reward_tokenizer = load_reward_model(config.reward_model)
    check_same_tokenizer(tokenizer, reward_tokenizer, config.reward_model)
    resume, started = claim_runs(runs, fingerprint, reporter, config.resume)
    done = saved_step(resume)
    tokenizer.padding_side = "left"  # generation continues the prompt's last token
    policy = build_causal_lm(ModelConfig(), tokenizer, path=resume or parent)
    reference = build_causal_lm(ModelConfig(), tokenizer, path=parent).eval().requires_grad_(False)
    value_model = AutoModelForSequenceClassification.from_pretrained(
        str(Path(resume, VALUE_MODEL_DIR)) if resume else config.reward_model,
        use_safetensors=True,
        dtype=policy.dtype,
    )
    value_model.config.pad_token_id = tokenizer.pad_token_id
    timer = GenerationTimer()
    timer.wrap(policy)
    metrics = RolloutMetrics(reporter, timer, episodes)
    setup = PolicySetup(
        config=config,
        policy=policy,
        reference=reference,
        reward_model=reward_model,
        value_model=value_model,
        tokenizer=tokenizer,
        prompts=datasets.Dataset.from_dict({"input_ids": ids}),
        runs=runs,
        callbacks=[metrics],
        ptx_blocks=ptx_blocks,
        resume_from=resume,
    )
    reporter.log(
        f"ppo: {count_parameters(policy) / 1e6:.2f}M parameters, {len(ids)} prompts "
        f"({too_long} longer than {config.max_length} tokens and {len(train) - len(rows)} "
        f"without a user's text left out), {config.max_steps} "
        f"updates of {episodes} episodes, reward model {config.reward_model}, "
        f"resume from {resume or 'scratch'}"
    )
    if done >= config.max_steps:
        # killed after its last save, before publishing: that save is the trained policy
        trained = policy
    else:
        torch.manual_seed(config.seed)
        optimizer = OPTIMIZERS[config.implementation](setup)
        metrics.ptx_losses = getattr(optimizer, "ptx_loss", metrics.ptx_losses)
        try:
            with resource_errors("ppo", runs, lambda: optimizer.step):
                trained = optimizer.train()
        except NonFiniteLoss as error:
            raise FloatingPointError(
                f"ppo: {error}; nothing was published, the last good state is "
                f"{last_run_checkpoint(runs) or 'the SFT checkpoint ' + parent}"
            ) from error
    policy.__dict__.pop("generate", None)  # the timing wrapper, an instance attribute
    # the whole run's updates: claim_runs cut metrics.jsonl back to the save resumed from
    updates = [r for r in read_metrics(reporter.metrics_path) if "objective/scores" in r]
    final = summarise(updates, resumed_at=done)
    final.update(prompts=len(ids), prompts_too_long=too_long, **empty)
    lineage = lineage_record(
        "ppo",
        config,
        {
            **config.inputs,
            "data": config.data,
            "reward_model": config.reward_model,
            "ptx_data": config.ptx_data if config.ptx_coef > 0 else None,
            # the prompt split as published (a trace re-hashes it), then the prompts used
            "data_sha256": data_digest,
            "row_ids_sha256": ids_digest(train),
            "row_ids_used_sha256": ids_digest(used),
            # no user's text or too long: a forward trace must not claim them
            **left_out_entry(train, used),
            "rows_used": len(used),
        },
        parent,
        final,
        started,
        fingerprint,
        parent_pin=parent_pin,
        input_pins=pins,
    )
    tokenizer.padding_side = "right"
    with resource_errors("ppo", runs):
        checkpoint = publish(trained, tokenizer, out / "checkpoint", lineage, reporter.metrics_path)
    reporter.log(f"ppo: published {checkpoint} {final}")
    reporter.done({"checkpoint": str(checkpoint), **final})
    reporter.close()
    return checkpoint


def summarise(records: list[dict[str, Any]], resumed_at: int = 0) -> dict[str, float]:
    """Reward at the start and end (means over the first and last quarter of updates, so one
    noisy batch does not decide), the final KL, and the generation share and episodes/s. The
    first update of each process (the run's, and after a resume at ``resumed_at`` the first
    one after it) also pays for loading and warm-up, so the timings leave it out."""
    if not records:
        return {}
    quarter = max(1, len(records) // 4)

    def mean(key: str, rows: list[dict[str, Any]]) -> float:
        values = [float(r[key]) for r in rows if key in r]
        return sum(values) / len(values) if values else float("nan")

    warm_up = {records[0].get("step"), resumed_at + 1 if resumed_at else None}
    timed = [r for r in records if r.get("step") not in warm_up] or records
    return {
        "updates": len(records),
        "score_first": mean("objective/scores", records[:quarter]),
        "score_last": mean("objective/scores", records[-quarter:]),
        "kl_last": mean("objective/kl", records[-quarter:]),
        "generation_share": mean("generation_share", timed),
        "episodes_per_s": mean("episodes_per_s", timed),
    }
