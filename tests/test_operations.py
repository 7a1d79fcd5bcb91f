"""Operations on a real instance: drops as partitions, the refresh schedule, the drop sensor,
automation, retry policies and re-execution from a failed step."""

import json
import os
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from assets import ingest
from assets.io_manager import PolarsParquetIOManager
from assets.partitions import DROPS, drop_files, drop_records, find_drops
from curation.storage import read_manifest
from pipelines import automation
from pipelines.automation import OperationsSettings, SettingsError

ROOTS = [*ingest.RAW_KEYS, dg.AssetKey("raw_pretrain")]
COMBINE = [dg.AssetKey(n) for n in ("conversations", "preferences_human", "ingest_rejects")]
INGEST_ASSETS = automation.apply_operations(dg.load_assets_from_modules([ingest]))


def chat_rows(prefix: str, count: int) -> list[dict]:
    return [
        {
            "id": f"{prefix}-{i}",
            "messages": [
                {"role": "user", "content": f"Drop {prefix}: what is {i} plus {i}?"},
                {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
            ],
        }
        for i in range(count)
    ]


def hh_row(topic: str) -> dict:
    question = f"\n\nHuman: How do I look after a {topic}?"
    return {
        "chosen": f"{question}\n\nAssistant: Water it weekly and give it light.",
        "rejected": f"{question}\n\nAssistant: No idea.",
    }


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def drops(tmp_path):
    """Two good drops and a bad one (an empty OpenAssistant file, unreadable as a whole)."""
    root = tmp_path / "drops"
    write_jsonl(root / "2026-11-01" / "chat.jsonl", chat_rows("a", 5))
    write_jsonl(root / "2026-11-01" / "hh" / "part-1.jsonl", [hh_row("fern"), hh_row("cactus")])
    # d2 delivers a newer version of a-0 (same id) and two new rows.
    newer = chat_rows("a", 1)
    newer[0]["messages"][1]["content"] = "0 plus 0 is 0, as before."
    write_jsonl(root / "2026-11-02" / "chat.jsonl", newer + chat_rows("b", 2))
    # FLAN rows have no ids: each drop's flan.jsonl line 1 is a row of its own.
    write_jsonl(root / "2026-11-01" / "flan.jsonl", [{"inputs": "Say hi.", "targets": "Hi."}])
    write_jsonl(root / "2026-11-02" / "flan.jsonl", [{"inputs": "Say bye.", "targets": "Bye."}])
    (root / "bad").mkdir()
    (root / "bad" / "oasst_trees.jsonl").write_text("", encoding="utf-8")
    write_jsonl(root / "_incoming" / "chat.jsonl", chat_rows("x", 1))
    return root


def resources(out: Path) -> dict:
    return {"io_manager": PolarsParquetIOManager(base_dir=str(out))}


def ingest_drop(instance, root: Path, out: Path, drop: str) -> dg.ExecuteInProcessResult:
    if drop not in instance.get_dynamic_partitions(DROPS.name):
        instance.add_dynamic_partitions(DROPS.name, [drop])
    return dg.materialize(
        INGEST_ASSETS,
        selection=[ingest.raw_drops.key],
        partition_key=drop,
        instance=instance,
        resources=resources(out),
        run_config={"ops": {"raw_drops": {"config": {"root": str(root)}}}},
        raise_on_error=False,
    )


def materialize_unpartitioned(instance, out: Path, keys) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        INGEST_ASSETS, selection=keys, instance=instance, resources=resources(out)
    )


def test_drop_layout_names_sources_and_rejects_unknown_files(drops, tmp_path):
    assert find_drops(drops) == ["2026-11-01", "2026-11-02", "bad"]  # _incoming is not ready
    files = drop_files(drops / "2026-11-01")
    assert {fmt: [p.name for p in ps] for fmt, ps in files.items()} == {
        "jsonl": ["chat.jsonl"],
        "flan": ["flan.jsonl"],
        "hh": ["part-1.jsonl"],
    }
    write_jsonl(tmp_path / "odd" / "hhrlhf.jsonl", [hh_row("rose")])
    with pytest.raises(ValueError, match=r"hhrlhf\.jsonl: source 'hhrlhf' unknown"):
        drop_files(tmp_path / "odd")


