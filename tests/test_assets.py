"""The demo's asset graph materialized in-process on the embedded data, in a real instance."""

import hashlib
import json

import dagster as dg
import polars as pl
import pytest

from assets.feedback import JudgeResource
from assets.io_manager import PolarsParquetIOManager
from assets.resources import PROJECT_ROOT, SAMPLES, StorageResource
from assets.training import RecipeResource
from curation.storage import read_manifest
from pipelines.definitions import all_assets, defs


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs")
    home = tmp_path_factory.mktemp("dagster_home")
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        job = defs.resolve_job_def("demo")
        # The recipe as the launch form sets it: once, for every stage of the run.
        run_config = {
            "resources": {"recipe": {"config": {"path": "recipes/test-cpu.yaml"}}},
            "ops": {
                "training_evaluation": {"config": {"tasks": 20}},
                "alignment_report": {"config": {"tasks": 20}},
            },
        }
        result = job.execute_in_process(
            run_config=run_config,
            instance=instance,
            resources={
                "io_manager": PolarsParquetIOManager(base_dir=str(out)),
                "storage": StorageResource(base_dir=str(out)),
                "pipes_subprocess_client": dg.PipesSubprocessClient(cwd=str(PROJECT_ROOT)),
            },
        )
        yield result, out, instance


TRAINING_ASSETS = (
    "pretrain_mixture",
    "decay_mixture",
    "base_checkpoint",
    "midtrain_checkpoint",
    "sft_checkpoint",
    "model_candidates",
    "reward_checkpoint",
    "dpo_checkpoint",
    "ppo_checkpoint",
    "grpo_checkpoint",
    "rloo_checkpoint",
)


def materialization(result, key: str):
    return result.asset_materializations_for_node(key)[0]


def test_every_asset_materializes(demo):
    result, out, instance = demo
    assert result.success
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    recorded = {
        k.to_user_string()
        for k in instance.get_asset_keys()
        if instance.get_latest_materialization_event(k) is not None
    }
    assert recorded == keys


def test_conversations_cover_every_source_in_the_canonical_schema(demo):
    _, out, _ = demo
    conversations = read_manifest(out / "conversations").read()
    assert set(conversations["source"]) == {
        "oasst",
        "flan",
        "hh",
        "ultrafeedback",
        "synthetic_chat",
    }
    assert conversations["id"].n_unique() == conversations.height
    roles = conversations.select(
        pl.col("messages").list.eval(pl.element().struct.field("role"))
    ).explode("messages")
    assert set(roles["messages"]) <= {"system", "user", "assistant"}
    assert all(json.loads(m) is not None for m in conversations["meta"])
    preferences = read_manifest(out / "preferences_human").read()
    assert {"oasst", "hh", "ultrafeedback"} <= set(preferences["source"])
    assert preferences.filter(pl.col("chosen") == pl.col("rejected")).height == 0


def test_nothing_is_lost_between_raw_and_canonical(demo):
    _, out, _ = demo
    rejects = read_manifest(out / "ingest_rejects").read("ledger")
    assert {"ingest.deleted", "ingest.spam_tree"} <= set(rejects["rule"])
    # FLAN is one row per line, so lines in == conversations + rejected, exactly.
    flan_lines = sum(
        len((SAMPLES / name).read_text().splitlines())
        for name in ("flan.jsonl", "synthetic_flan.jsonl")
    )
    raw_flan = pl.read_parquet(out / "raw_flan" / "conversations.parquet")
    flan_rejected = pl.read_parquet(out / "raw_flan" / "rejected.parquet")
    assert raw_flan.height + flan_rejected.height == flan_lines


def test_length_profile_shows_tables_and_histograms_in_the_ui(demo):
    result, out, _ = demo
    metadata = materialization(result, "length_profile").metadata
    pngs = [k for k in metadata if k.startswith("hist_")]
    assert {"hist_user_tokens", "hist_assistant_tokens", "hist_text_tokens"} <= set(pngs)
    assert metadata["hist_user_tokens"].value.startswith(
        "![hist_user_tokens](data:image/png;base64,"
    )
    assert "| source | role |" in metadata["tokens_by_source_and_role"].value
    stats = pl.read_parquet(out / "length_profile.parquet")
    medians = stats.filter(measure="tokens", role="assistant").select("source", "p50")
    spread = dict(medians.iter_rows())
    assert spread["oasst"] > 5 * spread["flan"]  # sources differ widely in output length
    assert (out / "project_tokenizer" / "tokenizer.json").exists()


def test_raw_asset_reports_counts_and_reasons(demo):
    result, _, _ = demo
    metadata = materialization(result, "raw_oasst").metadata
    assert metadata["conversations"].value > 50
    assert metadata["preferences"].value > 100
    assert metadata["excluded_rules"].value["ingest.deleted"] >= 1


