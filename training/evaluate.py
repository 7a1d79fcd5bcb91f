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
from training.common import check_columns, load_splits, load_training_tokenizer
from training.files import write_atomic_text, write_jsonl_atomic
from training.models import ModelConfig, build_causal_lm, check_context
from training.ranks import is_main_process, local_device


@dataclass(frozen=True)
class EvaluateConfig:
    """Attributes:
    checkpoint: the checkpoint directory to evaluate.
    output: where to write ``evaluation.json`` and ``generations.jsonl``.
    heldout: a dataset folder whose ``test`` split has ``messages`` or ``text``.
    prompts: JSONL with ``id`` and ``prompt`` (a list of messages) to answer greedily; a prompt
        leaving fewer than ``max_new_tokens`` positions of the model's context is skipped and
        counted (``prompts_too_long`` in evaluation.json), its id absent from generations.jsonl.
    max_new_tokens: answer length cap.
    batch_size: prompts per generation batch.
    max_length: tokens per held-out example (longer ones are cut and counted); past the model's
        context it is refused before the model is loaded.
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


def read_prompts(path: str | Path) -> list[dict[str, Any]]:
    """The prompts file's rows, every one checked before a model is loaded: a bad line found
    after loading and scoring the held-out set throws that work away without naming the line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such prompts file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: the prompts file cannot be read ({error})") from None
    rows = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object with id and prompt")
        if "id" not in row:
            raise ValueError(f"{path}:{lineno}: no 'id' (the answer is written under it)")
        if "prompt" not in row:
            raise ValueError(f"{path}:{lineno}: no 'prompt' (a list of chat messages)")
        prompt = row["prompt"]
        if not isinstance(prompt, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m
            for m in prompt
        ):
            raise ValueError(
                f"{path}:{lineno}: 'prompt' is not a list of messages with role and content"
            )
        rows.append(row)
    return rows


def heldout_rows(path: str | Path) -> list[Any]:
    """The held-out split's rows (``test``, else ``train``), which must have ``messages`` or
    ``text`` with no null in it."""
    splits = load_splits(path)
    name = "test" if "test" in splits else "train"
    split = splits[name]
    columns = split.column_names
    if "messages" not in columns and "text" not in columns:
        raise ValueError(
            f"{path}: the {name} split has neither a 'messages' nor a 'text' column "
            f"(it has {sorted(columns)})"
        )
    check_columns(path, {name: split}, ("messages" if "messages" in columns else "text",))
    return list(split)


def prompt_lengths(tokenizer: Any, prompts: list[list[dict]]) -> list[int]:
    """Each prompt's tokens as ``generate`` encodes it."""
    texts = [
        tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


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


def model_context(checkpoint: Path, config: EvaluateConfig) -> int | None:
    """The checkpoint's context in positions (None when its config does not say), read from
    its config.json alone and checked against ``max_length`` and ``max_new_tokens`` before
    the weights are loaded."""
    from transformers import AutoConfig

    model_config = AutoConfig.from_pretrained(str(checkpoint))
    check_context(config.max_length, model_config, f"evaluate {checkpoint}")
    context = getattr(model_config, "max_position_embeddings", None)
    if context is not None and config.prompts and config.max_new_tokens >= context:
        raise ValueError(
            f"evaluate {checkpoint}: max_new_tokens {config.max_new_tokens} leaves no room for a "
            f"prompt in the model's context of {context} positions; lower max_new_tokens"
        )
    return context


def main(config: EvaluateConfig) -> dict[str, Any]:
    checkpoint = verify(config.checkpoint)
    if not is_main_process():
        # Evaluation is small next to training: one process does it and writes it once.
        return {"checkpoint": str(checkpoint), "evaluated_by": "the main process"}
    # Everything that can be wrong with the inputs is found before the model is loaded.
    prompt_rows = read_prompts(config.prompts) if config.prompts else None
    heldout = heldout_rows(config.heldout) if config.heldout else None
    context = model_context(checkpoint, config)
    out = Path(config.output or checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_training_tokenizer(checkpoint)
    model = build_causal_lm(ModelConfig(), tokenizer, path=str(checkpoint))
    model.to(local_device(config.use_cpu))
    result: dict[str, Any] = {"checkpoint": str(checkpoint)}
    if heldout is not None:
        result.update(heldout_loss(model, tokenizer, heldout, config.max_length))
    if prompt_rows is not None:
        # A prompt that leaves no room for the answer inside the context would be answered
        # from positions the model has no embedding for: skipped and counted, never scored.
        room = None if context is None else context - config.max_new_tokens
        lengths = prompt_lengths(tokenizer, [r["prompt"] for r in prompt_rows])
        kept = [r for r, n in zip(prompt_rows, lengths, strict=True) if room is None or n <= room]
        answers = generate(model, tokenizer, [r["prompt"] for r in kept], config)
        write_generations(out / "generations.jsonl", kept, answers)
        result["generations"] = len(answers)
        result["prompts_too_long"] = len(prompt_rows) - len(kept)
    write_atomic_text(out / "evaluation.json", json.dumps(result, indent=2))
    return result
