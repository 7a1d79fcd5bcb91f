"""``python -m training <stage> --config recipe.yaml``: run one stage without Dagster (and under
``accelerate launch`` for several GPUs). The stage's section of the recipe is its config.

Everything that can be wrong with the recipe or a ``--set`` is checked before the stage's module
is imported (heavy) and before any work: one line on stderr naming the file and key, exit 2.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any

from training.recipe import RecipeError, build, read_recipe
from training.reporting import close_all
from training.stages import STAGES, check_section_names, record_failure, stage


def stage_section(recipe: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    """A copy of the stage's section (empty when absent), so overrides never touch the recipe."""
    section = recipe.get(name)
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise RecipeError(
            f"{where}: {name}: expected a mapping of settings, got {type(section).__name__}"
        )
    return copy.deepcopy(section)


def apply_override(section: dict[str, Any], item: str, where: str) -> None:
    """``model.preset=small`` → section["model"]["preset"] = "small".

    A value is JSON when it parses as JSON (numbers, booleans, null, lists, mappings) and a plain
    string otherwise; either way the recipe's type check decides whether it fits the key, so
    ``max_steps=ten`` fails there as ``expected int`` rather than here. Keys are not checked here
    either: ``build`` names an unknown one at whatever depth it is.
    """
    key, sep, raw = item.partition("=")
    parts = key.split(".")
    if not sep or not all(parts):
        raise RecipeError(f"--set {item!r}: expected KEY=VALUE (KEY may be dotted: model.preset)")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    *parents, leaf = parts
    target = section
    for depth, part in enumerate(parents, start=1):
        if target.get(part) is None:
            target[part] = {}
        target = target[part]
        if not isinstance(target, dict):
            path = ".".join(parts[:depth])
            raise RecipeError(
                f"{where}.{path}: is {type(target).__name__} {target!r}, "
                f"not a mapping, so --set {key} cannot set a key inside it"
            )
    target[leaf] = value


def load_config(name: str, recipe_path: str, overrides: Sequence[str] = ()) -> Any:
    """The stage's config dataclass: its recipe section with ``overrides`` (``KEY=VALUE``)
    applied in order, every key and type checked. Raises ``RecipeError``."""
    recipe = read_recipe(recipe_path)
    check_section_names(recipe, recipe_path)
    section = stage_section(recipe, name, recipe_path)
    where = f"{recipe_path}: {name}"
    for item in overrides:
        apply_override(section, item, where)
    cls, _ = stage(name)
    names_its_stage = any(f.name == "stage" for f in dataclasses.fields(cls))
    if names_its_stage:
        # pretrain and midtrain share a config class whose ``stage`` defaults to pretrain:
        # `midtrain` must not publish a lineage that calls it pretraining.
        section.setdefault("stage", name)
    config = build(cls, section, where)
    if names_its_stage and config.stage != name:
        raise RecipeError(
            f"{where}.stage: {config.stage!r} contradicts the stage being run, {name!r}; "
            f"remove it or set it to {name!r}"
        )
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training")
    parser.add_argument("stage")
    parser.add_argument("--config", required=True, help="recipe YAML (the stage's section is used)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting; KEY may be dotted (model.preset=small), VALUE is JSON "
        "when it parses as JSON, else a string",
    )
    args = parser.parse_args(argv)
    if args.stage not in STAGES:
        print(f"unknown stage {args.stage!r}; expected one of {sorted(STAGES)}", file=sys.stderr)
        return 2
    try:
        config = load_config(args.stage, args.config, args.set)
    except RecipeError as error:
        print(f"error: {error}", file=sys.stderr)
        record_failure(error)
        return 2
    threads = getattr(config, "torch_threads", None)
    if threads:
        import torch

        torch.set_num_threads(threads)
    _, run = stage(args.stage)
    try:
        run(config)
    except Exception as error:
        # The launcher (a Dagster asset) shows this one line as the failure, not an exit code.
        record_failure(error)
        close_all(error)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
