"""Our SFT stage's throughput on one GPU, lever by lever, beside plain TRL in the same process.

The data has the shape of ../shared/bench/gpu_trl_baseline.py: a 32k WordLevel vocabulary (one
word, one id), 3,000 examples whose lengths are log-normal around 300 tokens (capped at 2,000),
max_length 2048, the 374M Llama shape with untied embeddings. Our stage trains on chat
conversations, so each example is a one-word user turn and an assistant turn holding the words;
"real tokens" are the labelled ones in both (assistant tokens for us, all tokens for TRL's text).

Each lever runs ``training.sft.build_trainer`` exactly as the stage does, so what is timed is the
stage. Prints one ``RESULT`` JSON line per run and writes them to ``$OUT/gpu_sft.jsonl`` when OUT
is set. ``SMOKE=1`` shrinks everything to check the script on a CPU (with SDPA: flex attention
has no CPU backward).

    python bench/gpu_sft.py [LEVER ...]      # lever names below; default: all, in order
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from training.models import ModelConfig  # noqa: E402
from training.sft import SFTStageConfig, build_trainer  # noqa: E402
from training.tokenizer import SPECIAL_TOKENS  # noqa: E402

CUDA = torch.cuda.is_available()
SMOKE = os.environ.get("SMOKE") == "1"
PEAK_FLOPS = 989e12  # H100 SXM dense bf16, as in the baseline
VOCAB = 32000
MAX_LENGTH = 128 if SMOKE else 2048
PRESET = "tiny" if SMOKE else "374M"

# name -> (batch size, settings); each adds one lever to a sensible GPU setup.
LEVERS: dict[str, tuple[int, dict]] = {
    # padded batches, no packing: the shape of TRL's default, without activation checkpointing
    "padded": (8, {}),
    # packing, per-document masks from position_ids under SDPA (a dense mask per batch)
    "packed_sdpa": (8, {"packing": True}),
    # packing with flex attention: block-sparse, skips the masked blocks between documents
    "packed_flex": (8, {"packing": True, "attn": "flex_attention"}),
    "packed_flex_bf16": (8, {"packing": True, "attn": "flex_attention", "dtype": "bfloat16"}),
    "packed_flex_bf16_bs16": (
        16,
        {"packing": True, "attn": "flex_attention", "dtype": "bfloat16"},
    ),
    # The 44k reference as measured on 2026-11-27: TRL's own trainer, which reads entropy,
    # token accuracy and the token count back from the GPU at every step, and blocking batch
    # copies (the stage's trainer skips those reads between logging steps and copies pinned
    # batches without waiting).
    "packed_flex_bf16_bs16_trl_steps": (
        16,
        {"packing": True, "attn": "flex_attention", "dtype": "bfloat16", "trainer": "trl"},
    ),
    "packed_flex_bf16_bs16_compile": (
        16,
        {"packing": True, "attn": "flex_attention", "dtype": "bfloat16", "torch_compile": True},
    ),
    # Liger's fused linear cross-entropy: the 32k-vocabulary logits are the largest activation
    "packed_flex_bf16_bs16_liger": (
        16,
        {"packing": True, "attn": "flex_attention", "dtype": "bfloat16", "use_liger_kernel": True},
    ),
    "packed_flex_bf16_bs32": (32, {"packing": True, "attn": "flex_attention", "dtype": "bfloat16"}),
    # TRL's default loss (chunked_nll) dispatches ~5x the ops of nll (bench/sft_loss_ops.py)
    "packed_flex_bf16_bs16_nll": (
        16,
        {"packing": True, "attn": "flex_attention", "dtype": "bfloat16", "loss_type": "nll"},
    ),
    # Needs no extra wheel: what a lease without liger-kernel can reach.
    "packed_flex_bf16_bs16_nll_compile": (
        16,
        {
            "packing": True,
            "attn": "flex_attention",
            "dtype": "bfloat16",
            "loss_type": "nll",
            "torch_compile": True,
        },
    ),
    # Every lever at once: what a short lease should measure first after the known best.
    "packed_flex_bf16_bs32_liger_compile": (
        32,
        {
            "packing": True,
            "attn": "flex_attention",
            "dtype": "bfloat16",
            "use_liger_kernel": True,
            "torch_compile": True,
        },
    ),
}


def tokenizer_file(directory: Path) -> Path:
    """A WordLevel tokenizer like the baseline's, plus our chat template's special tokens."""
    words = [*SPECIAL_TOKENS, "user", "assistant", "system"]
    vocab = {w: i for i, w in enumerate(words)}
    vocab.update({f"t{i}": len(words) + i for i in range(VOCAB - len(words))})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<|pad|>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory


def lengths(n: int, rng: random.Random, median: int = 300, cap: int = 2000) -> list[int]:
    cap = min(cap, MAX_LENGTH - 16)
    return [max(8, min(cap, int(rng.lognormvariate(math.log(median), 0.9)))) for _ in range(n)]


def dataset(directory: Path) -> Path:
    rng = random.Random(0)
    n = 40 if SMOKE else 3000
    messages = [
        [
            {"role": "user", "content": f"t{rng.randrange(VOCAB - 10)}"},
            {
                "role": "assistant",
                "content": " ".join(f"t{rng.randrange(VOCAB - 10)}" for _ in range(k)),
            },
        ]
        for k in lengths(n, rng, median=40 if SMOKE else 300)
    ]
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": [f"r{i}" for i in range(n)], "messages": messages})
    pq.write_table(table, directory / "train.parquet")
    return directory


class Count:
    """Wraps the collator to count labelled tokens, as the baseline does."""

    tokens = 0

    def __init__(self, inner) -> None:  # noqa: ANN001
        self.inner = inner

    def __call__(self, features):  # noqa: ANN001
        batch = self.inner(features)
        type(self).tokens += self.count(batch)
        return batch

    @staticmethod
    def count(batch) -> int:  # noqa: ANN001
        return int((batch["labels"] != -100).sum())


class Clock(TrainerCallback):
    """Times the steps after the warm-up ones (compilation and allocator growth excluded) and
    zeroes ``counter``'s tokens when timing starts. Prints each warm-up step's end, so the log of
    a run killed by its time limit shows how far it got (the first step includes compiling)."""

    def __init__(self, warm: int, counter: type[Count] = Count) -> None:
        self.warm, self.counter, self.t0, self.t1, self.steps = warm, counter, None, None, 0
        self.begun, self.first_step_s = None, None

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        self.begun = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if state.global_step <= self.warm:
            sync()
            elapsed = time.perf_counter() - self.begun
            self.first_step_s = self.first_step_s or round(elapsed, 1)
            print(f"step {state.global_step} ended {elapsed:.1f} s into training", flush=True)
        if state.global_step == self.warm:
            sync()
            self.t0 = time.perf_counter()
            self.counter.tokens = 0
        elif state.global_step > self.warm:
            self.steps += 1

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        sync()
        self.t1 = time.perf_counter()


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


@contextlib.contextmanager
def trl_trainer_with_blocking_copies():
    """The stage built as when the 44k reference was measured: TRL's own SFTTrainer and
    blocking batch copies. Put back afterwards, so later levers in this process are ours."""
    from trl import SFTTrainer

    import training.sft

    trainer_class, arguments = training.sft.StageSFTTrainer, training.sft.training_arguments

    def blocking_copies(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        return arguments(*args, **kwargs, accelerator_config={"non_blocking": False})

    training.sft.StageSFTTrainer, training.sft.training_arguments = SFTTrainer, blocking_copies
    try:
        yield
    finally:
        training.sft.StageSFTTrainer, training.sft.training_arguments = trainer_class, arguments


def run(name: str, data: Path, tokenizer: Path, out: Path) -> dict:
    batch, lever = LEVERS[name]
    lever = dict(lever)
    steps, warm = (3, 1) if SMOKE else (30, 6)
    attn = lever.pop("attn", "sdpa")
    trainer_kind = lever.pop("trainer", "stage")
    model = ModelConfig(
        preset=PRESET,
        max_position_embeddings=4096,
        # flex attention has no backward on the CPU; the smoke run checks the rest of the path
        attn_implementation=attn if CUDA else "sdpa",
        dtype=lever.pop("dtype", "float32"),
        tie_word_embeddings=False,
    )
    config = SFTStageConfig(
        output_dir=str(out / name),
        data=str(data),
        tokenizer=str(tokenizer),
        model=model,
        max_steps=steps + warm,
        per_device_train_batch_size=batch,
        max_length=MAX_LENGTH,
        learning_rate=1e-4,
        warmup_steps=0,
        save_steps=10**9,
        logging_steps=10**9,
        bf16=CUDA,
        use_cpu=not CUDA,
        resume=False,
        **lever,
    )
    clock = Clock(warm)
    with trl_trainer_with_blocking_copies() if trainer_kind == "trl" else contextlib.nullcontext():
        trainer, _ = build_trainer(config, [clock])
    trainer.data_collator = Count(trainer.data_collator)
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    seconds = clock.t1 - clock.t0
    params = sum(p.numel() for p in trainer.model.parameters())
    tokens_per_s = Count.tokens / seconds
    result = {
        "side": "postforge",
        "lever": name,
        "settings": {k: v for k, v in dataclasses.asdict(config).items() if k in SHOWN}
        | {"attn": model.attn_implementation, "dtype": model.dtype},
        "trainer": type(trainer).__name__,
        "params_M": round(params / 1e6),
        "steps": clock.steps,
        "real_tokens": Count.tokens,
        "sec": round(seconds, 2),
        "train_wall_s": round(wall, 1),
        "first_step_s": clock.first_step_s,
        "tokens_per_s": round(tokens_per_s),
        "mfu_989": round(6 * params * tokens_per_s / PEAK_FLOPS, 3),
        "peak_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 1) if CUDA else None,
        "device": torch.cuda.get_device_name(0) if CUDA else "cpu",
    }
    del trainer
    if CUDA:
        torch.cuda.empty_cache()
    return result


SHOWN = {
    "per_device_train_batch_size",
    "packing",
    "fixed_shape",
    "torch_compile",
    "use_liger_kernel",
    "loss_type",
    "optim",
}


def main(names: list[str]) -> None:
    work = Path(tempfile.mkdtemp(prefix="gpu-sft-"))
    data, tokenizer = dataset(work / "data"), tokenizer_file(work / "tokenizer")
    sink = Path(os.environ["OUT"]) / "gpu_sft.jsonl" if os.environ.get("OUT") else None
    for name in names or list(LEVERS):
        try:
            result = run(name, data, tokenizer, work / "runs")
        except Exception as error:  # one lever failing must not lose the others' numbers
            result = {"side": "postforge", "lever": name, "failed": repr(error)[:400]}
        line = json.dumps(result)
        print("RESULT " + line, flush=True)
        if sink:
            with sink.open("a") as handle:
                handle.write(line + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
