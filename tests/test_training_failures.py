"""A training asset seen from Dagster: it takes what the run's recipe chooses, a recipe typo
anywhere stops the run before the first stage works, and a stage that fails shows its own
reason, not an exit code."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from assets import training as training_assets
from assets.resources import PROJECT_ROOT, SAMPLES, StorageResource
from training.tokenizer import TokenizerConfig, corpus_texts, save_tokenizer, train_tokenizer

BASE_RECIPE = yaml.safe_load((PROJECT_ROOT / "recipes" / "test-cpu.yaml").read_text())


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Path:
    """What base_checkpoint reads: the project tokenizer and a pretraining mixture."""
    out = tmp_path_factory.mktemp("outputs")
    tokenizer = train_tokenizer(
        corpus_texts(SAMPLES / "pretrain.jsonl"), TokenizerConfig(vocab_size=512)
    )
    save_tokenizer(tokenizer, out / "project_tokenizer")
    rows = pl.read_ndjson(SAMPLES / "pretrain.jsonl").head(300)
    mixture = out / "datasets" / "pretrain_mixture"
    mixture.mkdir(parents=True)
    rows.select("id", pl.lit("pretrain").alias("source"), "text").write_parquet(
        mixture / "train.parquet"
    )
    return out


def recipe_with(tmp_path: Path, section: str, **changes) -> str:
    recipe = json.loads(json.dumps(BASE_RECIPE))
    recipe.setdefault(section, {}).update(changes)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def materialize_base(outputs: Path, recipe: str, instance) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [training_assets.base_checkpoint],
        instance=instance,
        raise_on_error=False,
        # as automated runs are tagged, from POSTFORGE_RECIPE
        tags={training_assets.RECIPE_TAG: "recipes/tiny-cpu.yaml"},
        resources={
            "storage": StorageResource(base_dir=str(outputs)),
            "pipes_subprocess_client": dg.PipesSubprocessClient(cwd=str(PROJECT_ROOT)),
            "recipe": training_assets.RecipeResource(path=recipe),
        },
    )


def failure_of(result: dg.ExecuteInProcessResult, node: str) -> tuple[dg.Failure, str]:
    assert not result.success
    step_failure = result.failure_data_for_node(node)
    return step_failure.user_failure_data, step_failure.error.message


def test_a_typo_in_a_later_stage_stops_the_first_stage_before_it_works(outputs, tmp_path, instance):
    recipe = recipe_with(tmp_path, "sft", lerning_rate=1e-3)
    result = materialize_base(outputs, recipe, instance)
    _, message = failure_of(result, "base_checkpoint")
    assert f"{recipe}: sft.lerning_rate: unknown key" in message
    # Nothing ran: no stage config was written, no run folder made.
    assert not (outputs / "checkpoints" / "pretrain" / "stage.yaml").exists()
    # The run's recipe tag names the recipe the launch form set, not the automated default.
    run = instance.get_run_by_id(result.run_id)
    assert run.tags[training_assets.RECIPE_TAG] == recipe


def test_an_unknown_section_and_a_wrong_type_are_named(outputs, tmp_path, instance):
    recipe = recipe_with(tmp_path, "sfft", learning_rate=1e-3)
    _, message = failure_of(materialize_base(outputs, recipe, instance), "base_checkpoint")
    assert "sfft: unknown section" in message
    recipe = recipe_with(tmp_path, "dpo", beta="high")
    _, message = failure_of(materialize_base(outputs, recipe, instance), "base_checkpoint")
    assert "dpo.beta: expected float, got str 'high'" in message


def test_a_value_no_later_stage_can_use_stops_the_first_stage(outputs, tmp_path, instance):
    # ppo's data, init_from and reward_model are the assets' to fill: only its own value is
    # the recipe's fault, and it is found before pretraining runs
    recipe = recipe_with(tmp_path, "ppo", kl_coef=-1.0)
    _, message = failure_of(materialize_base(outputs, recipe, instance), "base_checkpoint")
    assert f"{recipe}: ppo: kl_coef: must be >= 0, got -1.0" in message
    assert not (outputs / "checkpoints" / "pretrain" / "stage.yaml").exists()


def test_a_failing_stage_fails_the_asset_with_its_own_reason(outputs, tmp_path, instance):
    recipe = recipe_with(tmp_path, "pretrain", learning_rate=1e30, max_steps=6, logging_steps=1)
    result = materialize_base(outputs, recipe, instance)
    data, message = failure_of(result, "base_checkpoint")
    assert "pretrain failed: FloatingPointError: pretrain: non-finite loss at step" in message
    assert data.metadata["stage"].value == "pretrain"
    # The stage closed its Pipes channel with the error: Dagster keeps it, structured.
    closed = [
        record.dagster_event
        for record in instance.all_logs(result.run_id)
        if record.dagster_event and "closed with exception" in (record.dagster_event.message or "")
    ]
    assert closed and "non-finite loss" in str(closed[0].event_specific_data.error)
    assert not result.asset_materializations_for_node("base_checkpoint")
    assert not (outputs / "checkpoints" / "pretrain" / "checkpoint").exists()


def test_a_killed_stage_is_named_by_its_signal(tmp_path):
    absent = tmp_path / "stage.failure.txt"
    reason = training_assets.failure_reason(
        absent, "External execution process failed with code -9"
    )
    assert "killed by SIGKILL" in reason and "out-of-memory killer" in reason
    assert "SIGTERM" in training_assets.failure_reason(absent, "failed with code -15")
    absent.write_text("ResourceError: pretrain: out of memory at step 3\n")
    assert training_assets.failure_reason(absent, "failed with code 1").startswith(
        "ResourceError: pretrain: out of memory"
    )


def test_a_tokenizer_in_the_recipe_is_refused_in_favour_of_the_project_one(
    outputs, tmp_path, instance
):
    """The mixtures are counted in project_tokenizer's tokens: another tokenizer would train on
    documents cut to the wrong budgets without a word, so the recipe may not name one here."""
    recipe = recipe_with(tmp_path, "pretrain", tokenizer=str(tmp_path / "other"), max_steps=2)
    _, message = failure_of(materialize_base(outputs, recipe, instance), "base_checkpoint")
    assert "pretrain.tokenizer: under Dagster the tokenizer is the project_tokenizer" in message


def test_a_stage_runs_under_the_launcher_the_environment_names(
    outputs, tmp_path, instance, monkeypatch
):
    """POSTFORGE_LAUNCHER runs the stage data-parallel from Dagster (here torchrun with two
    CPU processes, as `torchrun --nproc_per_node 8` would on a GPU box): both train, the main
    one alone reports through Pipes."""
    import shutil
    import sys

    from training.reporting import read_metrics

    mine = tmp_path / "outputs"
    shutil.copytree(outputs, mine)
    monkeypatch.setenv(
        training_assets.LAUNCHER_ENV,
        f"{sys.executable} -m torch.distributed.run --nproc_per_node 2",
    )
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    recipe = recipe_with(tmp_path, "pretrain", max_steps=2, save_steps=100)
    result = materialize_base(mine, recipe, instance)
    assert result.success
    records = read_metrics(mine / "checkpoints" / "pretrain" / "metrics.jsonl")
    trained = [r for r in records if "loss" in r]
    assert [r["step"] for r in trained] == [1, 2]  # once each, from the main process
    section = BASE_RECIPE["pretrain"]
    per_step = section["per_device_train_batch_size"] * section["max_length"]
    assert trained[-1]["tokens_seen"] == 2 * 2 * per_step  # two processes' batches
    metadata = result.asset_materializations_for_node("base_checkpoint")[0].metadata
    assert metadata["tokens_per_s"].value > 0