def test_drops_ingest_alone_a_bad_drop_fails_alone_and_the_combine_reads_the_rest(
    instance, drops, tmp_path
):
    out = tmp_path / "out"
    first = ingest_drop(instance, drops, out, "2026-11-01")
    bad = ingest_drop(instance, drops, out, "bad")
    second = ingest_drop(instance, drops, out, "2026-11-02")
    assert first.success and second.success and not bad.success
    failure = bad.get_step_failure_events()[0].step_failure_data.error
    assert "oasst_trees.jsonl" in failure.message and "'bad'" in failure.message
    # One attempt only: unreadable input is not retried.
    assert len(bad.get_step_failure_events()) == 1
    assert sorted(instance.get_materialized_partitions(ingest.raw_drops.key)) == [
        "2026-11-01",
        "2026-11-02",
    ]
    meta = first.asset_materializations_for_node("raw_drops")[0].metadata
    # HH transcripts give a conversation (the chosen side) and a pair each.
    assert meta["conversations"].value == 5 + 2 + 1 and meta["preferences"].value == 2
    stored = pl.read_parquet(out / "raw_drops" / "2026-11-01" / "conversations.parquet")
    assert stored.height == 8

    done = materialize_unpartitioned(instance, out, [*ROOTS, *COMBINE])
    assert done.success
    embedded = pl.concat(
        [pl.read_parquet(out / k.path[0] / "conversations.parquet") for k in ingest.RAW_KEYS]
    )
    # One part per source group and drop, each written once (curation.storage).
    table = read_manifest(out / "conversations")
    assert [p.name for p in table.parts] == ["sources", "drop=2026-11-01", "drop=2026-11-02"]
    combined = table.read()
    drop_rows = combined.filter(pl.col("source") == "chat")
    # d2: a-0 replaced, b-0, b-1 and its own flan line 1 added
    assert combined.height == embedded.height + 8 + 3
    assert sorted(drop_rows["source_id"]) == ["a-0", "a-1", "a-2", "a-3", "a-4", "b-0", "b-1"]
    flan = combined.filter(pl.col("source_id").str.ends_with("/flan.jsonl:1"))
    assert sorted(flan["source_id"]) == ["2026-11-01/flan.jsonl:1", "2026-11-02/flan.jsonl:1"]
    assert combined["id"].n_unique() == combined.height
    replaced = drop_rows.filter(pl.col("source_id") == "a-0")
    assert replaced["messages"][0][1]["content"] == "0 plus 0 is 0, as before."
    # The combined tables are one step (node ``combined_tables``); this is conversations' event.
    (meta,) = [
        m.metadata
        for m in done.asset_materializations_for_node("combined_tables")
        if m.asset_key == dg.AssetKey("conversations")
    ]
    assert meta["drops"].value == ["2026-11-01", "2026-11-02"]
    assert meta["replaced_by_later_drop"].value == 1
    preferences = read_manifest(out / "preferences_human").read()
    assert preferences.filter(pl.col("source") == "hh").height >= 2


def test_drop_records_name_each_drops_latest_materialization_and_skip_a_failed_drop(
    instance, drops, tmp_path
):
    # Looked up for every drop at once: the records must still be per drop and the latest.
    out = tmp_path / "out"
    assert drop_records(instance, ingest.raw_drops.key) == {}
    ingest_drop(instance, drops, out, "2026-11-02")
    ingest_drop(instance, drops, out, "bad")
    ingest_drop(instance, drops, out, "2026-11-01")
    again = ingest_drop(instance, drops, out, "2026-11-02")
    records = drop_records(instance, ingest.raw_drops.key)
    # Registration order (the failed drop has no materialization, so no record).
    assert list(records) == ["2026-11-02", "2026-11-01"]
    latest = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=ingest.raw_drops.key, asset_partitions=["2026-11-02"]),
        limit=2,
    ).records
    assert len(latest) == 2 and again.success
    assert records["2026-11-02"][0] == f"materialization {latest[0].storage_id}"
    assert records["2026-11-02"][0] != f"materialization {latest[1].storage_id}"
    assert records["2026-11-01"][1] == str(out / "raw_drops" / "2026-11-01")


