"""Our DPO stage's throughput on one GPU beside plain TRL's DPO defaults, same process shape.

Data shaped like ../shared/bench/gpu_trl_baseline.py's DPO runs: 32k WordLevel vocabulary,
1,500 pairs, prompt, chosen and rejected lengths log-normal around 150 tokens (capped at 1,000),
max_length 2048, the 134M Llama shape with untied embeddings, batch 8. Our stage's data is
conversational (a user turn, then an assistant answer), so the chat template adds a few tokens
per side. Each lever runs ``training.dpo.build_trainer`` exactly as the stage does. Tokens/s
counts non-padding tokens of the chosen and rejected sequences (the baseline counts the
attention mask the same way); MFU uses 8 * params per token (policy forward and backward, plus
the reference forward), as the baseline does.

    python bench/gpu_dpo.py [LEVER ...]          # SMOKE=1 shrinks everything for a CPU check
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from bench.gpu_sft import (  # noqa: E402
    CUDA,
    PEAK_FLOPS,
    SMOKE,
    VOCAB,
    Clock,
    Count,
    tokenizer_file,
)
from training.checkpoint import publish  # noqa: E402
from training.dpo import DPOStageConfig, build_trainer  # noqa: E402
from training.models import ModelConfig, build_causal_lm  # noqa: E402
from training.tokenizer import to_transformers  # noqa: E402

PRESET = "tiny" if SMOKE else "134M"

LEVERS: dict[str, tuple[int, dict]] = {
    "stage_defaults": (8, {}),
    "precomputed_ref": (8, {"precompute_ref_log_probs": True}),
    "precomputed_ref_bf16": (8, {"precompute_ref_log_probs": True, "dtype": "bfloat16"}),
}


def lengths(n: int, rng: random.Random) -> list[int]:
    return [max(8, min(1000, int(rng.lognormvariate(math.log(150), 0.9)))) for _ in range(n)]


def words(n: int, rng: random.Random) -> str:
    return " ".join(f"t{rng.randrange(VOCAB - 10)}" for _ in range(n))


def dataset(directory: Path) -> Path:
    rng = random.Random(0)
    n = 40 if SMOKE else 1500
    if SMOKE:
        prompt, chosen, rejected = ([min(x, 30) for x in lengths(n, rng)] for _ in range(3))
    else:
        prompt, chosen, rejected = lengths(n, rng), lengths(n, rng), lengths(n, rng)
    table = pa.table(
        {
            "id": [f"r{i}" for i in range(n)],
            "prompt": [[{"role": "user", "content": words(k, rng)}] for k in prompt],
            "chosen": [[{"role": "assistant", "content": words(k, rng)}] for k in chosen],
            "rejected": [[{"role": "assistant", "content": words(k, rng)}] for k in rejected],
        }
    )
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, directory / "train.parquet")
    return directory


def sft_checkpoint(directory: Path, tokenizer_dir: Path) -> Path:
    """A random-init model published as a checkpoint, standing in for the SFT one."""
    tokenizer = to_transformers(Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")))
    model = build_causal_lm(
        ModelConfig(preset=PRESET, max_position_embeddings=4096, tie_word_embeddings=False),
        tokenizer,
    )
    return publish(model, tokenizer, directory, {"stage": "bench"})


class PairCount(Count):
    """DPO batches hold chosen and rejected sequences; count their non-padding tokens."""

    tokens = 0

    @staticmethod
    def count(batch) -> int:  # noqa: ANN001
        masks = [v for k, v in batch.items() if k.endswith("attention_mask")]
        return int(sum(int(m.sum()) for m in masks))


def run(name: str, data: Path, init: Path, out: Path) -> dict:
    batch, lever = LEVERS[name]
    lever = dict(lever)
    steps, warm = (3, 1) if SMOKE else (40, 8)
    config = DPOStageConfig(
        output_dir=str(out / name),
        data=str(data),
        init_from=str(init),
        model=ModelConfig(dtype=lever.pop("dtype", "float32")),
        max_steps=steps + warm,
        per_device_train_batch_size=batch,
        max_length=128 if SMOKE else 2048,
        learning_rate=1e-4,
        warmup_steps=0,
        save_steps=10**9,
        logging_steps=10**9,
        bf16=CUDA,
        use_cpu=not CUDA,
        resume=False,
        **lever,
    )
    clock = Clock(warm, PairCount)
    trainer, _ = build_trainer(config, [clock])
    trainer.data_collator = PairCount(trainer.data_collator)
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    seconds = clock.t1 - clock.t0
    params = sum(p.numel() for p in trainer.model.parameters())
    tokens_per_s = PairCount.tokens / seconds
    result = {
        "side": "postforge",
        "kind": "dpo",
        "lever": name,
        "batch": batch,
        "params_M": round(params / 1e6),
        "steps": clock.steps,
        "real_tokens": PairCount.tokens,
        "sec": round(seconds, 2),
        "train_wall_s": round(wall, 1),
        "tokens_per_s": round(tokens_per_s),
        "mfu_989": round(8 * params * tokens_per_s / PEAK_FLOPS, 3),
        "peak_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 1) if CUDA else None,
        "device": torch.cuda.get_device_name(0) if CUDA else "cpu",
    }
    del trainer
    if CUDA:
        torch.cuda.empty_cache()
    return result


def main(names: list[str]) -> None:
    work = Path(tempfile.mkdtemp(prefix="gpu-dpo-"))
    tokenizer_dir = tokenizer_file(work / "tokenizer")
    data, init = dataset(work / "data"), sft_checkpoint(work / "sft", tokenizer_dir)
    sink = Path(os.environ["OUT"]) / "gpu_dpo.jsonl" if os.environ.get("OUT") else None
    for name in names or list(LEVERS):
        try:
            result = run(name, data, init, work / "runs")
        except Exception as error:  # one lever failing must not lose the others' numbers
            result = {
                "side": "postforge",
                "kind": "dpo",
                "lever": name,
                "failed": repr(error)[:400],
            }
        line = json.dumps(result)
        print("RESULT " + line, flush=True)
        if sink:
            with sink.open("a") as handle:
                handle.write(line + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
