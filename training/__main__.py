"""``python -m training <stage> --config recipe.yaml``: run one stage without Dagster (and under
``accelerate launch`` for several GPUs). The stage's section of the recipe is its config."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from training.recipe import RecipeError, build, read_recipe

# stage name -> "module:ConfigClass:entry"; imported only when that stage runs, so one stage's
# heavy or optional imports never slow down or break another.
STAGES: dict[str, str] = {
    "pretrain": "training.causal_lm:CausalLMConfig:main",
    "midtrain": "training.causal_lm:CausalLMConfig:main",
    "sft": "training.sft:SFTStageConfig:main",
    "evaluate": "training.evaluate:EvaluateConfig:main",
    "candidates": "training.candidates:CandidatesConfig:main",
    "reward": "training.reward:RewardStageConfig:main",
    "dpo": "training.dpo:DPOStageConfig:main",
    "ppo": "training.ppo:PPOStageConfig:main",
    "grpo": "training.grpo:GRPOStageConfig:main",
    "rloo": "training.rloo:RLOOStageConfig:main",
    "alignment": "training.alignment:AlignmentConfig:main",
}


def stage(name: str) -> tuple[type, Callable[[Any], Any]]:
    """The config class and entry point of one stage."""
    import importlib

    module_name, config_name, entry = STAGES[name].split(":")
    module = importlib.import_module(module_name)
    return getattr(module, config_name), getattr(module, entry)


def apply_override(section: dict[str, Any], item: str) -> None:
    """``model.preset=small`` → section["model"]["preset"] = "small"; values are JSON when they
    parse as JSON (numbers, booleans, lists), plain strings otherwise."""
    key, sep, raw = item.partition("=")
    if not sep:
        raise RecipeError(f"--set {item!r}: expected KEY=VALUE")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    *parents, leaf = key.split(".")
    target = section
    for part in parents:
        target = target.setdefault(part, {})
    target[leaf] = value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training")
    parser.add_argument("stage")
    parser.add_argument("--config", required=True, help="recipe YAML (the stage's section is used)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=JSON", help="override one setting"
    )
    args = parser.parse_args(argv)
    if args.stage not in STAGES:
        print(f"unknown stage {args.stage!r}; expected one of {sorted(STAGES)}", file=sys.stderr)
        return 2
    cls, run = stage(args.stage)
    try:
        recipe = read_recipe(args.config)
        section = dict(recipe.get(args.stage) or {})
        for item in args.set:
            key, _, value = item.partition("=")
            section[key] = json.loads(value) if value[:1] in '[{"0123456789-tfn' else value
        config = build(cls, section, f"{args.config}: {args.stage}")
    except RecipeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    threads = getattr(config, "torch_threads", None)
    if threads:
        import torch

        torch.set_num_threads(threads)
    run(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
