"""The stages ``python -m training`` runs, and how one reports its failure to a launcher.

A stage is ``module:ConfigClass:entry``, imported only when that stage runs (or its recipe
section is checked), so one stage's heavy or optional imports never slow down another.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from training.recipe import RecipeError, check_section, read_recipe

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

# RunConfig's output_dir when none is given; ``python -m training <stage>`` uses
# outputs/checkpoints/<stage> instead, so stages run by hand never publish over each other.
SHARED_OUTPUT_DIR = "outputs/checkpoints/stage"

# Where a launcher wants the one-line reason of a failed stage (set by the Dagster assets).
FAILURE_FILE_ENV = "POSTFORGE_FAILURE_FILE"


def stage(name: str) -> tuple[type, Callable[[Any], Any]]:
    """The config class and entry point of one stage."""
    module_name, config_name, entry = STAGES[name].split(":")
    module = importlib.import_module(module_name)
    return getattr(module, config_name), getattr(module, entry)


# Sections a recipe may hold besides the stages': ``mixing`` is read by the Dagster mixture
# assets, and a name starting with ``x-`` or ``_`` holds YAML anchors the others share.
LAUNCHER_SECTIONS = ("mixing",)
ANCHOR_PREFIXES = ("x-", "_")


def check_section_names(recipe: Mapping[str, Any], path: str | Path) -> None:
    """A misspelt section (``sfft``) would otherwise leave its stage on defaults unseen."""
    known = sorted({*STAGES, *LAUNCHER_SECTIONS})
    for name in recipe:
        if name not in known and not str(name).startswith(ANCHOR_PREFIXES):
            raise RecipeError(
                f"{path}: {name}: unknown section; expected one of {known} "
                f"(or a name starting with {' or '.join(ANCHOR_PREFIXES)} for YAML anchors)"
            )


def check_recipe(path: str | Path, other_sections: Mapping[str, type] = {}) -> None:
    """Every section of a recipe, keys, types and the values of the keys it sets, before any
    stage runs: a typo or a negative ``kl_coef`` in the ppo section must not wait for
    pretraining to finish to be found. The settings a launcher fills in (data, output_dir,
    init_from) and the checks that need them are the stage's own, at its start. Raises
    ``RecipeError`` naming the file, the section and the key."""
    recipe = read_recipe(path)
    check_section_names(recipe, path)
    for name, section in recipe.items():
        if name in other_sections:
            check_section(other_sections[name], section, f"{path}: {name}")
        elif name in STAGES:
            cls, _ = stage(name)
            check_values(cls, check_section(cls, section, f"{path}: {name}"), f"{path}: {name}")


# Stands in for a path a launcher fills in (data, init_from, reward_model) while a recipe's
# own values are checked.
LAUNCHER_FILLS = "<filled in by the launcher>"
TEXT_TYPES = (str, "str", "str | None")


def check_values(cls: type, values: Mapping[str, Any], where: str) -> None:
    """The config's own checks on a section as the recipe writes it. Configs name the key
    first (``kl_coef: must be >= 0``). A setting the section leaves empty whose default is
    empty (``data``, ``init_from``, ``policies``) is a launcher's to fill: a path gets a
    stand-in and the checks go on; any other waits for the stage's start. Every other error
    naming a setting is the recipe's, also one between a setting it sets and a default
    (``num_generations: 4 does not divide the 3 completions``)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    filled = dict(values)
    for _ in range(len(fields) + 1):
        try:
            cls(**filled)
            return
        except (TypeError, ValueError) as error:
            key = str(error).split(":", 1)[0].strip()
            if key not in fields:
                return  # names no setting: the stage reports it at its start
            if not values.get(key) and not default_of(fields[key]):
                if (
                    key in filled
                    and filled[key] == stand_in(fields[key])
                    or not stand_in(fields[key])
                ):
                    return
                filled[key] = stand_in(fields[key])
                continue
            raise RecipeError(f"{where}: {error}") from None


def stand_in(field: dataclasses.Field) -> Any:
    """A value of the field's kind that a launcher might fill in; None when there is none."""
    empty = default_of(field)
    if isinstance(empty, list):
        return [LAUNCHER_FILLS]
    if isinstance(empty, dict):
        return {LAUNCHER_FILLS: LAUNCHER_FILLS}
    return LAUNCHER_FILLS if field.type in TEXT_TYPES else None


def default_of(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


def record_failure(error: BaseException) -> None:
    """Write the error as one line where the launcher asked for it (nothing when run by hand).
    Written beside and renamed over, so the launcher never reads half of it."""
    target = os.environ.get(FAILURE_FILE_ENV)
    if not target:
        return
    line = f"{type(error).__name__}: {error}".replace("\n", " ")
    path = Path(target)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(line + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # a full disk may be the failure itself; the launcher falls back to the exit code
