"""``python -m training <stage> --config recipe.yaml``: run one stage without Dagster (and under
``accelerate launch`` for several GPUs). The stage's section of the recipe is its config."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from training.recipe import RecipeError, build, read_recipe


def stages() -> dict[str, tuple[type, Callable[[Any], Any]]]:
    from training import causal_lm, evaluate, sft

    return {
        "pretrain": (causal_lm.CausalLMConfig, causal_lm.main),
        "midtrain": (causal_lm.CausalLMConfig, causal_lm.main),
        "sft": (sft.SFTStageConfig, sft.main),
        "evaluate": (evaluate.EvaluateConfig, evaluate.main),
    }


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
    known = stages()
    if args.stage not in known:
        print(f"unknown stage {args.stage!r}; expected one of {sorted(known)}", file=sys.stderr)
        return 2
    cls, run = known[args.stage]
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
    run(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
