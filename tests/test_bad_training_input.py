"""Bad input to the training stages: each is refused with one sentence naming the file (and the
line, key or column where there is one), before the work it would spoil; never a library's bare
traceback."""

from __future__ import annotations

import re

import pytest

from training.recipe import RecipeError, read_recipe


def test_a_recipe_that_is_a_folder_or_not_utf8_is_named(tmp_path):
    folder = re.escape(str(tmp_path))
    with pytest.raises(RecipeError, match=rf"^{folder}: is a directory, not a recipe file$"):
        read_recipe(tmp_path)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"sft:\n  data: caf\xe9\n")
    with pytest.raises(RecipeError, match=r"latin\.yaml: not UTF-8 text \(byte 0xe9 at offset 16"):
        read_recipe(latin)


def test_a_key_repeated_in_a_recipe_is_named_with_both_lines(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("pretrain:\n  max_steps: 3\n  data: d\n  max_steps: 5000\n")
    with pytest.raises(
        RecipeError,
        match=r"r\.yaml: line 4: key 'max_steps' appears again in the same mapping "
        r"\(first on line 2\)",
    ):
        read_recipe(recipe)
    # the same key in two sections, and a merged anchor overridden on purpose, are not repeats
    recipe.write_text(
        "x-model: &model {preset: tiny, max_position_embeddings: 256}\n"
        "pretrain: {max_steps: 3, model: {<<: *model, preset: small}}\n"
        "sft: {max_steps: 3}\n"
    )
    loaded = read_recipe(recipe)
    assert loaded["pretrain"]["model"] == {"preset": "small", "max_position_embeddings": 256}
