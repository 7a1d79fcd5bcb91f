"""training_evaluation's check as Dagster runs it, alone on a real instance: it reads the stored
evaluation summary (the asset itself, which launches training subprocesses, never runs) and
warns, without blocking, unless SFT beats the checkpoint it starts from on exact match."""

from pathlib import Path

import dagster as dg
import polars as pl

from assets.resources import StorageResource
from assets.training import sft_beats_its_start_on_exact_match, training_evaluation
from pipelines.definitions import all_assets, all_checks, defs

CHECK = sft_beats_its_start_on_exact_match.check_key


def write_summary(root: Path, exact_match: dict[str, float]) -> None:
    """A summary.parquet in the shape training_evaluation writes, at the path it writes it."""
    folder = root / "evaluation"
    folder.mkdir(parents=True)
    pl.DataFrame(
        {
            "stage": ["pretrain", "midtrain", "sft"],
            "heldout_loss": [5.5, 4.25, 3.5],
            "perplexity": [244.7, 70.1, 33.1],
            "exact_match": [exact_match["pretrain"], exact_match["midtrain"], exact_match["sft"]],
        }
    ).write_parquet(folder / "summary.parquet")


def run_check(instance, root: Path) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*all_assets, *all_checks],
        selection=dg.AssetSelection.checks(CHECK),
        instance=instance,
        resources={**defs.resources, "storage": StorageResource(base_dir=str(root))},
        raise_on_error=False,
    )


def evaluation(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    (only,) = result.get_asset_check_evaluations()
    return only


def test_the_check_is_collected_into_the_definitions_beside_its_asset():
    assert CHECK.asset_key == training_evaluation.key
    assert CHECK in {key for checks in all_checks for key in checks.check_keys}
    spec = next(iter(sft_beats_its_start_on_exact_match.check_specs))
    assert not spec.blocking
    assert "midtrain" in spec.description and "exact-match" in spec.description


def test_sft_above_midtrain_passes_and_reports_both_stages(instance, tmp_path):
    write_summary(tmp_path, {"pretrain": 0.0, "midtrain": 0.0, "sft": 0.2})
    result = run_check(instance, tmp_path)
    assert result.success
    # Only the check ran: the asset was neither executed nor recorded.
    assert not result.get_asset_materialization_events()
    assert instance.get_latest_materialization_event(training_evaluation.key) is None
    check = evaluation(result)
    assert check.check_name == CHECK.name and check.passed
    assert check.severity == dg.AssetCheckSeverity.WARN
    metadata = {k: v.value for k, v in check.metadata.items()}
    assert metadata["exact_match_sft"] == 0.2
    assert metadata["exact_match_midtrain"] == 0.0
    assert metadata["heldout_loss_sft"] == 3.5
    assert metadata["heldout_loss_midtrain"] == 4.25
    assert metadata["path"] == str(tmp_path / "evaluation" / "summary.parquet")


def test_sft_equal_to_midtrain_fails_as_a_warning_without_failing_the_run(instance, tmp_path):
    # pretrain scores higher than both: the check compares with SFT's start, not the best stage.
    write_summary(tmp_path, {"pretrain": 0.5, "midtrain": 0.1, "sft": 0.1})
    result = run_check(instance, tmp_path)
    assert result.success
    check = evaluation(result)
    assert not check.passed
    assert check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["exact_match_sft"].value == 0.1
    assert check.metadata["exact_match_midtrain"].value == 0.1
    assert check.metadata["heldout_loss_midtrain"].value == 4.25
    stored = instance.event_log_storage.get_asset_check_execution_history(CHECK, limit=1)
    assert stored and stored[0].status.value == "FAILED"


def test_a_summary_without_the_sft_row_fails_naming_the_file_and_stage(instance, tmp_path):
    write_summary(tmp_path, {"pretrain": 0.0, "midtrain": 0.0, "sft": 0.0})
    path = tmp_path / "evaluation" / "summary.parquet"
    pl.read_parquet(path).filter(pl.col("stage") != "sft").write_parquet(path)
    check = evaluation(run_check(instance, tmp_path))
    assert not check.passed
    assert str(path) in check.description and "sft" in check.description


def test_an_sft_that_started_elsewhere_is_not_compared_with_midtrain(instance, tmp_path):
    """With a recipe's init_from, SFT's start is not an evaluated stage: the check warns that
    it cannot compare rather than pass or fail against midtrain."""
    import json

    write_summary(tmp_path, {"pretrain": 0.0, "midtrain": 0.0, "sft": 0.2})
    sft = tmp_path / "checkpoints" / "sft" / "checkpoint"
    sft.mkdir(parents=True)
    (sft / "lineage.json").write_text(json.dumps({"parent_checkpoint": "/models/other"}))
    check = evaluation(run_check(instance, tmp_path))
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert "sft started from /models/other" in check.description
