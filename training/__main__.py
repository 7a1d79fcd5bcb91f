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
import os
import sys
from collections.abc import Sequence
from typing import Any

from training.recipe import RecipeError, build, read_recipe
from training.reporting import close_all
from training.stages import (
    SHARED_OUTPUT_DIR,
    STAGES,
    check_section_names,
    record_failure,
    stage,
)


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


def blame_override(
    error: RecipeError, where: str, name: str, recipe_path: str, overrides: Sequence[str]
) -> RecipeError:
    """An error in a key that ``--set`` gave names the ``--set``, not the recipe file, where
    no such line exists; other errors are returned as they are."""
    text = str(error)
    if not text.startswith(where + "."):
        return error
    rest = text[len(where) + 1 :]
    dotted = rest.split(":", 1)[0]
    for item in reversed(overrides):  # the last --set of a key is the one that counts
        key = item.partition("=")[0]
        if dotted == key or dotted.startswith(key + ".") or key.startswith(dotted + "."):
            return RecipeError(f"--set {item}: {name}.{rest} (recipe {recipe_path})")
    return error


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
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if fields.get("output_dir") and fields["output_dir"].default == SHARED_OUTPUT_DIR:
        # each stage its own folder: with the one default, sft published over its parent
        section.setdefault("output_dir", f"outputs/checkpoints/{name}")
    names_its_stage = "stage" in fields
    if names_its_stage:
        # pretrain and midtrain share a config class whose ``stage`` defaults to pretrain:
        # `midtrain` must not publish a lineage that calls it pretraining.
        section.setdefault("stage", name)
    try:
        config = build(cls, section, where)
    except RecipeError as error:
        raise blame_override(error, where, name, recipe_path, overrides) from None
    if names_its_stage and config.stage != name:
        raise RecipeError(
            f"{where}.stage: {config.stage!r} contradicts the stage being run, {name!r}; "
            f"remove it or set it to {name!r}"
        )
    return config


def stage_help(name: str) -> str:
    """The stage's config docstring: the reference for every key its recipe section takes."""
    from training.common import RunConfig

    cls, _ = stage(name)
    text = f"python -m training {name}: the recipe section {name!r}\n\n{cls.__doc__ or ''}"
    if issubclass(cls, RunConfig) and cls is not RunConfig:
        text += f"\n\nThe settings every training stage shares (RunConfig):\n\n{RunConfig.__doc__}"
    return text


# Errors a stage raises about its inputs (a missing file or checkpoint, a tokenizer that does
# not match, an input republished mid-run, no room left): their message says it all, so the
# command prints it on one line, as it does a recipe error, instead of a traceback.
def input_errors() -> tuple[type[BaseException], ...]:
    from training.checkpoint import CheckpointError
    from training.common import ResourceError
    from training.rewards import TokenizerMismatchError
    from training.runs import ParentChangedError

    return (
        FileNotFoundError,
        CheckpointError,
        TokenizerMismatchError,
        ParentChangedError,
        ResourceError,
    )


ALLOW_HUB_ENV = "POSTFORGE_ALLOW_HUB"


def stay_offline_unless(allowed: bool) -> None:
    """Nothing is downloaded unless asked (``--allow-hub``, or POSTFORGE_ALLOW_HUB=1 for a
    launcher such as a Dagster asset): a hub id in a recipe is read from the Hugging Face
    cache, and one not there is named by the stage. Set before transformers, datasets or
    huggingface_hub is imported, which read these once."""
    if allowed or os.environ.get(ALLOW_HUB_ENV, "").lower() in {"1", "true", "yes", "on"}:
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Run one training stage from a recipe. `python -m training STAGE --help` "
        "lists the keys of the stage's recipe section.",
    )
    parser.add_argument("stage", metavar="STAGE", help=f"one of: {', '.join(STAGES)}")
    parser.add_argument("--config", help="recipe YAML (the stage's section is used); required")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting; KEY may be dotted (model.preset=small), VALUE is JSON "
        "when it parses as JSON, else a string",
    )
    parser.add_argument(
        "--allow-hub",
        action="store_true",
        help="let a hub id in the recipe (tokenizer, model.path) be downloaded; without it "
        "(or POSTFORGE_ALLOW_HUB=1) only the Hugging Face cache is read",
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    asks_help = any(a in ("-h", "--help") for a in argv)
    rest = [a for a in argv if a not in ("-h", "--help")]
    if asks_help and not rest:
        parser.print_help()
        return 0
    args = parser.parse_args(rest)
    if args.stage not in STAGES:
        print(f"unknown stage {args.stage!r}; expected one of {sorted(STAGES)}", file=sys.stderr)
        return 2
    if asks_help:
        parser.print_help()
        print("\n" + stage_help(args.stage))
        return 0
    if not args.config:
        parser.error("the following arguments are required: --config")
    stay_offline_unless(args.allow_hub)
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
    except input_errors() as error:
        record_failure(error)
        close_all(error)
        print(f"error: {args.stage}: {error}", file=sys.stderr)
        return 1 if type(error).__name__ == "ResourceError" else 2  # out of room, or bad input
    except Exception as error:
        # The launcher (a Dagster asset) shows this one line as the failure, not an exit code.
        record_failure(error)
        close_all(error)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
