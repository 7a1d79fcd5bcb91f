"""``use_liger_kernel`` is a GPU lever: on a machine without the package the stage must say so
before it loads a model, not deep inside the trainer, and the option must reach the trainer's
arguments when it is available."""

from __future__ import annotations

import importlib.util

import pytest

from training.common import RunConfig, training_arguments
from training.recipe import build, read_recipe
from training.sft import SFTStageConfig

LIGER_INSTALLED = importlib.util.find_spec("liger_kernel") is not None


@pytest.mark.skipif(LIGER_INSTALLED, reason="checks the error when liger-kernel is missing")
def test_liger_without_the_package_is_a_clear_error(tmp_path):
    config = RunConfig(use_liger_kernel=True, use_cpu=True)
    with pytest.raises(ValueError, match="use_liger_kernel.*liger-kernel"):
        training_arguments(config, tmp_path / "runs")


def test_liger_is_off_by_default_and_passed_through(tmp_path):
    args = training_arguments(RunConfig(use_cpu=True), tmp_path / "runs")
    assert args.use_liger_kernel is False


def test_a_recipe_may_turn_liger_on(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "sft:\n  data: sft\n  tokenizer: tok\n  use_liger_kernel: true\n  use_cpu: true\n"
    )
    config = build(SFTStageConfig, read_recipe(recipe)["sft"], "sft")
    assert config.use_liger_kernel is True
