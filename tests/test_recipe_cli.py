"""``python -m training <stage> --config recipe.yaml --set KEY=VALUE``: bad input is one line on
stderr naming the file and key, exit 2, before any work; good overrides reach the stage's config."""

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import training.__main__ as cli
from curation.mixing import MixConfig, mix
from training.recipe import RecipeError

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(
        "sft:\n"
        "  data: data/sft\n"
        "  tokenizer: tok\n"
        "  max_steps: 50\n"
        "  model: {preset: tiny, max_position_embeddings: 256}\n"
    )
    return path


def test_a_value_of_the_wrong_type_is_one_line_naming_file_and_key(recipe):
    done = run_cli("sft", "--config", str(recipe), "--set", "max_steps=ten")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: --set max_steps=ten: sft.max_steps: expected int, got str 'ten' (recipe {recipe})"
    ]


def test_a_stage_section_that_is_not_a_mapping_names_section_and_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("sft: [1, 2]\n")
    done = run_cli("sft", "--config", str(path), "--set", "max_steps=1")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: {path}: sft: expected a mapping of settings, got list"
    ]


def test_overrides_reach_the_config_that_the_stage_runs(recipe, monkeypatch):
    ran = []
    real_stage = cli.stage
    monkeypatch.setattr(cli, "stage", lambda name: (real_stage(name)[0], ran.append))
    argv = ["sft", "--config", str(recipe), "--set", "model.preset=small", "--set", "max_steps=1"]
    assert cli.main(argv) == 0
    (config,) = ran
    assert config.model.preset == "small"
    assert config.max_steps == 1
    # a dotted key sets one setting inside the section and keeps the recipe's others
    assert config.model.max_position_embeddings == 256
    assert config.data == "data/sft"


def test_values_are_json_when_they_parse_and_strings_otherwise(recipe):
    config = cli.load_config(
        "sft",
        str(recipe),
        ["output_dir=foo/bar", "learning_rate=1e-3", "packing=true", "init_from=null"],
    )
    assert config.output_dir == "foo/bar"
    assert config.learning_rate == 1e-3
    assert config.packing is True
    assert config.init_from is None
    assert "max_steps: 50" in recipe.read_text()  # the recipe file itself is never rewritten


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("lerning_rate=0.1", r"^--set lerning_rate=0.1: sft.lerning_rate: unknown key"),
        ("model.preset_name=small", r"^--set model.preset_name=small: sft.model.preset_name: unkn"),
        ("max_steps.x=1", r"r.yaml: sft.max_steps: is int 50, not a mapping"),
        ("max_steps", r"--set 'max_steps': expected KEY=VALUE"),
        ("model.=small", r"--set 'model.=small': expected KEY=VALUE"),
        ("model.preset=huge", r"^--set model.preset=huge: sft.model: unknown preset 'huge'"),
    ],
)
def test_bad_overrides_are_named(recipe, capsys, item, message):
    with pytest.raises(RecipeError, match=message):
        cli.load_config("sft", str(recipe), [item])
    assert cli.main(["sft", "--config", str(recipe), "--set", item]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_a_source_with_a_share_but_no_tokens_is_named():
    full = pl.DataFrame({"id": ["a"], "text": ["x y"], "tokens": [2]})
    empty = full.clear()
    config = MixConfig(proportions={"pretrain": 0.5, "instruction": 0.5}, total_tokens=10)
    with pytest.raises(ValueError, match=r"source 'instruction' has a positive share .* \(0 rows"):
        mix({"pretrain": full, "instruction": empty}, config)


def test_a_misspelt_section_is_named_and_anchor_sections_are_allowed(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "x-model: &model {preset: tiny, max_position_embeddings: 256}\n"
        "sft: {data: data/sft, tokenizer: tok, model: *model}\n"
        "sfft: {max_steps: 3}\n"
    )
    with pytest.raises(RecipeError, match=r"r\.yaml: sfft: unknown section"):
        cli.load_config("sft", str(path))
    path.write_text(path.read_text().replace("sfft: {max_steps: 3}\n", ""))
    assert cli.load_config("sft", str(path)).model.max_position_embeddings == 256


@pytest.mark.parametrize("recipe", sorted(str(p) for p in (ROOT / "recipes").glob("*.yaml")))
def test_every_shipped_recipe_is_valid(recipe):
    """Every recipe in recipes/, including those only a GPU can run: every section's keys and
    types, and the training stages built whole (their own checks) with the paths an asset
    would fill in."""
    import dataclasses

    from assets.training import MixingRecipe
    from training.recipe import build, read_recipe
    from training.stages import check_recipe, stage

    check_recipe(recipe, {"mixing": MixingRecipe})
    loaded = read_recipe(recipe)
    build(MixingRecipe, loaded.get("mixing"), f"{recipe}: mixing")
    # What the assets fill in, by field name; each stage takes the fields it has.
    filled = {
        "data": "data",
        "tokenizer": "tokenizer",
        "init_from": "checkpoint",
        "reward_model": "reward",
        "prompt_dataset": "prompts",
        "checkpoints": ["checkpoint"],
        "checkpoint": "checkpoint",
        "output": "out",
        "prompts": "prompts.jsonl",
        "reference": "checkpoint",
        "policies": {"sft": "checkpoint"},
    }
    for name, section in loaded.items():
        if name == "mixing" or name.startswith(("x-", "_")):
            continue
        cls, _ = stage(name)
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in filled.items() if k in fields}
        if "stage" in fields:
            values["stage"] = name
        if name in ("grpo", "rloo") and "reward_model" not in section.get("reward_weights", {}):
            values.pop("reward_model", None)  # the assets pass it only when it is weighed
        build(cls, {**values, **section}, f"{recipe}: {name}")


