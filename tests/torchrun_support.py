"""Launching a stage as ``torchrun`` does (what ``accelerate launch`` uses underneath): several
CPU processes on this machine, each with its RANK and WORLD_SIZE."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml


def torchrun(
    stage: str, section: dict[str, Any], folder: Path, processes: int = 2
) -> subprocess.CompletedProcess:
    recipe = folder / f"{stage}-recipe.yaml"
    recipe.write_text(yaml.safe_dump({stage: section}))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    command += ["-m", "training", stage, "--config", str(recipe)]
    return subprocess.run(
        command,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
