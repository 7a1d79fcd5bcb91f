import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg

from pipelines.definitions import defs

ROOT = Path(__file__).resolve().parents[1]


def test_dg_check_defs_loads_the_project(tmp_path):
    shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    dg_cli = Path(sys.executable).with_name("dg")
    done = subprocess.run(
        [str(dg_cli), "check", "defs"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All definitions loaded successfully" in done.stdout + done.stderr


def test_the_graph_has_the_designed_shape():
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert {"raw_oasst", "raw_flan", "raw_hh", "raw_ultrafeedback", "raw_pretrain"} <= keys
    assert {"conversations", "preferences_human", "length_profile", "project_tokenizer"} <= keys
    parents = {p.to_user_string() for p in graph.get(dg.AssetKey("conversations")).parent_keys}
    assert {"raw_oasst", "raw_flan", "raw_hh", "raw_ultrafeedback"} <= parents


def test_instance_config_queues_runs_and_limits_pools(tmp_path):
    shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    old = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(tmp_path)
    try:
        instance = dg.DagsterInstance.from_config(str(tmp_path))
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
        assert not instance.telemetry_enabled
    finally:
        if old is None:
            os.environ.pop("DAGSTER_HOME")
        else:
            os.environ["DAGSTER_HOME"] = old


def test_every_job_runs_its_steps_in_one_process():
    # What the UI's Materialize button, the schedule and the sensor launch: a process per step
    # would re-import the project for each of a refresh's steps.
    jobs = [defs.resolve_implicit_global_asset_job_def()]
    jobs += [defs.resolve_job_def(name) for name in ("demo", "refresh", "ingest_drop", "train")]
    assert {job.executor_def.name for job in jobs} == {"in_process"}


def test_the_demo_instance_never_replaces_a_users_own_instance_config(tmp_path, monkeypatch):
    from pipelines import instance as project_instance

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "mine"))
    (tmp_path / "mine").mkdir()
    own = tmp_path / "mine" / "dagster.yaml"
    own.write_text("telemetry:\n  enabled: true\n")
    # the demo uses the project's instance, the one `make ui` shows, not DAGSTER_HOME's
    monkeypatch.setattr(project_instance, "PROJECT_HOME", tmp_path / "project-home")
    home = project_instance.ensure_dagster_home()
    assert home == tmp_path / "project-home"
    assert (home / "dagster.yaml").read_bytes() == project_instance.INSTANCE_CONFIG.read_bytes()
    # a folder named explicitly gets the project's config only when it has none
    assert project_instance.ensure_dagster_home(tmp_path / "mine") == tmp_path / "mine"
    assert own.read_text() == "telemetry:\n  enabled: true\n"