def test_a_bad_source_config_fails_its_asset_with_the_file_named(tmp_path, instance):
    # ``keys``, not ``key``: some definitions (combined_tables, curation) hold several assets.
    raw_flan = next(a for a in defs.assets if dg.AssetKey("raw_flan") in a.keys)
    missing = tmp_path / "missing.jsonl"
    result = dg.materialize(
        [raw_flan],
        instance=instance,
        run_config={"ops": {"raw_flan": {"config": {"paths": [str(missing)]}}}},
        resources={"io_manager": PolarsParquetIOManager(base_dir=str(tmp_path))},
        raise_on_error=False,
    )
    assert not result.success
    failure = result.failure_data_for_node("raw_flan")
    assert f"{missing}: no such file" in str(failure.error)
    # the ingest retry policy is for I/O that can pass on a second try, not for bad input
    assert defs.get_assets_def("raw_flan").op.retry_policy is not None
    restarts = [e for e in result.all_events if e.event_type_value == "STEP_RESTARTED"]
    assert restarts == []


def test_curation_assets_keep_a_ledger_and_pass_their_checks(demo):
    result, out, _ = demo
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["rows_are_conserved"] is True
    assert checks["curated_schema_and_size"] is True
    assert checks["no_exact_duplicates_left"] is True
    curation_ledger = read_manifest(out / "curation_ledger")
    states = curation_ledger.read("states")
    conversations = read_manifest(out / "conversations").read()
    assert states.height == conversations.height
    ledger = curation_ledger.read("ledger")
    categories = {rule.split(".")[0] for rule in ledger["rule"]}
    assert {"reference", "pii", "options", "duplicate"} <= categories
    metadata = materialization(result, "curated_conversations").metadata
    assert "| rule | verdict | source | rows |" in metadata["by_rule"].value


def test_training_assets_publish_checkpoints_with_lineage(demo):
    result, out, _ = demo
    for stage, parent in (("pretrain", None), ("midtrain", "pretrain"), ("sft", "midtrain")):
        lineage = json.loads(
            (out / "checkpoints" / stage / "checkpoint" / "lineage.json").read_text()
        )
        assert lineage["stage"] == stage
        if parent:
            assert lineage["parent_checkpoint"].endswith(f"{parent}/checkpoint")
    # Each input as Dagster last materialized it: data version and rows, beside the row-id hash.
    for stage, dataset in (
        ("pretrain", "pretrain_mixture"),
        ("midtrain", "decay_mixture"),
        ("sft", "sft_dataset"),
    ):
        inputs = json.loads(
            (out / "checkpoints" / stage / "checkpoint" / "lineage.json").read_text()
        )["inputs"]
        data = materialization(result, dataset)
        assert inputs["asset"] == dataset
        assert inputs["data_version"] == data.tags["dagster/data_version"]
        assert inputs["train_rows"] == data.metadata["train_rows"].value > 0
        assert len(inputs["row_ids_sha256"]) == 64
    # The launch form's recipe reached every stage of the run.
    for name in TRAINING_ASSETS:
        if name.endswith("_checkpoint"):
            assert materialization(result, name).metadata["recipe"].value == "recipes/test-cpu.yaml"
    metadata = materialization(result, "sft_checkpoint").metadata
    assert metadata["loss_curve"].value.startswith("![loss](data:image/png;base64,")
    summary = pl.read_parquet(out / "evaluation" / "summary.parquet")
    assert summary["stage"].to_list() == ["pretrain", "midtrain", "sft"]
    assert summary["heldout_loss"][2] < summary["heldout_loss"][0]
    datasets_dir = out / "datasets"
    assert {"sft", "prompt", "preference", "pretrain", "pretrain_mixture", "decay_mixture"} <= {
        p.name for p in datasets_dir.iterdir()
    }


def test_ai_feedback_ranks_candidates_and_feeds_the_preference_dataset(demo):
    result, out, _ = demo
    sets = pl.read_parquet(out / "candidate_sets.parquet")
    origins = set(sets["candidates"].explode().struct.field("origin"))
    assert {"model", "dataset", "reference"} <= origins
    rankings = pl.read_parquet(out / "ai_rankings.parquet")
    assert rankings.height == sets.height  # every set comes back, judged or with a reason
    assert rankings.filter(pl.col("status") == "ok").height > 0
    pairs = pl.read_parquet(out / "feedback_preferences.parquet")
    assert pairs.height > 0 and set(pairs["origin"]) == {"ai"}
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    quality = checks["judge_agrees_with_checkable_answers"]
    assert quality.passed
    assert quality.metadata["answer_pairwise_accuracy"].value > 0.9
    mix = materialization(result, "preference_dataset").metadata["mix"].value
    assert mix["available"]["ai"] >= pairs.height
    # Exported by parts (the default): one train/test pair per part behind a manifest.
    exported_parts = read_manifest(out / "datasets" / "preference" / "parts")
    assert exported_parts is not None
    exported = pl.concat([exported_parts.read("train"), exported_parts.read("test")])
    assert set(pairs["id"]) <= set(exported["id"])  # no share configured: every pair is kept


