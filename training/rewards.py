"""Reward functions for the RL stages and for evaluation.

Each reward is a callable with TRL's ``reward_funcs`` signature, ``f(prompts, completions,
**columns) -> list[float | None]``, so GRPO and RLOO take them as they are and an evaluator can
call them on its own generations. Two kinds:

- ``RewardModelScorer``: a reward checkpoint (a sequence-classification model with one label)
  scoring prompt + completion rendered through the chat template, the format it was trained on.
- ``CheckableAnswerReward``: 1.0 when a completion gives the synthetic task's answer, else 0.0;
  a ground truth no reward model can be fooled about, which is what shows whether RL helps.

A reward model only means something for the token ids it was trained on, so
``check_same_tokenizer`` compares the policy's and the reward model's tokenizers before any
training starts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from curation.synthetic import SyntheticTask, check_answer, generate_tasks
from training.checkpoint import CheckpointError, verify
from training.common import load_training_tokenizer


class TokenizerMismatchError(ValueError):
    """The reward model reads different token ids than the policy writes."""


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, str]:
    """What must agree for a reward model to read the policy's tokens: the vocabulary, the
    special tokens and the chat template (the rendering the reward model was trained on)."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    specials = json.dumps(
        {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}, sort_keys=True
    )
    template = tokenizer.chat_template or ""
    if isinstance(template, dict):
        template = json.dumps(template, sort_keys=True)
    return {
        "vocab": hashlib.sha256(vocab.encode()).hexdigest(),
        "special_tokens": specials,
        "chat_template": hashlib.sha256(template.encode()).hexdigest(),
    }


def check_same_tokenizer(policy_tokenizer: Any, reward_tokenizer: Any, where: str) -> None:
    """Raise ``TokenizerMismatchError`` naming what differs; ``where`` names the reward model."""
    policy = tokenizer_fingerprint(policy_tokenizer)
    reward = tokenizer_fingerprint(reward_tokenizer)
    differs = [key for key in policy if policy[key] != reward[key]]
    if not differs:
        return
    details = []
    if "vocab" in differs:
        details.append(f"vocabulary ({len(policy_tokenizer)} vs {len(reward_tokenizer)} tokens)")
    if "special_tokens" in differs:
        details.append(f"special tokens ({policy['special_tokens']} vs {reward['special_tokens']})")
    if "chat_template" in differs:
        details.append("chat template")
    raise TokenizerMismatchError(
        f"{where}: the reward model was built with a different tokenizer than the policy "
        f"({'; '.join(details)} differ); retrain it from the policy's SFT checkpoint"
    )


def load_reward_model(path: str | Path, dtype: str = "float32") -> tuple[Any, Any]:
    """A reward checkpoint's model (frozen, eval mode) and tokenizer; safetensors only."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = verify(path)
    config = AutoConfig.from_pretrained(str(path))
    if getattr(config, "num_labels", None) != 1 or not any(
        name.endswith("ForSequenceClassification") for name in (config.architectures or [])
    ):
        raise CheckpointError(
            f"{path}: not a reward model (expected a *ForSequenceClassification with one label, "
            f"found {config.architectures} with {getattr(config, 'num_labels', '?')} labels)"
        )
    tokenizer = load_training_tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(path), dtype=getattr(torch, dtype), use_safetensors=True
    )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.eval().requires_grad_(False)
    return model, tokenizer


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or the assistant message(s) of a conversational one."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content", "") for m in completion if m.get("role") == "assistant")


def prompt_key(prompt: Any) -> str:
    """The user's question: the last user message, or the prompt string itself."""
    if isinstance(prompt, str):
        return prompt.strip()
    users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
    return users[-1].strip() if users else ""


class RewardModelScorer:
    """Scores (prompt, completion) pairs with a reward checkpoint."""

    __name__ = "reward_model"

    def __init__(
        self,
        path: str | Path,
        batch_size: int = 16,
        max_length: int = 512,
        device: str | None = None,
    ) -> None:
        self.path = str(path)
        self.model, self.tokenizer = load_reward_model(path)
        self.batch_size = batch_size
        self.max_length = max_length
        if device:
            self.model.to(device)

    def texts(self, prompts: Sequence[Any], completions: Sequence[Any]) -> list[str]:
        rendered = []
        for prompt, completion in zip(prompts, completions, strict=True):
            if isinstance(prompt, str):
                rendered.append(prompt + completion_text(completion))
                continue
            answer = {"role": "assistant", "content": completion_text(completion)}
            rendered.append(self.tokenizer.apply_chat_template([*prompt, answer], tokenize=False))
        return rendered

    def score(self, prompts: Sequence[Any], completions: Sequence[Any]) -> list[float]:
        import torch

        texts = self.texts(prompts, completions)
        device = next(self.model.parameters()).device
        self.tokenizer.padding_side = "right"
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            encoded = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
                add_special_tokens=False,
            ).to(device)
            with torch.inference_mode():
                logits = self.model(**encoded).logits[:, 0]
            scores.extend(float(x) for x in logits.float().cpu())
        return scores

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
        return self.score(prompts, completions)


class CheckableAnswerReward:
    """1.0 for a right answer to a synthetic task, 0.0 for a wrong one, None (not applicable)
    where the prompt has no known answer. Answers come from an ``answer`` column of the dataset
    (with ``task_kind`` for tasks whose answer is case-sensitive), else from ``answers``."""

    __name__ = "checkable_answer"

    def __init__(self, answers: Mapping[str, SyntheticTask] | None = None) -> None:
        self.answers = dict(answers or {})

    def task(self, prompt: Any, answer: str | None, kind: str | None) -> SyntheticTask | None:
        if answer:
            return SyntheticTask(id="", kind=kind or "", prompt=prompt_key(prompt), answer=answer)
        return self.answers.get(prompt_key(prompt))

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        answer: Sequence[str | None] | None = None,
        task_kind: Sequence[str | None] | None = None,
        **_: Any,
    ) -> list[float | None]:
        rewards: list[float | None] = []
        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            task = self.task(
                prompt, answer[i] if answer else None, task_kind[i] if task_kind else None
            )
            if task is None:
                rewards.append(None)
            else:
                rewards.append(1.0 if check_answer(task, completion_text(completion)) else 0.0)
        return rewards


# Enough of seed 0's stream to cover every synthetic task of the embedded samples (8,800 tasks,
# some held-out prompts skipped; see ``data/make_samples.py``).
ANSWER_KEY_TASKS = 12000


def synthetic_answer_key(count: int, seed: int) -> dict[str, SyntheticTask]:
    """Prompt text → task for ``generate_tasks(count, seed)``: the embedded data's synthetic
    prompts reach the prompt dataset without their answers, and this recovers them."""
    return {task.prompt.strip(): task for task in generate_tasks(count, seed)}


def attach_answers(rows: Iterable[Mapping[str, Any]], key: Mapping[str, SyntheticTask]) -> list:
    """``(answer, task_kind)`` per row: the row's own ``answer`` when it has one, else the key's."""
    found = []
    for row in rows:
        if row.get("answer"):
            found.append((str(row["answer"]), str(row.get("task_kind") or "")))
            continue
        task = key.get(prompt_key(row["prompt"]))
        found.append((task.answer, task.kind) if task else ("", ""))
    return found
