"""Evaluation of a checkpoint: held-out loss and perplexity on a text or chat set, and greedy
answers to prompts with checkable answers (graded by the caller, who owns the answer checker)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from training.checkpoint import verify
from training.common import load_splits, load_training_tokenizer
from training.files import write_atomic_text, write_jsonl_atomic
from training.models import ModelConfig, build_causal_lm
from training.ranks import is_main_process, local_device


@dataclass(frozen=True)
class EvaluateConfig:
    """Attributes:
    checkpoint: the checkpoint directory to evaluate.
    output: where to write ``evaluation.json`` and ``generations.jsonl``.
    heldout: a dataset folder whose ``test`` split has ``messages`` or ``text``.
    prompts: JSONL with ``id`` and ``prompt`` (a list of messages) to answer greedily.
    max_new_tokens: answer length cap.
    batch_size: prompts per generation batch.
    max_length: tokens per held-out example.
    use_cpu: evaluate on the CPU even where a GPU is present (else this rank's GPU).
    """

    checkpoint: str = ""
    output: str = ""
    heldout: str | None = None
    prompts: str | None = None
    max_new_tokens: int = 16
    batch_size: int = 32
    max_length: int = 256
    use_cpu: bool = False


def heldout_loss(
    model: Any, tokenizer: Any, rows: list[Any], max_length: int
) -> dict[str, float | int]:
    """Mean token loss (assistant tokens only for chat rows) and its perplexity, with how many
    rows were cut to ``max_length`` and how many had no scored token left (never silent)."""
    total, count, truncated, unscored = 0.0, 0, 0, 0
    model.eval()
    for row in rows:
        if isinstance(row, dict) and "messages" in row:
            encoded = tokenizer.apply_chat_template(
                row["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
            )
            ids, mask = encoded["input_ids"], encoded["assistant_masks"]
        else:
            ids = tokenizer(row["text"], add_special_tokens=False)["input_ids"]
            mask = [1] * len(ids)
        truncated += len(ids) > max_length
        ids, mask = ids[:max_length], mask[:max_length]
        labels = [t if m else -100 for t, m in zip(ids, mask, strict=True)]
        if sum(1 for label in labels[1:] if label != -100) == 0:
            unscored += 1
            continue
        with torch.no_grad():
            out = model(
                input_ids=torch.tensor([ids], device=model.device),
                labels=torch.tensor([labels], device=model.device),
            )
        n = sum(1 for label in labels[1:] if label != -100)
        total += float(out.loss) * n
        count += n
    loss = total / count if count else float("nan")
    return {
        "heldout_loss": loss,
        "perplexity": math.exp(loss) if count else float("nan"),
        "tokens": count,
        "rows_truncated": truncated,
        "rows_without_scored_tokens": unscored,
    }


def generate(
    model: Any, tokenizer: Any, prompts: list[list[dict]], config: EvaluateConfig
) -> list[str]:
    """Greedy answers, batched with left padding."""
    tokenizer.padding_side = "left"
    answers: list[str] = []
    model.eval()
    for start in range(0, len(prompts), config.batch_size):
        batch = prompts[start : start + config.batch_size]
        texts = [
            tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
            for p in batch
        ]
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        encoded = encoded.to(model.device)
        with torch.no_grad():
            output = model.generate(
                **encoded,
                max_new_tokens=config.max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        new_tokens = output[:, encoded["input_ids"].shape[1] :].cpu()
        answers.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return [a.strip() for a in answers]


def write_generations(path: Path, rows: list[dict], answers: list[str]) -> Path:
    lines = [
        json.dumps({"id": row["id"], "output": answer})
        for row, answer in zip(rows, answers, strict=True)
    ]
    return write_jsonl_atomic(path, lines)


def main(config: EvaluateConfig) -> dict[str, Any]:
    checkpoint = verify(config.checkpoint)
    if not is_main_process():
        # Evaluation is small next to training: one process does it and writes it once.
        return {"checkpoint": str(checkpoint), "evaluated_by": "the main process"}
    out = Path(config.output or checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_training_tokenizer(checkpoint)
    model = build_causal_lm(ModelConfig(), tokenizer, path=str(checkpoint))
    model.to(local_device(config.use_cpu))
    result: dict[str, Any] = {"checkpoint": str(checkpoint)}
    if config.heldout:
        splits = load_splits(config.heldout)
        split = splits["test"] if "test" in splits else splits["train"]
        result.update(heldout_loss(model, tokenizer, list(split), config.max_length))
    if config.prompts:
        rows = [json.loads(line) for line in Path(config.prompts).read_text().splitlines() if line]
        answers = generate(model, tokenizer, [r["prompt"] for r in rows], config)
        write_generations(out / "generations.jsonl", rows, answers)
        result["generations"] = len(answers)
    write_atomic_text(out / "evaluation.json", json.dumps(result, indent=2))
    return result