def test_alignment_stages_publish_checkpoints_and_a_report(demo):
    result, out, _ = demo
    for stage in ("reward", "dpo", "ppo", "grpo", "rloo"):
        lineage = json.loads(
            (out / "checkpoints" / stage / "checkpoint" / "lineage.json").read_text()
        )
        assert lineage["stage"] == stage
        assert lineage["parent_checkpoint"].endswith("sft/checkpoint")
    report = pl.read_parquet(out / "alignment" / "report.parquet")
    assert set(report["policy"]) == {"pretrain", "midtrain", "sft", "dpo", "ppo", "grpo", "rloo"}
    sft = report.filter(pl.col("policy") == "sft").row(0, named=True)
    assert sft["kl_to_sft"] == pytest.approx(0.0, abs=1e-4) and sft["win_rate_vs_sft"] == 0.5
    assert (out / "checkpoints" / "alignment_report.md").read_text().startswith("# Alignment")
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["policies_moved_within_kl_bound"] is True
    lineage = {
        e.asset_key.to_user_string(): e
        for e in result.get_asset_check_evaluations()
        if e.check_name == "lineage_is_unbroken"
    }
    assert set(lineage) == {
        f"{name}_checkpoint"
        for name in ("base", "midtrain", "sft", "reward", "dpo", "ppo", "grpo", "rloo")
    }
    assert all(e.passed for e in lineage.values()), {
        k: e.metadata["problems"].value for k, e in lineage.items() if not e.passed
    }
    chain = lineage["dpo_checkpoint"].metadata["chain"].value
    assert chain.startswith("| stage | checkpoint | input_of | dataset |")
    assert "reward_model_beats_chance" in checks
    metadata = materialization(result, "alignment_report").metadata
    assert metadata["plots"].value.startswith("![alignment](data:image/png;base64,")


def test_materializing_unchanged_data_again_keeps_versions_and_trains_nothing(demo):
    """Every materialization rewrites the datasets; with the same rows their data versions stay,
    and the checkpoints are reused (not retrained, not stale), saying so. Runs last: it
    materializes again in the module's instance."""
    first, out, instance = demo
    keys = ["pretrain_mixture", "decay_mixture", "sft_dataset"]
    checkpoints = ["base_checkpoint", "midtrain_checkpoint", "sft_checkpoint"]
    lineages = {
        stage: (out / "checkpoints" / stage / "checkpoint" / "lineage.json").read_bytes()
        for stage in ("pretrain", "midtrain", "sft")
    }
    again = dg.materialize(
        all_assets,
        selection=keys + checkpoints,
        instance=instance,
        resources={
            "io_manager": PolarsParquetIOManager(base_dir=str(out)),
            "storage": StorageResource(base_dir=str(out)),
            "pipes_subprocess_client": dg.PipesSubprocessClient(cwd=str(PROJECT_ROOT)),
            "judge": JudgeResource(),
            "recipe": RecipeResource(path="recipes/test-cpu.yaml"),
        },
    )
    assert again.success
    version = "dagster/data_version"
    for key in keys + checkpoints:
        before, after = materialization(first, key), materialization(again, key)
        assert after.tags[version] == before.tags[version], key
    for key in checkpoints:
        assert materialization(first, key).metadata["trained"].value is True
        reused = materialization(again, key).metadata
        assert reused["trained"].value is False
        # the curve of the run that trained it, not of whatever ran in the stage folder since
        assert (
            reused["loss_curve"].value == materialization(first, key).metadata["loss_curve"].value
        )
    for stage, lineage in lineages.items():
        assert (out / "checkpoints" / stage / "checkpoint" / "lineage.json").read_bytes() == lineage
    # a checkpoint's version is its lineage's digest, the one its child pins as its parent
    sft_lineage = json.loads(lineages["sft"])
    midtrain_version = materialization(again, "midtrain_checkpoint").tags[version]
    assert sft_lineage["parent_lineage_sha256"] == midtrain_version
    assert midtrain_version == hashlib.sha256(lineages["midtrain"]).hexdigest()


def test_long_id_lists_of_a_lineage_are_counted_in_the_assets_metadata():
    from assets.training import LISTED_IDS, lineage_for_metadata

    many = [f"row-{i}" for i in range(LISTED_IDS + 1)]
    lineage = {"stage": "sft", "inputs": {"row_ids_left_out": many, "data": "d"}}
    shown = lineage_for_metadata(lineage)
    assert shown["inputs"]["row_ids_left_out"] == (
        f"{LISTED_IDS + 1} ids, listed in the checkpoint's lineage.json"
    )
    assert shown["inputs"]["data"] == "d" and lineage["inputs"]["row_ids_left_out"] == many
    few = {"stage": "sft", "inputs": {"row_ids_left_out": many[:3]}}
    assert lineage_for_metadata(few) == few
