"""How many ops one SFT step dispatches for its loss, by ``loss_type``, on the GPU bench's data.

On a GPU an eager op costs the host a few microseconds to launch whatever its size, so a loss
that splits a 32k-token batch into 256-token chunks (TRL's ``chunked_nll``, each chunk
recomputed under checkpointing) can keep the GPU waiting on the host. This counts the ops that
reach the backend in one forward and backward of ``SFTTrainer.compute_loss``, on the data of
``bench/gpu_sft.py`` (32k vocabulary, log-normal lengths around 300 tokens), packed into one
flattened row. The decoder's own ops are counted apart (its hidden states summed instead of the
loss) and subtracted, so what is left is the loss path alone: head projection, cross-entropy
and TRL's entropy and accuracy metrics. Runs on the CPU with the tiny preset; op counts do not
depend on the device, only the cost of each does.

    python bench/sft_loss_ops.py [TOKENS ...]     # default 8192 16384
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_sft  # noqa: E402
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from training.models import ModelConfig  # noqa: E402
from training.sft import SFTStageConfig, build_trainer  # noqa: E402

MAX_LENGTH = 2048
RESULTS = Path(__file__).parent / "results" / "sft_loss_ops.jsonl"


class OpCounter(TorchDispatchMode):
    """Counts every op dispatched to the backend while active (forward and autograd's backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        self.ops += 1
        return func(*args, **(kwargs or {}))


def count(step) -> int:  # noqa: ANN001
    with OpCounter() as counter:
        step().backward()
    return counter.ops


def measure(tokens: int, loss_type: str, data: Path, tokenizer: Path, out: Path) -> dict:
    config = SFTStageConfig(
        output_dir=str(out / f"{loss_type}-{tokens}"),
        data=str(data),
        tokenizer=str(tokenizer),
        model=ModelConfig(preset="tiny", max_position_embeddings=4096, tie_word_embeddings=False),
        per_device_train_batch_size=tokens // MAX_LENGTH,
        max_length=MAX_LENGTH,
        packing=True,
        loss_type=loss_type,
        use_cpu=True,
        resume=False,
    )
    trainer, _ = build_trainer(config)
    model = trainer.model.train()
    rows = [trainer.train_dataset[i] for i in range(config.per_device_train_batch_size)]
    batch = trainer.data_collator(rows)
    labelled = int((batch["labels"] != -100).sum())
    n_items = torch.tensor(labelled)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    body = count(lambda: model.model(**inputs).last_hidden_state.float().sum())
    step = count(lambda: trainer.compute_loss(model, dict(batch), num_items_in_batch=n_items))
    return {
        "loss_type": loss_type,
        "tokens": int(batch["input_ids"].numel()),
        "labelled": labelled,
        "ops_step": step,
        "ops_decoder": body,
        "ops_loss_path": step - body,
    }


def main(sizes: list[int]) -> None:
    gpu_sft.SMOKE, gpu_sft.MAX_LENGTH = False, MAX_LENGTH  # the GPU bench's data, not its smoke
    work = Path(tempfile.mkdtemp(prefix="sft-loss-ops-"))
    data = gpu_sft.dataset(work / "data")
    tokenizer = gpu_sft.tokenizer_file(work / "tokenizer")
    for tokens in sizes:
        for loss_type in ("chunked_nll", "nll"):
            result = measure(tokens, loss_type, data, tokenizer, work / "runs")
            result |= {"torch": torch.__version__, "preset": "tiny"}
            print("RESULT " + json.dumps(result), flush=True)
            with RESULTS.open("a") as handle:
                handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [8192, 16384])
