"""RLOO through TRL's RLOOTrainer: like GRPO, several completions per prompt, but each one's
baseline is the mean reward of the *other* completions of its prompt (leave one out), an
unbiased estimate that needs no value model. Everything but the trainer is shared with GRPO."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from training.grpo import GroupRLConfig, run_group_stage


@dataclass(frozen=True)
class RLOOStageConfig(GroupRLConfig):
    """RLOO (see ``training.grpo.GroupRLConfig`` for every key)."""


def main(config: RLOOStageConfig) -> Path:
    from trl import RLOOConfig, RLOOTrainer

    return run_group_stage(config, "rloo", RLOOTrainer, RLOOConfig)