@pytest.mark.parametrize(
    ("section", "values", "error"),
    [
        ("ppo", {"kl_coef": -1.0}, "ppo: kl_coef: must be >= 0, got -1.0"),
        ("reward", {"warmup_steps": -1}, "reward: warmup_steps: must be >= 0"),
        ("sft", {"loss_type": "bogus"}, "sft: loss_type: 'bogus' is not one of"),
        # between a value the recipe sets and a default it keeps
        ("grpo", {"per_device_train_batch_size": 3}, "grpo: num_generations: 4 does not divide"),
        ("candidates", {"temperature": 0.0}, "candidates: temperature: expected > 0"),
        # what the assets fill in (data, init_from, policies...) is not the recipe's to set
        ("dpo", {"init_from": ""}, None),
        ("alignment", {}, None),
        ("ppo", {"kl_coef": 0.5}, None),
    ],
)
def test_the_recipe_check_before_a_run_applies_each_stages_value_checks(
    tmp_path, section, values, error
):
    from training.stages import check_recipe

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(__import__("yaml").safe_dump({section: values}))
    if error is None:
        check_recipe(recipe)
        return
    with pytest.raises(RecipeError, match=f"^{tmp_path}/recipe.yaml: {error}"):
        check_recipe(recipe)


def test_the_shipped_recipes_pass_the_recipe_check():
    from training.stages import check_recipe

    for recipe in sorted((ROOT / "recipes").glob("*.yaml")):
        check_recipe(recipe)


def test_each_stage_publishes_in_its_own_folder_unless_the_recipe_says(recipe, tmp_path):
    # With one shared default, an sft run by hand published over the pretrain checkpoint it
    # started from, and its lineage named itself as its parent.
    assert cli.load_config("sft", str(recipe)).output_dir == "outputs/checkpoints/sft"
    pretrain = cli.load_config("pretrain", str(recipe), ["data=data/pretrain", "tokenizer=tok"])
    assert pretrain.output_dir == "outputs/checkpoints/pretrain"
    chosen = cli.load_config("sft", str(recipe), [f"output_dir={tmp_path}"])
    assert chosen.output_dir == str(tmp_path)


def test_a_checkpoint_read_from_inside_output_dir_is_refused(recipe, tmp_path):
    out = tmp_path / "stage"
    done = run_cli(
        "sft", "--config", str(recipe), "--set", f"output_dir={out}",
        "--set", f"init_from={out / 'checkpoint'}",
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: {recipe}: sft: init_from: {out / 'checkpoint'} lies inside output_dir {out}, "
        "where this stage publishes its own checkpoint; give the stage another output_dir"
    ]


def test_a_missing_input_is_one_line_not_a_traceback(recipe, tmp_path):
    done = run_cli(
        "sft", "--config", str(recipe), "--set", f"output_dir={tmp_path / 'out'}",
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: sft: data/sft: no dataset (expected a save_to_disk folder, parts/ or train.parquet)"
    ]


def test_a_stages_help_lists_its_recipe_keys():
    done = run_cli("ppo", "--help")
    assert done.returncode == 0
    assert "kl_coef:" in done.stdout and "max_steps" in done.stdout  # its own and RunConfig's
    assert "one of: pretrain, midtrain, sft" in run_cli("--help").stdout


def test_stages_read_only_the_hub_cache_unless_allowed(recipe, monkeypatch, tmp_path):
    real_stage = cli.stage
    seen = []

    def recording_stage(name):
        cls, _ = real_stage(name)
        offline = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
        return cls, lambda config: seen.append(tuple(os.environ.get(k) for k in offline))

    monkeypatch.setattr(cli, "stage", recording_stage)
    args = ["sft", "--config", str(recipe), "--set", f"output_dir={tmp_path}"]
    for allowed, expected in ((False, ("1", "1")), (True, (None, None))):
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", cli.ALLOW_HUB_ENV):
            monkeypatch.delenv(name, raising=False)
        assert cli.main(args + ["--allow-hub"] * allowed) == 0
        assert seen[-1] == expected, allowed
    # a launcher (a Dagster asset) allows it through the environment
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(cli.ALLOW_HUB_ENV, "1")
    assert cli.main(args) == 0 and seen[-1] == (None, None)


def test_a_recipe_files_own_error_names_the_file_even_with_a_set(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("sft:\n  data: d\n  max_stepz: 3\n")
    with pytest.raises(RecipeError, match=rf"^{path}: sft.max_stepz: unknown key"):
        cli.load_config("sft", str(path), ["learning_rate=0.1"])