def test_automation_refreshes_curation_on_a_new_drop_and_never_trains(instance, drops, tmp_path):
    from pipelines.definitions import defs

    out = tmp_path / "out"
    assert materialize_unpartitioned(instance, out, [*ROOTS, *COMBINE]).success
    baseline = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert "conversations" not in {
        r.key.to_user_string() for r in baseline.results if r.true_subset.size
    }
    assert ingest_drop(instance, drops, out, "2026-11-01").success
    after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=baseline.cursor)
    requested = {r.key.to_user_string() for r in after.results if r.true_subset.size}
    assert "conversations" in requested and "preferences_human" in requested
    graph = defs.resolve_asset_graph()
    training = {
        k.to_user_string()
        for k in graph.get_all_asset_keys()
        if graph.get(k).group_name in automation.TRAINING_GROUPS
    }
    assert not requested & training
    # A failed drop does not hold the refresh back.
    assert not ingest_drop(instance, drops, out, "bad").success
    # The refresh automation asked for runs; what the daemon would then launch:
    assert materialize_unpartitioned(instance, out, COMBINE).success
    again = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=after.cursor)
    assert ingest_drop(instance, drops, out, "2026-11-02").success
    last = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=again.cursor)
    assert "conversations" in {r.key.to_user_string() for r in last.results if r.true_subset.size}


def test_a_run_automation_launches_skips_the_branch_of_a_table_no_drop_changed(
    instance, drops, tmp_path
):
    out = tmp_path / "out"
    automation_run = {"dagster/from_automation_condition": "true"}

    def combine() -> set[str]:
        result = dg.materialize(
            INGEST_ASSETS,
            selection=COMBINE,
            instance=instance,
            resources=resources(out),
            tags=automation_run,
        )
        assert result.success
        return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}

    assert materialize_unpartitioned(instance, out, [*ROOTS, *COMBINE]).success
    assert ingest_drop(instance, drops, out, "2026-11-01").success  # chats, FLAN and HH pairs
    assert {"conversations", "preferences_human"} <= combine()
    assert ingest_drop(instance, drops, out, "2026-11-02").success  # chats and FLAN only
    written = combine()
    assert "conversations" in written and "preferences_human" not in written
    # A person's materialization writes every table it selects, changed or not.
    again = materialize_unpartitioned(instance, out, COMBINE)
    assert {"conversations", "preferences_human", "ingest_rejects"} <= {
        e.asset_key.to_user_string() for e in again.get_asset_materialization_events()
    }


def settings_for(root: Path, **kw) -> OperationsSettings:
    return OperationsSettings(drops_root=str(root), **kw)


def test_schedule_requests_every_pending_drop_when_idle_and_skips_while_a_refresh_runs(
    instance, drops
):
    from pipelines.definitions import defs

    def context():
        return dg.build_schedule_context(
            instance=instance, repository_def=defs.get_repository_def()
        )

    settings = settings_for(drops, refresh_cron="30 2 * * *", timezone="Europe/Paris")
    schedule = automation.build_refresh_schedule(settings)
    assert schedule.cron_schedule == "30 2 * * *"
    assert schedule.execution_timezone == "Europe/Paris"

    tick = schedule.evaluate_tick(context())
    # one request per pending drop, oldest first (the refresh lane runs them one at a time)
    assert [r.partition_key for r in tick.run_requests] == ["2026-11-01", "2026-11-02", "bad"]
    request = tick.run_requests[0]
    assert request.tags[automation.TAG_DROP] == "2026-11-01"
    assert request.tags[automation.TAG_RECIPE] == settings.recipe
    assert len(request.tags[automation.TAG_COMMIT].split("-")[0]) == 40
    selected = {k.to_user_string() for k in request.asset_selection}
    assert {"raw_drops", "conversations", "curated_conversations", "sft_dataset"} <= selected
    assert "raw_oasst" in selected  # never materialized on this instance
    assert not selected & {"sft_checkpoint", "base_checkpoint"}
    assert "model_candidates" not in selected  # needs an SFT checkpoint; none trained yet
    assert instance.get_dynamic_partitions(DROPS.name) == ["2026-11-01", "2026-11-02", "bad"]

    running_refresh = dg.Definitions(assets=[ingest.raw_drops], jobs=[_refresh_stub()])
    run = instance.create_run_for_job(
        job_def=running_refresh.resolve_job_def("refresh"),
        tags={"dagster/partition": "2026-11-01"},
        status=dg.DagsterRunStatus.STARTED,
    )
    skipped = schedule.evaluate_tick(context())
    assert skipped.run_requests == [] and run.run_id in skipped.skip_message
    assert "skipped, not queued" in skipped.skip_message
    assert len(instance.get_runs()) == 1  # nothing stacked behind the running refresh

    instance.report_run_failed(run)  # the previous run ends (it failed on 2026-11-01)
    tick = schedule.evaluate_tick(context())
    # the failed drop waits for a person
    assert [r.partition_key for r in tick.run_requests] == ["2026-11-02", "bad"]


