"""What ``torch_compile`` costs before the first step: the whole model against its blocks.

accelerate compiles a model one of two ways: the whole graph (``torch.compile(model)``) or
region by region (``compile_regions``: each decoder layer on its own, so all layers share one
compiled graph). The stage uses the second. This builds the stage's model (``build_causal_lm``,
untied 32k vocabulary as in ``bench/gpu_sft.py``), applies each in a fresh process with an empty
inductor cache, and times the first training step (compilation included) and the next three,
beside eager. Runs on the CPU; a GPU adds Triton compilation on top, which the same sharing
saves.

    python bench/compile_warmup.py [PRESET ...]     # default 134M 374M
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "compile_warmup.jsonl"
TOKENS = 256


def one(preset: str, mode: str) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch
    from accelerate.utils import compile_regions

    from training.models import ModelConfig, build_causal_lm

    class Vocabulary:  # what llama_config reads of a tokenizer
        pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

        def __len__(self) -> int:
            return 32000

    model = build_causal_lm(ModelConfig(preset=preset, tie_word_embeddings=False), Vocabulary())
    if mode == "whole":
        model = torch.compile(model)
    elif mode == "blocks":
        model = compile_regions(model)
    ids = torch.randint(0, 32000, (1, TOKENS), generator=torch.Generator().manual_seed(0))

    def step() -> float:
        started = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        return time.perf_counter() - started

    first = step()
    steady = sorted(step() for _ in range(3))[1]
    loss = float(model(input_ids=ids, labels=ids).loss)
    return {"first_step_s": round(first, 1), "steady_step_s": round(steady, 2), "loss": loss}


def main(presets: list[str]) -> None:
    for preset in presets:
        for mode in ("eager", "whole", "blocks"):
            with tempfile.TemporaryDirectory(prefix="inductor-") as cache:
                env = os.environ | {"TORCHINDUCTOR_CACHE_DIR": cache}
                output = subprocess.run(
                    [sys.executable, __file__, "--one", preset, mode],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            result = {"preset": preset, "mode": mode, "tokens": TOKENS} | json.loads(
                output.splitlines()[-1]
            )
            print("RESULT " + json.dumps(result), flush=True)
            with RESULTS.open("a") as handle:
                handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        print(json.dumps(one(sys.argv[2], sys.argv[3])))
    else:
        main(sys.argv[1:] or ["134M", "374M"])
