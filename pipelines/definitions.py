"""The one Definitions: every asset and check, bound to resources from config and environment.

``POSTFORGE_OUTPUTS`` moves all outputs (a local folder or an fsspec URL); the default is the
git-ignored ``outputs/`` in the project.
"""

from __future__ import annotations

import os

import dagster as dg

from assets import alignment, curate, feedback, ingest, lineage, profile, training
from assets.io_manager import PolarsParquetIOManager
from assets.resources import PROJECT_ROOT, StorageResource
from pipelines import automation

OUTPUTS = os.environ.get("POSTFORGE_OUTPUTS", str(PROJECT_ROOT / "outputs"))


def judge_resource() -> feedback.JudgeResource:
    """The offline judge unless POSTFORGE_JUDGE_URL names an endpoint. The URL and the key
    (POSTFORGE_JUDGE_API_KEY) are bound through EnvVar and read at run time: a URL may carry a
    credential, and a plain value would be stored in every run's job snapshot and shown in the
    UI's resource view."""
    if not os.environ.get("POSTFORGE_JUDGE_URL"):
        return feedback.JudgeResource()
    return feedback.JudgeResource(
        backend="openai",
        base_url=dg.EnvVar("POSTFORGE_JUDGE_URL"),
        model=os.environ.get("POSTFORGE_JUDGE_MODEL", "judge"),
        api_key=dg.EnvVar("POSTFORGE_JUDGE_API_KEY")
        if "POSTFORGE_JUDGE_API_KEY" in os.environ
        else None,
    )


modules = [ingest, profile, curate, training, feedback, alignment, lineage]
# Retry policies and automation conditions (pipelines/automation.py) on the loaded assets.
all_assets = automation.apply_operations(dg.load_assets_from_modules(modules))
all_checks = dg.load_asset_checks_from_modules(modules)

demo_job = dg.define_asset_job(
    "demo",
    selection=dg.AssetSelection.all(),
    description="Everything make demo materializes, on the embedded data.",
    tags=automation.run_tags(automation.SETTINGS.recipe),
)

# One process runs a run's steps. The default, a process per step, re-imports this project for
# every step (2 s here) and buys nothing: curation steps use every core through polars already,
# and training steps are subprocesses of their own (Pipes). On a 2-core machine the demo graph
# took about 90 s of process starts against 10 s in process, and a refresh's 8 steps about 20 s
# of them; pools (the gpu pool) still hold in process.
defs = dg.Definitions(
    executor=dg.in_process_executor,
    assets=all_assets,
    asset_checks=all_checks,
    jobs=[demo_job],
    schedules=automation.schedules,
    sensors=automation.sensors,
    resources={
        "io_manager": PolarsParquetIOManager(base_dir=OUTPUTS),
        "storage": StorageResource(base_dir=OUTPUTS),
        "pipes_subprocess_client": dg.PipesSubprocessClient(cwd=str(PROJECT_ROOT)),
        "judge": judge_resource(),
        # One recipe per run, changeable in the launch form; automated runs are tagged with it.
        "recipe": training.RecipeResource(path=automation.SETTINGS.recipe),
    },
)