def _refresh_stub():
    return dg.define_asset_job("refresh", selection=[ingest.raw_drops.key], partitions_def=DROPS)


def test_settings_come_from_the_environment_and_bad_values_name_the_variable():
    env = {"POSTFORGE_REFRESH_CRON": "0 6 * * 1", "POSTFORGE_TIMEZONE": "America/New_York"}
    settings = OperationsSettings.from_env(env)
    assert (settings.refresh_cron, settings.timezone) == ("0 6 * * 1", "America/New_York")
    with pytest.raises(SettingsError, match="POSTFORGE_TIMEZONE"):
        OperationsSettings.from_env({"POSTFORGE_TIMEZONE": "Mars/Olympus"})
    with pytest.raises(SettingsError, match="POSTFORGE_REFRESH_CRON"):
        OperationsSettings.from_env({"POSTFORGE_REFRESH_CRON": "every day"})
    with pytest.raises(SettingsError, match="POSTFORGE_SFT_CHANGE_FRACTION"):
        OperationsSettings.from_env({"POSTFORGE_SFT_CHANGE_FRACTION": "lots"})


def test_sensor_registers_a_new_drop_folder_and_sees_new_files(instance, drops):
    sensor = automation.build_drop_sensor(settings_for(drops))
    first = sensor(dg.build_sensor_context(instance=instance))
    assert [r.partition_key for r in first.run_requests] == ["2026-11-01", "2026-11-02", "bad"]
    (add,) = first.dynamic_partitions_requests
    assert add.partitions_def_name == "drops"
    assert list(add.partition_keys) == ["2026-11-01", "2026-11-02", "bad"]
    instance.add_dynamic_partitions("drops", list(add.partition_keys))

    quiet = sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor))
    assert isinstance(quiet, dg.SkipReason)

    write_jsonl(drops / "2026-11-03" / "flan.jsonl", [{"inputs": "Say hi.", "targets": "Hi."}])
    write_jsonl(drops / "bad" / "chat.jsonl", chat_rows("c", 1))  # a file added to a known drop
    seen = sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor))
    assert sorted(r.partition_key for r in seen.run_requests) == ["2026-11-03", "bad"]
    (add,) = seen.dynamic_partitions_requests
    assert list(add.partition_keys) == ["2026-11-03"]  # "bad" is known, only its files changed
    assert all(r.tags[automation.TAG_TRIGGER] == "new_drop_sensor" for r in seen.run_requests)


