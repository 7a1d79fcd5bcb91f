"""The automation around scheduled refreshes, on real Dagster instances: what a tick selects,
which drops stay pending after a refresh that stopped part-way (a killed worker, a combine that
failed half-way and was re-run), runs whose worker died, and the drop sensor's idea of a new
drop (content, not mtime; not one a run is ingesting now)."""

from __future__ import annotations

import functools
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

import assets.ingest as ingest_module
from assets.ingest import RAW_SOURCES, raw_drops
from assets.io_manager import PolarsParquetIOManager
from assets.partitions import DROP_CONTENT, DROPS, drop_content_hash, find_drops, is_ready_drop
from assets.resources import PROJECT_ROOT, StorageResource
from curation.storage import read_manifest
from pipelines import automation
from pipelines.automation import OperationsSettings
from pipelines.definitions import all_assets, all_checks, defs
from pipelines.instance import ensure_dagster_home

GROUPS = ("ingest", "profile", "curate")
INGEST_ASSETS = automation.apply_operations(dg.load_assets_from_modules([ingest_module]))
CURATED = dg.AssetKey("curated_conversations")


def chat(prefix: str, count: int) -> list[dict]:
    return [
        {
            "id": f"{prefix}-{i}",
            "messages": [
                {"role": "user", "content": f"Drop {prefix}, question {i}: name a colour {i}."},
                {
                    "role": "assistant",
                    "content": f"Colour number {i} of drop {prefix} is a shade of "
                    f"{['red', 'green', 'blue', 'teal'][i % 4]} with tone {i * 7}.",
                },
            ],
        }
        for i in range(count)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def keys_of(request: dg.RunRequest) -> set[str]:
    return {k.to_user_string() for k in request.asset_selection}


# ---------------------------------------------------------------- the gpu pool


def test_a_refresh_never_selects_the_gpu_pool_even_once_checkpoints_exist(instance):
    graph = defs.resolve_asset_graph()
    gpu = {k for k in graph.get_all_asset_keys() if "gpu" in (graph.get(k).pools or set())}
    assert dg.AssetKey("model_candidates") in gpu
    # Every checkpoint and the candidates exist: the feedback that reads them may refresh.
    for key in gpu | set(automation.selection_keys(automation.TRAINING)):
        instance.report_runless_asset_event(dg.AssetMaterialization(key))
    selected = set(automation.refresh_keys(instance))
    assert not selected & gpu
    assert {dg.AssetKey("candidate_sets"), dg.AssetKey("ai_rankings")} <= selected
    job_keys = defs.resolve_job_def("refresh").asset_layer.executable_asset_keys
    assert not set(job_keys) & gpu


# ---------------------------------------------------------------- drops that stopped part-way

CHILD = """
import sys, time
import dagster as dg
import assets.curate as curate
from pipelines import automation
from pipelines.definitions import defs

home, drop, root = sys.argv[1:4]
real = curate.curate_parts

def stalled(*args, **kwargs):
    print("CURATING", flush=True)
    time.sleep(120)
    return real(*args, **kwargs)

curate.curate_parts = stalled
instance = dg.DagsterInstance.local_temp(home)
defs.resolve_job_def("refresh").execute_in_process(
    instance=instance,
    partition_key=drop,
    asset_selection=automation.refresh_keys(instance),
    run_config={"ops": {"raw_drops": {"config": {"root": root}}}},
    tags={"dagster/max_runtime": "1"},
)
"""


class Scene:
    """A real instance and outputs under one folder, with small embedded sources (so the first
    refresh is quick) and drops under ``drops/``."""

    def __init__(self, root: Path):
        self.root, self.drops, self.out = root, root / "drops", root / "out"
        self.home = root / "home"
        self.home.mkdir(parents=True)
        self.instance = dg.DagsterInstance.local_temp(str(self.home))
        self.settings = OperationsSettings(drops_root=str(self.drops))
        self.config = {"ops": {"raw_drops": {"config": {"root": str(self.drops)}}}}
        small = root / "sources"
        small.mkdir()
        sources = {name: paths for name, (_, paths, _) in RAW_SOURCES.items()}
        sources["raw_pretrain"] = ["data/samples/pretrain.jsonl"]
        for name, paths in sources.items():
            mine = []
            for path in paths:
                target = small / Path(path).name
                with open(PROJECT_ROOT / path, encoding="utf-8") as lines:
                    target.write_text("".join(itertools.islice(lines, 40)), encoding="utf-8")
                mine.append(str(target))
            self.config["ops"][name] = {"config": {"paths": mine}}

    def materialize(self, selection, drop: str | None = None, tags=None, keys=None):
        if drop is not None and drop not in self.instance.get_dynamic_partitions(DROPS.name):
            self.instance.add_dynamic_partitions(DROPS.name, [drop])
        chosen = set(keys) if keys is not None else selection.resolve(defs.resolve_asset_graph())
        ops = {k: v for k, v in self.config["ops"].items() if dg.AssetKey(k) in chosen}
        return dg.materialize(
            [*all_assets, *all_checks],
            selection=list(chosen),
            partition_key=drop,
            instance=self.instance,
            resources=self.resources(),
            run_config={"ops": ops},
            tags=tags,
            raise_on_error=False,
        )

    def run_request(self, request: dg.RunRequest):
        """What the daemon launches for a schedule's request: the refresh job, subset."""
        chosen = set(request.asset_selection)
        ops = {k: v for k, v in self.config["ops"].items() if dg.AssetKey(k) in chosen}
        return self.refresh_job.execute_in_process(
            run_config={"ops": ops},
            instance=self.instance,
            partition_key=request.partition_key,
            asset_selection=request.asset_selection,
            tags=request.tags,
            raise_on_error=False,
        )

    @functools.cached_property
    def refresh_job(self) -> dg.JobDefinition:
        """The project's refresh job, bound to this scene's outputs."""
        return dg.Definitions(
            assets=all_assets,
            asset_checks=all_checks,
            jobs=[automation.refresh_job],
            resources=self.resources(),
            executor=dg.in_process_executor,
        ).resolve_job_def("refresh")

    def resources(self) -> dict:
        return {
            **defs.resources,
            "io_manager": PolarsParquetIOManager(base_dir=str(self.out)),
            "storage": StorageResource(base_dir=str(self.out)),
        }

    def curated_rows(self, prefix: str) -> int:
        curated = read_manifest(self.out / "curated_conversations").read()
        return curated.filter(pl.col("source_id").str.starts_with(f"{prefix}-")).height


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """d1 refreshed; d2's combine fails after storing ``conversations`` and the failed step is
    re-run (green, d2 not curated: the e7 audit); the schedule's next tick and its run. Then d3's
    refresh is killed (SIGKILL) during curation; the next tick and its run."""
    scene = Scene(tmp_path_factory.mktemp("stopped"))
    seen: dict = {}
    write_jsonl(scene.drops / "d1" / "chat.jsonl", chat("d1", 6))
    assert scene.materialize(dg.AssetSelection.groups(*GROUPS), "d1").success
    downstream = dg.AssetSelection.assets(raw_drops.key).downstream() & dg.AssetSelection.groups(
        *GROUPS
    )

    write_jsonl(scene.drops / "d2" / "chat.jsonl", chat("d2", 4))
    real = ingest_module._combine

    def failing(context, key, *args, **kwargs):
        if key.to_user_string() == "ingest_rejects":
            raise OSError("disk hiccup while writing ingest_rejects")
        return real(context, key, *args, **kwargs)

    ingest_module._combine = failing
    try:
        seen["d2 failed"] = scene.materialize(downstream, "d2")
    finally:
        ingest_module._combine = real
    # Re-executed from the failed step: the drop's tags, raw_drops not run again.
    rerun = downstream - dg.AssetSelection.assets(raw_drops.key)
    seen["d2 rerun"] = scene.materialize(rerun, tags={"dagster/partition": "d2"})
    seen["d2 rows before"] = scene.curated_rows("d2")
    seen["d2 tick"] = automation.refresh_tick(scene.instance, scene.settings)
    for request in seen["d2 tick"]:
        seen.setdefault("d2 runs", []).append(scene.run_request(request))
    seen["d2 rows after"] = scene.curated_rows("d2")
    seen["pending after d2"] = automation.pending_drops(scene.instance, str(scene.drops))

    write_jsonl(scene.drops / "d3" / "chat.jsonl", chat("d3", 5))
    scene.instance.add_dynamic_partitions(DROPS.name, ["d3"])
    env = {
        **os.environ,
        "POSTFORGE_OUTPUTS": str(scene.out),
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(scene.home), "d3", str(scene.drops)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        for line in child.stdout:
            if "CURATING" in line:
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    (killed,) = scene.instance.get_runs(dg.RunsFilter(tags={"dagster/partition": "d3"}))
    seen["killed"] = killed
    time.sleep(1.1)  # past the killed run's dagster/max_runtime of 1 s
    seen["d3 pending"] = automation.pending_drops(scene.instance, str(scene.drops))
    seen["d3 tick"] = automation.refresh_tick(scene.instance, scene.settings)
    for request in seen["d3 tick"]:
        seen.setdefault("d3 runs", []).append(scene.run_request(request))
    seen["d3 rows"] = scene.curated_rows("d3")
    seen["last tick"] = automation.refresh_tick(scene.instance, scene.settings)
    return seen


def test_a_combine_that_failed_and_was_rerun_leaves_the_drop_pending_until_curated(stopped):
    assert not stopped["d2 failed"].success and stopped["d2 rerun"].success
    assert stopped["d2 rows before"] == 0  # green, yet d2 is not curated (the audit's e7)
    (request,) = stopped["d2 tick"]
    assert request.partition_key == "d2" and request.tags[automation.TAG_DROP] == "d2"
    selected = keys_of(request)
    # Not read again, and not the table that already holds it (it would be left as stored
    # and skip curation again); what was not written since the ingest is.
    assert "raw_drops" not in selected and "conversations" not in selected
    assert {"curated_conversations", "sft_dataset", "prompt_dataset"} <= selected
    assert all(run.success for run in stopped["d2 runs"])
    assert stopped["d2 rows after"] == 4
    assert stopped["pending after d2"] == []


def test_a_killed_refresh_does_not_block_the_schedule_and_its_drop_is_curated(stopped):
    killed = stopped["killed"]
    assert killed.status == dg.DagsterRunStatus.STARTED  # the dead worker left it so
    assert stopped["d3 pending"] == ["d3"]  # ingested before the kill, not curated
    (request,) = stopped["d3 tick"]
    assert request.partition_key == "d3"
    assert "raw_drops" not in keys_of(request)
    assert "curated_conversations" in keys_of(request)
    assert all(run.success for run in stopped["d3 runs"])
    assert stopped["d3 rows"] == 5
    last = stopped["last tick"]
    assert isinstance(last, dg.SkipReason) and "no new or unfinished drop" in last.skip_message


def stub_job(name: str) -> dg.JobDefinition:
    """A run of the project's job ``name`` as the instance records it (runs are matched by job
    name; building the whole refresh job for a run record takes seconds)."""
    job = dg.define_asset_job(name, selection=[raw_drops.key], partitions_def=DROPS)
    return dg.Definitions(assets=[raw_drops], jobs=[job]).resolve_job_def(name)


def test_a_running_refresh_blocks_until_past_its_maximum_runtime(instance, tmp_path):
    write_jsonl(tmp_path / "drops" / "d1" / "chat.jsonl", chat("d1", 2))
    settings = OperationsSettings(drops_root=str(tmp_path / "drops"), refresh_max_runtime_s=60)
    job = stub_job("refresh")
    running = instance.create_run_for_job(job_def=job, status=dg.DagsterRunStatus.STARTED)
    skipped = automation.refresh_tick(instance, settings)
    assert isinstance(skipped, dg.SkipReason) and running.run_id in skipped.skip_message
    # The job's own tag carries the deployment's limit (6 h unless set).
    tags = defs.resolve_job_def("refresh").tags
    assert tags["dagster/max_runtime"] == str(automation.SETTINGS.refresh_max_runtime_s)
    instance.report_run_failed(running)
    stale = instance.create_run_for_job(
        job_def=job, status=dg.DagsterRunStatus.STARTED, tags={"dagster/max_runtime": "0.5"}
    )
    time.sleep(0.6)
    (request,) = automation.refresh_tick(instance, settings)
    assert request.partition_key == "d1"
    # A run not started yet has no worker to lose: it blocks however long it waits.
    instance.report_run_failed(stale)
    instance.create_run_for_job(
        job_def=job, status=dg.DagsterRunStatus.NOT_STARTED, tags={"dagster/max_runtime": "0.1"}
    )
    time.sleep(0.2)
    assert isinstance(automation.refresh_tick(instance, settings), dg.SkipReason)


# ---------------------------------------------------------------- several drops, one tick


def test_a_tick_requests_every_pending_drop_in_the_drops_lane(instance, tmp_path):
    drops = tmp_path / "drops"
    for name in ("2026-11-27a", "2026-11-27b", "2026-11-27c"):
        write_jsonl(drops / name / "chat.jsonl", chat(name, 2))
    settings = OperationsSettings(drops_root=str(drops))
    schedule = automation.build_refresh_schedule(settings)
    context = dg.build_schedule_context(instance=instance, repository_def=defs.get_repository_def())
    requests = schedule.evaluate_tick(context).run_requests
    assert [r.partition_key for r in requests] == ["2026-11-27a", "2026-11-27b", "2026-11-27c"]
    # Inputs a fresh instance lacks are materialized by the first run only.
    assert "raw_oasst" in keys_of(requests[0]) and "raw_oasst" not in keys_of(requests[1])
    assert all("raw_drops" in keys_of(r) for r in requests)
    assert [r.tags[automation.TAG_DROP_CONTENT] for r in requests] == [
        drop_content_hash(drops / r.partition_key) for r in requests
    ]
    # The lane that makes them run one after the other is on every refresh run.
    assert defs.resolve_job_def("refresh").tags[automation.TAG_LANE] == automation.DROP_LANE


def test_the_instance_config_runs_the_drops_lane_one_at_a_time_and_monitors_runs(tmp_path):
    home = ensure_dagster_home(tmp_path / "home")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
        assert {"key": automation.TAG_LANE, "value": automation.DROP_LANE, "limit": 1} in limits
        assert instance.run_monitoring_enabled
        # The default launcher cannot resume a run; monitoring must not try.
        assert instance.run_monitoring_max_resume_run_attempts == 0
        assert instance.run_monitoring_max_runtime_seconds == 0  # only tagged runs are cut


# ---------------------------------------------------------------- the drop sensor


def ingest_drop(instance, root: Path, out: Path, drop: str, tags=None):
    if drop not in instance.get_dynamic_partitions(DROPS.name):
        instance.add_dynamic_partitions(DROPS.name, [drop])
    return dg.materialize(
        INGEST_ASSETS,
        selection=[raw_drops.key],
        partition_key=drop,
        instance=instance,
        resources={"io_manager": PolarsParquetIOManager(base_dir=str(out))},
        run_config={"ops": {"raw_drops": {"config": {"root": str(root)}}}},
        tags=tags,
        raise_on_error=False,
    )


def requested(result) -> list[str]:
    if isinstance(result, dg.SkipReason) or not result.run_requests:
        return []
    return [r.partition_key for r in result.run_requests]


def test_the_sensor_requests_a_drop_once_per_content(instance, tmp_path):
    root, out = tmp_path / "drops", tmp_path / "out"
    settings = OperationsSettings(drops_root=str(root))
    write_jsonl(root / "d1" / "chat.jsonl", chat("d1", 3))
    write_jsonl(root / "d2" / "chat.jsonl", chat("d2", 2))
    # d1 ingested by the schedule (its run carries the content it read), d2 by hand, before
    # the sensor was switched on.
    scheduled = {automation.TAG_DROP_CONTENT: drop_content_hash(root / "d1")}
    assert ingest_drop(instance, root, out, "d1", scheduled).success
    by_hand = ingest_drop(instance, root, out, "d2")
    assert by_hand.success
    (recorded,) = by_hand.asset_materializations_for_node("raw_drops")
    assert recorded.metadata[DROP_CONTENT].value == drop_content_hash(root / "d2")
    first = automation.drop_sensor_tick(instance, None, settings)
    assert requested(first) == []

    # A touch and an rsync of the same bytes change mtimes, not content.
    os.utime(root / "d1" / "chat.jsonl", (time.time() + 5, time.time() + 5))
    shutil.copy2(root / "d2" / "chat.jsonl", tmp_path / "copy.jsonl")
    (root / "d2" / "chat.jsonl").write_bytes((tmp_path / "copy.jsonl").read_bytes())
    touched = automation.drop_sensor_tick(instance, first.cursor, settings)
    assert requested(touched) == []
    # A fresh cursor after the touch still knows both: d1 by the content its run's tags name,
    # d2 (ingested by hand, no tags) by the content hash raw_drops records in its metadata.
    assert requested(automation.drop_sensor_tick(instance, None, settings)) == []

    write_jsonl(root / "d1" / "chat.jsonl", chat("d1", 4))  # a real change
    changed = automation.drop_sensor_tick(instance, touched.cursor, settings)
    (request,) = changed.run_requests
    assert request.partition_key == "d1"
    assert request.tags[automation.TAG_DROP_CONTENT] == drop_content_hash(root / "d1")
    assert request.run_key.startswith(f"d1:{drop_content_hash(root / 'd1')}:")

    # Ingested, then rolled back to the content d1 held first: requested again, under a run
    # key no earlier request used (Dagster never runs a run key twice).
    original = (root / "d1" / "chat.jsonl").read_bytes()
    assert ingest_drop(instance, root, out, "d1", dict(request.tags)).success
    write_jsonl(root / "d1" / "chat.jsonl", chat("d1", 3))
    rolled_back = automation.drop_sensor_tick(instance, changed.cursor, settings)
    (again,) = rolled_back.run_requests
    assert (root / "d1" / "chat.jsonl").read_bytes() != original
    assert again.tags[automation.TAG_DROP_CONTENT] == scheduled[automation.TAG_DROP_CONTENT]
    assert again.run_key != request.run_key
    first_key = f"d1:{scheduled[automation.TAG_DROP_CONTENT]}:0"  # as if the sensor had sent it
    assert again.run_key != first_key


def test_a_drop_being_ingested_or_failed_on_the_same_files_is_not_requested_again(
    instance, tmp_path
):
    root = tmp_path / "drops"
    write_jsonl(root / "d1" / "chat.jsonl", chat("d1", 2))
    instance.add_dynamic_partitions(DROPS.name, ["d1"])
    ingesting = instance.create_run_for_job(
        job_def=stub_job("ingest_drop"),
        tags={"dagster/partition": "d1"},
        status=dg.DagsterRunStatus.STARTED,
    )
    settings = OperationsSettings(drops_root=str(root))
    tick = automation.refresh_tick(instance, settings)
    assert isinstance(tick, dg.SkipReason)  # the sensor's ingest has it
    sensed = automation.drop_sensor_tick(instance, None, settings)
    assert isinstance(sensed, dg.SkipReason)  # and d1 is not remembered as seen
    # Once that run is over (here: it failed before storing anything) the schedule leaves the
    # drop to a person, as for any failed ingest; the sensor cannot tell which content that run
    # read (it carries no content tag) and tries once, tagged, so that it is the last time.
    instance.report_run_failed(ingesting)
    assert isinstance(automation.refresh_tick(instance, settings), dg.SkipReason)
    again = automation.drop_sensor_tick(instance, None, settings)
    (request,) = again.run_requests
    assert request.partition_key == "d1" and automation.TAG_DROP_CONTENT in request.tags
    tagged_failure = instance.create_run_for_job(
        job_def=stub_job("ingest_drop"),
        tags={"dagster/partition": "d1", **request.tags},
        status=dg.DagsterRunStatus.STARTED,
    )
    instance.report_run_failed(tagged_failure)
    assert requested(automation.drop_sensor_tick(instance, None, settings)) == []
    write_jsonl(root / "d1" / "chat.jsonl", chat("d1", 3))  # the fix
    assert requested(automation.drop_sensor_tick(instance, None, settings)) == ["d1"]
    (fixed,) = automation.refresh_tick(instance, settings)
    assert fixed.partition_key == "d1"


def test_a_folder_holding_only_a_half_copied_file_is_not_a_drop(tmp_path):
    root = tmp_path / "drops"
    (root / "copying").mkdir(parents=True)
    (root / "copying" / "_chat.jsonl").write_text('{"messages": []}\n', encoding="utf-8")
    (root / "copying" / ".flan.jsonl").write_text('{"inputs": "a"}\n', encoding="utf-8")
    assert not is_ready_drop(root / "copying") and find_drops(root) == []
    write_jsonl(root / "copying" / "chat.jsonl", chat("c", 1))  # the rename once complete
    assert find_drops(root) == ["copying"]
    settled = drop_content_hash(root / "copying")
    # Files still being copied in are not part of what the drop is.
    (root / "copying" / "_chat.jsonl").write_text("changed while copying\n", encoding="utf-8")
    (root / "copying" / "_more" / "flan.jsonl").parent.mkdir()
    (root / "copying" / "_more" / "flan.jsonl").write_text("{}\n", encoding="utf-8")
    assert drop_content_hash(root / "copying") == settled
    write_jsonl(root / "copying" / "chat.jsonl", chat("c", 2))
    assert drop_content_hash(root / "copying") != settled


def test_settings_bound_the_maximum_runtime():
    assert replace(OperationsSettings(), refresh_max_runtime_s=60).refresh_max_runtime_s == 60
    env = {"POSTFORGE_REFRESH_MAX_RUNTIME_S": "7200"}
    assert OperationsSettings.from_env(env).refresh_max_runtime_s == 7200
    with pytest.raises(automation.SettingsError, match="POSTFORGE_REFRESH_MAX_RUNTIME_S"):
        OperationsSettings.from_env({"POSTFORGE_REFRESH_MAX_RUNTIME_S": "0"})
