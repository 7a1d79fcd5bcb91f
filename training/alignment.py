"""Measurements behind the alignment report: for each policy checkpoint, greedy answers to
held-out prompts (graded by the caller, who owns the answer checker and the judge), the reward
model's score of those answers, their mean length, a Monte-Carlo estimate of KL(pi || pi_ref)
from the policy's own samples, and how many parameter tensors moved from the reference.

KL per response is the sum, over the positions of a response sampled from the policy itself
(temperature 1), of the exact KL between the two next-token distributions; averaged over
prompts. Unlike the plain log-ratio of the sampled tokens it is never negative and has far less
variance, so "the policy moved" can be read from a few dozen samples.

Every input is checked before any answer is generated: the prompts file (line by line), every
checkpoint (a causal LM, not a reward model) and every policy's tokenizer against the
reference's, since KL and moved tensors compare the two models token id by token id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from training.checkpoint import verify
from training.common import load_training_tokenizer
from training.evaluate import (
    EvaluateConfig,
    generate,
    prompt_lengths,
    read_prompts,
    write_generations,
)
from training.files import write_atomic_text
from training.models import ModelConfig, build_causal_lm, require_causal_lm
from training.ranks import is_main_process, local_device
from training.rewards import TokenizerMismatchError, check_same_tokenizer, tokenizer_fingerprint


@dataclass(frozen=True)
class AlignmentConfig:
    """Attributes:
    policies: name -> checkpoint directory of every policy to measure (base, midtrain, sft,
        dpo, ppo, ...).
    reference: the frozen reference policy (the SFT checkpoint) for KL and moved parameters.
    reward_model: a reward checkpoint to score answers with; empty skips the score.
    prompts: JSONL with ``id`` and ``prompt`` (a list of messages) held out from training. A
        prompt leaving fewer than ``max_new_tokens`` positions in the smallest context of the
        models is skipped for every policy and counted (``prompts_too_long`` and
        ``skipped_prompt_ids`` in alignment.json), its id absent from the generations.
    output: folder for ``alignment.json`` and ``generations_<name>.jsonl``.
    max_new_tokens: answer length cap for greedy answers and KL samples.
    kl_samples: prompts used for the KL estimate (one sample each).
    batch_size: prompts per generation batch.
    seed: seeds the KL samples.
    use_cpu: measure on the CPU even where a GPU is present (else this rank's GPU).
    """

    policies: dict[str, str] = field(default_factory=dict)
    reference: str = ""
    reward_model: str = ""
    prompts: str = ""
    output: str = ""
    max_new_tokens: int = 16
    kl_samples: int = 64
    batch_size: int = 32
    seed: int = 0
    use_cpu: bool = False

    def __post_init__(self) -> None:
        if not self.policies:
            raise ValueError("policies: at least one checkpoint is required")
        for key in ("reference", "prompts", "output"):
            if not getattr(self, key):
                raise ValueError(f"{key}: required")


def load_policy(path: str, device: str = "cpu") -> tuple[Any, Any]:
    checkpoint = str(verify(path))
    tokenizer = load_training_tokenizer(checkpoint)
    model = build_causal_lm(ModelConfig(), tokenizer, path=checkpoint)
    model.to(device).eval()
    return model, tokenizer


def response_distributions(model: Any, sequences: torch.Tensor, prompt_length: int, pad_id: int):
    """Log-probabilities over the vocabulary at every position that predicts a response token,
    and the mask of those positions."""
    attention = (sequences != pad_id).long()
    attention[:, :prompt_length] = 1  # left-padded prompts keep their mask from the tokenizer
    with torch.no_grad():
        logits = model(input_ids=sequences, attention_mask=attention).logits.float()
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
    response = torch.zeros(sequences[:, 1:].shape, dtype=torch.bool, device=sequences.device)
    response[:, prompt_length - 1 :] = True
    response &= sequences[:, 1:] != pad_id
    return logprobs, response


def kl_estimate(
    policy: Any, reference: Any, tokenizer: Any, prompts: list[list[dict]], config: AlignmentConfig
) -> float:
    torch.manual_seed(config.seed)
    tokenizer.padding_side = "left"
    total, count = 0.0, 0
    for start in range(0, len(prompts), config.batch_size):
        batch = prompts[start : start + config.batch_size]
        texts = [
            tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
            for p in batch
        ]
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        encoded = encoded.to(policy.device)
        with torch.no_grad():
            sequences = policy.generate(
                **encoded,
                max_new_tokens=config.max_new_tokens,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        width, pad = encoded["input_ids"].shape[1], tokenizer.pad_token_id
        mine, mask = response_distributions(policy, sequences, width, pad)
        theirs, _ = response_distributions(reference, sequences, width, pad)
        per_position = (mine.exp() * (mine - theirs)).sum(-1)
        total, count = total + float((per_position * mask).sum()), count + len(batch)
    return total / max(count, 1)


def moved_tensors(policy: Any, reference: Any) -> tuple[int, int]:
    theirs = dict(reference.named_parameters())
    moved = sum(
        1
        for name, tensor in policy.named_parameters()
        if name in theirs and not torch.equal(tensor, theirs[name])
    )
    return moved, len(theirs)


def check_policy_tokenizer(
    name: str, path: str, tokenizer: Any, reference: Any, where: str
) -> None:
    """The fingerprint the reward model's check compares (``check_same_tokenizer``), applied
    to a policy against the reference: a vocabulary of another size fails mid-KL on tensor
    sizes, and one of the same size gives a KL that means nothing."""
    ours, theirs = tokenizer_fingerprint(tokenizer), tokenizer_fingerprint(reference)
    differs = [key for key in theirs if ours[key] != theirs[key]]
    if not differs:
        return
    what = {
        "vocab": f"vocabulary ({len(tokenizer)} vs {len(reference)} tokens)",
        "special_tokens": "special tokens",
        "chat_template": "chat template",
    }
    raise TokenizerMismatchError(
        f"policy {name!r} ({path}) was built with a different tokenizer than the reference "
        f"{where} ({'; '.join(what[key] for key in differs)} differ): KL and moved tensors "
        "compare the two token by token, so measure only policies trained from the reference's "
        "tokenizer"
    )


def model_context(path: str) -> int | None:
    from transformers import AutoConfig

    return getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", None)


def prompt_room(config: AlignmentConfig, checkpoints: list[str]) -> int | None:
    """Prompt positions every model has left after ``max_new_tokens`` (None: no model says)."""
    contexts = [c for c in map(model_context, checkpoints) if c is not None]
    if not contexts:
        return None
    context = min(contexts)
    if config.max_new_tokens >= context:
        raise ValueError(
            f"alignment: max_new_tokens {config.max_new_tokens} leaves no room for a prompt in "
            f"the smallest model context of {context} positions; lower max_new_tokens"
        )
    return context - config.max_new_tokens


def checked_inputs(config: AlignmentConfig) -> tuple[list[dict], list[str]]:
    """The prompts that fit every model, and the ids of those that do not; raises, naming the
    file, line, policy or checkpoint, on anything that would fail or mislead after generating."""
    rows = read_prompts(config.prompts)
    if not rows:
        raise ValueError(f"{config.prompts}: no prompts, so there is nothing to measure")
    reference = str(verify(config.reference))
    require_causal_lm(reference)
    reference_tokenizer = load_training_tokenizer(reference)
    for name, path in config.policies.items():
        checkpoint = str(verify(path))
        require_causal_lm(checkpoint)
        tokenizer = load_training_tokenizer(checkpoint)
        check_policy_tokenizer(name, path, tokenizer, reference_tokenizer, config.reference)
    models = [reference, *config.policies.values()]
    if config.reward_model:
        scorer = str(verify(config.reward_model))
        check_same_tokenizer(reference_tokenizer, load_training_tokenizer(scorer), scorer)
        models.append(scorer)
    room = prompt_room(config, models)
    lengths = prompt_lengths(reference_tokenizer, [r["prompt"] for r in rows])
    fits = [room is None or n <= room for n in lengths]
    kept = [r for r, ok in zip(rows, fits, strict=True) if ok]
    if not kept:
        raise ValueError(
            f"{config.prompts}: every prompt is longer than the {room} tokens the models' "
            f"context leaves beside max_new_tokens {config.max_new_tokens}"
        )
    return kept, [str(r["id"]) for r, ok in zip(rows, fits, strict=True) if not ok]


def main(config: AlignmentConfig) -> dict[str, Any]:
    if not is_main_process():
        # Generation and scoring are small next to training: one process writes the report.
        return {"reference": config.reference, "evaluated_by": "the main process"}
    rows, too_long = checked_inputs(config)
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    prompts = [r["prompt"] for r in rows]
    device = local_device(config.use_cpu)
    reference, _ = load_policy(config.reference, device)
    scorer = None
    if config.reward_model:
        from training.rewards import RewardModelScorer

        scorer = RewardModelScorer(config.reward_model, batch_size=config.batch_size, device=device)
    generation = EvaluateConfig(max_new_tokens=config.max_new_tokens, batch_size=config.batch_size)
    report: dict[str, Any] = {
        "reference": config.reference,
        "prompts": len(rows),
        "prompts_too_long": len(too_long),
        "skipped_prompt_ids": too_long,
        "policies": {},
    }
    for name, path in config.policies.items():
        policy, tokenizer = load_policy(path, device)
        answers = generate(policy, tokenizer, prompts, generation)
        write_generations(out / f"generations_{name}.jsonl", rows, answers)
        lengths = [len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers]
        moved, tensors = moved_tensors(policy, reference)
        measured = {
            "checkpoint": path,
            "mean_response_tokens": sum(lengths) / max(len(lengths), 1),
            "kl_to_reference": kl_estimate(
                policy, reference, tokenizer, prompts[: config.kl_samples], config
            ),
            "moved_tensors": moved,
            "tensors": tensors,
        }
        if scorer is not None:
            scores = scorer.score(prompts, answers)
            measured["reward_model_score"] = sum(scores) / max(len(scores), 1)
        report["policies"][name] = measured
    write_atomic_text(out / "alignment.json", json.dumps(report, indent=2))
    return report