def test_retry_policies_on_judge_and_ingest_never_on_training_and_training_in_the_gpu_pool():
    from pipelines.definitions import defs

    graph = defs.resolve_asset_graph()
    seen_judge = False
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        op = node.assets_def.op
        name = key.to_user_string()
        if node.group_name in automation.TRAINING_GROUPS or op.pool == "gpu":
            assert op.retry_policy is None, name
            assert node.automation_condition is None, name
            if name.endswith("_checkpoint"):
                assert op.pool == "gpu", name
        elif node.group_name == "feedback" and "rankings" in name:
            assert op.retry_policy == automation.JUDGE_RETRY, name
            seen_judge = True
        elif key in ROOTS or key == ingest.raw_drops.key:
            assert op.retry_policy == automation.INGEST_RETRY, name
            assert node.automation_condition is None, name
        else:
            assert op.retry_policy is None, name
            assert node.automation_condition is not None, name
    assert seen_judge
    assert (
        defs.resolve_asset_graph().get(dg.AssetKey("model_candidates")).automation_condition is None
    )
    assert defs.resolve_job_def("refresh").tags[automation.TAG_RECIPE]
    assert defs.resolve_job_def("demo").tags[automation.TAG_RECIPE]


def test_sft_change_sensor_trains_only_past_the_threshold(instance):
    sft_dataset = dg.AssetKey("sft_dataset")

    def dataset(counts: dict[str, int]) -> None:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(sft_dataset, metadata={"by_source": counts})
        )

    sensor = automation.build_sft_sensor(OperationsSettings(sft_change_fraction=0.1))
    dataset({"oasst": 100, "flan": 100})
    assert isinstance(sensor(dg.build_sensor_context(instance=instance)), dg.SkipReason)
    instance.report_runless_asset_event(dg.AssetMaterialization(dg.AssetKey("sft_checkpoint")))
    dataset({"oasst": 105, "flan": 100})  # 2.5%: below the threshold
    below = sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(below, dg.SkipReason) and "2.5%" in below.skip_message
    dataset({"oasst": 100, "flan": 75, "chat": 10})  # 35 of 200 rows moved
    request = sensor(dg.build_sensor_context(instance=instance))
    keys = {k.to_user_string() for k in request.asset_selection}
    assert "sft_checkpoint" in keys and "base_checkpoint" not in keys
    assert request.run_config["resources"]["recipe"]["config"]["path"] == "recipes/tiny-cpu.yaml"


def reexecution_job() -> dg.JobDefinition:
    """The ingest part of a refresh, run in-process (rebuilt by dg.reconstructable)."""
    job = dg.define_asset_job(
        "ingest_refresh",
        selection=[*ROOTS, ingest.raw_drops.key, *COMBINE],
        partitions_def=DROPS,
        executor_def=dg.in_process_executor,
    )
    out = os.environ["POSTFORGE_TEST_OUTPUTS"]
    return dg.Definitions(
        assets=INGEST_ASSETS, jobs=[job], resources=resources(Path(out))
    ).resolve_job_def("ingest_refresh")


def test_a_failed_refresh_resumes_from_the_failed_step(instance, drops, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("POSTFORGE_TEST_OUTPUTS", str(out))
    instance.add_dynamic_partitions(DROPS.name, ["bad"])
    run_config = {"ops": {"raw_drops": {"config": {"root": str(drops)}}}}
    job = dg.reconstructable(reexecution_job)
    tags = {"dagster/partition": "bad"}
    with dg.execute_job(job, instance, run_config, tags=tags) as failed:
        assert not failed.success
        done = {e.asset_key.to_user_string() for e in failed.get_asset_materialization_events()}
        assert {"raw_oasst", "raw_flan", "raw_pretrain"} <= done
        assert "raw_drops" not in done and "conversations" not in done
        failed_id = failed.run_id

    (drops / "bad" / "oasst_trees.jsonl").unlink()  # the fix: the empty file is removed
    write_jsonl(drops / "bad" / "chat.jsonl", chat_rows("fixed", 3))
    options = dg.ReexecutionOptions.from_failure(failed_id, instance)
    # The UI re-executes with the parent's tags; execute_job needs them passed (the partition).
    with dg.execute_job(job, instance, tags=tags, reexecution_options=options) as resumed:
        assert resumed.success
        redone = {e.asset_key.to_user_string() for e in resumed.get_asset_materialization_events()}
    assert redone == {"raw_drops", "conversations", "preferences_human", "ingest_rejects"}
    combined = read_manifest(out / "conversations").read()
    assert combined.filter(pl.col("source") == "chat").height == 3
