"""curated_conversations' checks as Dagster runs them, on a real instance and the embedded data:
a failing blocking check fails the step and keeps the datasets downstream from being built, and
the checks run alone read the stored tables without curating again."""

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest

import assets.curate
from assets.curate import CURATED
from assets.ingest import raw_drops
from assets.io_manager import PolarsParquetIOManager
from assets.resources import StorageResource
from curation.storage import MANIFEST
from pipelines.definitions import all_assets, all_checks, defs

LEDGER = dg.AssetKey("curation_ledger")
SFT = dg.AssetKey("sft_dataset")
CURATION = dg.AssetSelection.assets(CURATED, LEDGER)
CHECK_NAMES = {spec.name for spec in assets.curate.CURATED_CHECKS}


def materialize(instance, out: Path, selection) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*all_assets, *all_checks],
        selection=selection,
        instance=instance,
        resources={
            **defs.resources,
            "io_manager": PolarsParquetIOManager(base_dir=str(out)),
            "storage": StorageResource(base_dir=str(out)),
        },
        raise_on_error=False,
    )


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> Path:
    """Everything curated_conversations reads (conversations, the project tokenizer), built
    once from the embedded sources; each test curates a copy in its own instance."""
    out = tmp_path_factory.mktemp("upstream")
    home = tmp_path_factory.mktemp("upstream_home")
    inputs = dg.AssetSelection.assets(CURATED).upstream() - dg.AssetSelection.assets(
        CURATED, raw_drops.key
    )
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        assert materialize(instance, out, inputs).success
    return out


@pytest.fixture
def out(upstream, tmp_path) -> Path:
    copy = tmp_path / "out"
    shutil.copytree(upstream, copy)
    return copy


def step_events(result, event_type: str) -> set[str]:
    return {e.step_key for e in result.all_events if e.event_type_value == event_type}


def materialized(result) -> set[dg.AssetKey]:
    return {e.asset_key for e in result.get_asset_materialization_events()}


def materializations(instance) -> list[str]:
    """The runs that materialized curated_conversations, newest first."""
    return [r.run_id for r in instance.fetch_materializations(CURATED, limit=10).records]


def checks(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def miscount(manifest_folder: Path, field: str, stats: bool = False) -> None:
    """Add one to the first part's ``field`` (or ``stats[field]``) in a stored manifest: a
    count that no longer matches the rows it describes."""
    path = manifest_folder / MANIFEST
    data = json.loads(path.read_text(encoding="utf-8"))
    target = data["parts"][0]["stats"] if stats else data["parts"][0]
    target[field] += 1
    path.write_text(json.dumps(data), encoding="utf-8")


def test_passing_checks_let_the_sft_dataset_build(instance, out):
    result = materialize(instance, out, CURATION | dg.AssetSelection.assets(SFT))
    assert result.success
    assert checks(result) == dict.fromkeys(CHECK_NAMES, True)
    assert {CURATED, LEDGER, SFT} <= materialized(result)
    assert (out / "datasets" / "sft").is_dir()


def test_a_failing_blocking_check_fails_the_step_and_skips_the_sft_dataset(instance, out):
    # conversations' manifest claims one row more than its first part holds: curation sees the
    # real rows, so in != kept + rewritten + dropped for that part.
    miscount(out / "conversations", "rows")
    result = materialize(instance, out, CURATION | dg.AssetSelection.assets(SFT))
    assert not result.success
    # Every check was evaluated and reported; only the conservation check failed.
    assert checks(result) == {**dict.fromkeys(CHECK_NAMES, True), "rows_are_conserved": False}
    (conserved,) = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "rows_are_conserved"
    ]
    assert conserved.blocking and conserved.metadata["parts_not_conserved"].value
    # Dagster fails the step after the body is done: the tables were stored and recorded (the
    # checks read them), the step failed on the blocking check, and sft_dataset never started.
    assert materialized(result) == {CURATED, LEDGER}
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_key == "curated_conversations"
    assert "blocking asset check failed" in failure.step_failure_data.error.message
    assert "rows_are_conserved" in failure.step_failure_data.error.message
    assert "sft_dataset" not in step_events(result, "STEP_START")
    assert instance.get_latest_materialization_event(SFT) is None
    assert not (out / "datasets" / "sft").exists()


def curation_metadata(result) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == CURATED]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_a_set_that_failed_its_blocking_check_is_curated_again_from_scratch(instance, out):
    manifest = out / "conversations" / MANIFEST
    good = manifest.read_text(encoding="utf-8")
    miscount(out / "conversations", "rows")
    assert not materialize(instance, out, CURATION).success
    manifest.write_text(good, encoding="utf-8")  # the input is right again
    # Nothing changed since the failed run, yet nothing of it is reused: every row again.
    again = materialize(instance, out, CURATION)
    assert again.success and checks(again) == dict.fromkeys(CHECK_NAMES, True)
    meta = curation_metadata(again)
    assert meta["mode"] == "full" and "failed rows_are_conserved" in meta["mode_reason"]
    assert meta["rows_filtered"] == meta["rows_in"]
    # A passing run is built on as usual: the next run keeps every part.
    third = curation_metadata(materialize(instance, out, CURATION))
    assert third["mode"] == "append" and third["rows_filtered"] == 0


def test_checks_run_alone_read_the_stored_tables_without_curating(instance, out, monkeypatch):
    first = materialize(instance, out, CURATION)
    assert first.success and checks(first) == dict.fromkeys(CHECK_NAMES, True)
    recorded = materializations(instance)
    files = {p: p.stat().st_mtime_ns for p in (out / "curated_conversations").iterdir()}

    def no_curation(*args, **kwargs):
        raise AssertionError("a run of the checks alone curated again")

    monkeypatch.setattr(assets.curate, "curate_parts", no_curation)
    conserved = dg.AssetCheckKey(CURATED, "rows_are_conserved")
    duplicates = dg.AssetCheckKey(CURATED, "no_exact_duplicates_left")
    alone = materialize(instance, out, dg.AssetSelection.checks(conserved, duplicates))
    assert alone.success
    assert checks(alone) == {"rows_are_conserved": True, "no_exact_duplicates_left": True}
    assert materialized(alone) == set()
    assert materializations(instance) == recorded == [first.run_id]
    assert {p: p.stat().st_mtime_ns for p in files} == files
    # The check judged the stored tables: a stored count that no longer adds up fails it.
    miscount(out / "curated_conversations", "rows_in", stats=True)
    failing = materialize(instance, out, dg.AssetSelection.checks(conserved))
    assert not failing.success
    assert checks(failing) == {"rows_are_conserved": False}
    assert materialized(failing) == set()


def test_checks_alone_before_any_curation_name_what_to_materialize(instance, out):
    result = materialize(
        instance, out, dg.AssetSelection.checks(dg.AssetCheckKey(CURATED, "residual_flags"))
    )
    assert not result.success and checks(result) == {}
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "materialize curated_conversations" in failure.step_failure_data.error.message


def test_one_of_the_two_tables_alone_is_refused(instance, out):
    result = materialize(instance, out, dg.AssetSelection.assets(CURATED))
    assert not result.success and materialized(result) == set()
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "written together" in failure.step_failure_data.error.message
    assert not (out / "curated_conversations").exists()
