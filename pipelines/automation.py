"""Keeping the graph fresh without paying twice: schedules, sensors, automation conditions,
retry policies and run tags, applied to the assets that pipelines/definitions.py loads.

- New drops land in a watched folder; ``new_drop_sensor`` registers each as a partition of
  ``raw_drops`` and ingests it on its own. ``daily_refresh`` is the safety net when sensors are
  off: once a day it ingests the oldest drop not yet ingested and refreshes everything
  downstream, and skips (never stacks) while the previous refresh is still going.
- Curation, profiles and AI feedback are eager: they update when an input changes. A drop whose
  ingest failed does not hold them back (the combine reads the drops that were ingested).
- Training runs only when asked, or when ``sft_change_sensor`` sees the SFT dataset move by
  more than a configured share of rows since the last SFT checkpoint.
- Judge calls and ingest I/O retry with backoff; training never retries (a failed stage is
  resumed from its last save by hand, not re-run three times on a busy accelerator).

Settings come from the environment (the same way ``POSTFORGE_OUTPUTS`` moves outputs), so a
deployment changes the cron or the time zone without touching code.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dagster as dg
from dagster._utils.schedules import is_valid_cron_string

from assets.ingest import RAW_KEYS, raw_drops
from assets.partitions import DEFAULT_DROPS_ROOT, DROPS, drops_root, find_drops
from assets.resources import PROJECT_ROOT
from assets.training import RECIPE_TAG

# Training and the alignment stages after it (reward model, DPO, PPO/GRPO/RLOO): run when asked.
TRAINING_GROUPS = ("training", "alignment")
GPU_POOL = "gpu"
FEEDBACK_GROUP = "feedback"
INGEST_GROUP = "ingest"
ROOT_KEYS = [*RAW_KEYS, dg.AssetKey("raw_pretrain")]
TAG_RECIPE = RECIPE_TAG  # set again by the recipe resource when a run overrides the recipe
TAG_COMMIT = "postforge/git_commit"
TAG_TRIGGER = "postforge/trigger"
TAG_DROP = "postforge/drop"

# Judge endpoints rate-limit and time out; a few spaced retries ride that out. The judge client
# already retries single requests, this covers a step that still failed as a whole.
JUDGE_RETRY = dg.RetryPolicy(
    max_retries=3, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)
# Ingest reads files that may sit on network or object storage. A drop that is unreadable as
# such fails with allow_retries=False (assets/ingest.py), so only I/O errors are retried.
INGEST_RETRY = dg.RetryPolicy(max_retries=2, delay=2, backoff=dg.Backoff.EXPONENTIAL)


class SettingsError(ValueError):
    """An operations setting with a bad value, naming the variable."""


@dataclass(frozen=True)
class OperationsSettings:
    """``refresh_cron``/``timezone``: when ``daily_refresh`` ticks (POSTFORGE_REFRESH_CRON,
    POSTFORGE_TIMEZONE; an IANA zone, so the tick follows daylight saving).
    ``drops_root``: the watched folder (POSTFORGE_DROPS).
    ``sft_change_fraction``: share of SFT rows (added, removed, or moved between sources) since
    the last SFT checkpoint that triggers training (POSTFORGE_SFT_CHANGE_FRACTION).
    ``recipe``: the training recipe automated runs use and are tagged with (POSTFORGE_RECIPE).
    ``sensor_interval_s``: how often the sensors look (POSTFORGE_SENSOR_INTERVAL_S)."""

    refresh_cron: str = "0 3 * * *"
    timezone: str = "UTC"
    drops_root: str = DEFAULT_DROPS_ROOT
    sft_change_fraction: float = 0.1
    recipe: str = "recipes/tiny-cpu.yaml"
    sensor_interval_s: int = 60

    def __post_init__(self) -> None:
        if not is_valid_cron_string(self.refresh_cron):
            raise SettingsError(f"POSTFORGE_REFRESH_CRON: {self.refresh_cron!r} is not a cron")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            zone = self.timezone
            raise SettingsError(f"POSTFORGE_TIMEZONE: unknown time zone {zone!r}") from None
        if not 0 < self.sft_change_fraction <= 1:
            raise SettingsError(
                f"POSTFORGE_SFT_CHANGE_FRACTION: {self.sft_change_fraction} not in (0, 1]"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> OperationsSettings:
        def number(name: str, default: float, kind: type) -> Any:
            raw = env.get(name)
            try:
                return default if raw is None else kind(raw)
            except ValueError:
                raise SettingsError(f"{name}: {raw!r} is not a {kind.__name__}") from None

        return cls(
            refresh_cron=env.get("POSTFORGE_REFRESH_CRON", cls.refresh_cron),
            timezone=env.get("POSTFORGE_TIMEZONE", cls.timezone),
            drops_root=env.get("POSTFORGE_DROPS", cls.drops_root),
            sft_change_fraction=number(
                "POSTFORGE_SFT_CHANGE_FRACTION", cls.sft_change_fraction, float
            ),
            recipe=env.get("POSTFORGE_RECIPE", cls.recipe),
            sensor_interval_s=number("POSTFORGE_SENSOR_INTERVAL_S", cls.sensor_interval_s, int),
        )


# ---------------------------------------------------------------- run tags


def git_commit(root: Path = PROJECT_ROOT) -> str:
    """The checked-out commit, ``-dirty`` when the tree has changes; ``unknown`` outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def run_tags(recipe: str, commit: str | None = None, **extra: str) -> dict[str, str]:
    """What every automated run carries, so a run in the UI says which recipe and code made it."""
    return {TAG_RECIPE: recipe, TAG_COMMIT: commit or git_commit(), **extra}


# ---------------------------------------------------------------- per-asset policies


def _groups(asset: dg.AssetsDefinition) -> set[str]:
    return {asset.specs_by_key[key].group_name or "default" for key in asset.keys}


def _names(asset: dg.AssetsDefinition) -> list[str]:
    return [key.to_user_string() for key in asset.keys]


def retry_policy_for(asset: dg.AssetsDefinition) -> dg.RetryPolicy | None:
    """Judge steps (feedback assets named ``*rankings*``) and raw-file ingest retry; training
    never does."""
    groups = _groups(asset)
    if groups & set(TRAINING_GROUPS) or asset.op.pool == GPU_POOL:
        return None
    if FEEDBACK_GROUP in groups and any("rankings" in name for name in _names(asset)):
        return JUDGE_RETRY
    if INGEST_GROUP in groups and set(asset.keys) & {*ROOT_KEYS, raw_drops.key}:
        return INGEST_RETRY
    return None


def with_retry_policy(asset: dg.AssetsDefinition, policy: dg.RetryPolicy) -> dg.AssetsDefinition:
    """The same asset whose op retries with ``policy``. Dagster has no public setter for a loaded
    asset's retry policy, so the op is rebuilt with the public constructor and swapped in the way
    ``AssetsDefinition.with_attributes`` swaps specs."""
    op = asset.op
    retried = dg.OpDefinition(
        compute_fn=op.compute_fn,
        name=op.name,
        ins={d.name: dg.In.from_definition(d) for d in op.input_defs},
        outs={d.name: dg.Out.from_definition(d) for d in op.output_defs},
        config_schema=op.config_schema,
        description=op.description,
        tags=op.tags,
        required_resource_keys=op.required_resource_keys,
        code_version=op.version,
        retry_policy=policy,
        pool=op.pool,
    )
    return asset.__class__.dagster_internal_init(
        **{**asset.get_attributes_dict(), "node_def": retried}
    )


def eager_over_drops() -> dg.AutomationCondition:
    """Eager, except that a drop partition that never got ingested (a failed drop) does not
    count as a missing input: the combine reads the drops that were ingested."""
    condition = dg.AutomationCondition
    return condition.eager().replace(
        "any_deps_missing",
        condition.any_deps_missing().ignore(dg.AssetSelection.assets(raw_drops.key)),
    )


def automation_condition_for(asset: dg.AssetsDefinition) -> dg.AutomationCondition | None:
    """Everything derived from data updates when its inputs change; roots (raw files, pulled by
    sensors and schedules) and training (run when asked, or by ``sft_change_sensor``) do not.
    Anything in the ``gpu`` pool counts as training: sampling candidates from a checkpoint
    (``model_candidates``) costs accelerator time, and re-sampling for a changed batch layout
    would also make the judge re-pay for prompts it has already ranked."""
    if (
        _groups(asset) & set(TRAINING_GROUPS)
        or asset.op.pool == GPU_POOL
        or set(asset.keys) <= {*ROOT_KEYS, raw_drops.key}
    ):
        return None
    return eager_over_drops()


def apply_operations(assets: Sequence[Any]) -> list[Any]:
    """The loaded assets with retry policies and automation conditions set. A condition an asset
    module set itself is kept."""
    applied = []
    for asset in assets:
        if isinstance(asset, dg.AssetsDefinition) and asset.is_executable:
            condition = automation_condition_for(asset)
            specs = asset.specs_by_key
            unset = {k: condition for k in asset.keys if specs[k].automation_condition is None}
            if condition is not None and unset:
                asset = asset.with_attributes(automation_condition=unset)
            policy = retry_policy_for(asset)
            if policy is not None and asset.op.retry_policy is None:
                asset = with_retry_policy(asset, policy)
        applied.append(asset)
    return applied


# ---------------------------------------------------------------- jobs

SETTINGS = OperationsSettings.from_env()

TRAINING = dg.AssetSelection.groups(*TRAINING_GROUPS)
# The job holds what a refresh could need; each schedule tick selects a subset (refresh_keys).
REFRESH_SELECTION = dg.AssetSelection.assets(raw_drops.key).downstream().upstream() - TRAINING

refresh_job = dg.define_asset_job(
    "refresh",
    selection=REFRESH_SELECTION,
    partitions_def=DROPS,
    tags=run_tags(SETTINGS.recipe),
    description="Everything outside training, for one drop; the daily schedule selects only "
    "what the drop changes (and inputs a fresh instance lacks).",
)
ingest_drop_job = dg.define_asset_job(
    "ingest_drop",
    selection=dg.AssetSelection.assets(raw_drops.key),
    partitions_def=DROPS,
    tags=run_tags(SETTINGS.recipe),
    description="One drop ingested; automation carries it downstream.",
)
training_job = dg.define_asset_job(
    "train",
    selection=TRAINING,
    tags=run_tags(SETTINGS.recipe),
    description="The training stages (in the gpu pool, one at a time).",
)


# ---------------------------------------------------------------- schedule


def in_progress_runs(instance: dg.DagsterInstance, job_name: str) -> list[dg.DagsterRun]:
    statuses = [
        dg.DagsterRunStatus.QUEUED,
        dg.DagsterRunStatus.NOT_STARTED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
        dg.DagsterRunStatus.CANCELING,
    ]
    return list(instance.get_runs(dg.RunsFilter(job_name=job_name, statuses=statuses), limit=5))


def failed_drops(instance: dg.DagsterInstance, drops: Sequence[str]) -> set[str]:
    """Drops whose ingest failed: they wait for a person (fix the files, re-execute from the
    failure) instead of failing again on every tick."""
    failed = set()
    for drop in drops:
        runs = instance.get_runs(
            dg.RunsFilter(tags={"dagster/partition": drop}, statuses=[dg.DagsterRunStatus.FAILURE]),
            limit=1,
        )
        if runs:
            failed.add(drop)
    return failed


def register_new_drops(instance: dg.DagsterInstance, root: str) -> list[str]:
    registered = set(instance.get_dynamic_partitions(DROPS.name))
    new = [d for d in find_drops(root) if d not in registered]
    if new:
        instance.add_dynamic_partitions(DROPS.name, new)
    return new


def pending_drops(instance: dg.DagsterInstance, root: str) -> list[str]:
    """Drops on disk, registered, not ingested yet and not failed, oldest registration first."""
    on_disk = set(find_drops(root))
    done = instance.get_materialized_partitions(raw_drops.key)
    waiting = [
        d for d in instance.get_dynamic_partitions(DROPS.name) if d in on_disk and d not in done
    ]
    failed = failed_drops(instance, waiting)
    return [d for d in waiting if d not in failed]


def refresh_tick(
    instance: dg.DagsterInstance, settings: OperationsSettings
) -> dg.RunRequest | dg.SkipReason:
    """One refresh for the oldest pending drop, or the reason there is none this tick."""
    running = in_progress_runs(instance, refresh_job.name)
    if running:
        run = running[0]
        return dg.SkipReason(
            f"refresh run {run.run_id} is still {run.status.value}; this tick is skipped, "
            "not queued behind it"
        )
    register_new_drops(instance, settings.drops_root)
    pending = pending_drops(instance, settings.drops_root)
    if not pending:
        return dg.SkipReason(f"no new drop in {drops_root(settings.drops_root)}")
    drop = pending[0]
    return dg.RunRequest(
        partition_key=drop,
        asset_selection=refresh_keys(instance),
        tags=run_tags(settings.recipe, **{TAG_TRIGGER: "daily_refresh", TAG_DROP: drop}),
    )


def refresh_keys(instance: dg.DagsterInstance) -> list[dg.AssetKey]:
    """What a refresh materializes: the drop and everything downstream of it except training
    and, before the first checkpoint, the AI feedback that samples from it; plus any input of
    those that was never materialized (raw sources, the tokenizer) on a fresh instance."""
    never = dg.AssetSelection.assets(
        *(k for k in selection_keys(dg.AssetSelection.all()) if not _materialized(instance, k))
    )
    training = TRAINING
    blocked = (never & training).downstream() & dg.AssetSelection.groups(FEEDBACK_GROUP)
    core = dg.AssetSelection.assets(raw_drops.key).downstream() - training - blocked
    missing_inputs = (core.upstream() - training - blocked) & never
    return selection_keys(core | missing_inputs)


def _materialized(instance: dg.DagsterInstance, key: dg.AssetKey) -> bool:
    return instance.get_latest_materialization_event(key) is not None


def selection_keys(selection: dg.AssetSelection) -> list[dg.AssetKey]:
    """Keys of ``selection`` in the project graph (resolved lazily: the graph imports us)."""
    from pipelines.definitions import defs

    return sorted(selection.resolve(defs.resolve_asset_graph()))


def build_refresh_schedule(settings: OperationsSettings = SETTINGS) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="daily_refresh",
        job=refresh_job,
        cron_schedule=settings.refresh_cron,
        execution_timezone=settings.timezone,
        description=f"Ingest the oldest new drop in {settings.drops_root} and refresh what "
        "depends on it; skipped while the previous refresh runs.",
    )
    def daily_refresh(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        return refresh_tick(context.instance, settings)

    return daily_refresh


# ---------------------------------------------------------------- sensors


def drop_fingerprint(folder: Path) -> str:
    """Names, sizes and mtimes of a drop's files: a file added or rewritten changes it."""
    entries = sorted(
        f"{p.relative_to(folder)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
        for p in folder.rglob("*")
        if p.is_file()
    )
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16]


def drop_sensor_tick(
    instance: dg.DagsterInstance, cursor: str | None, settings: OperationsSettings
) -> dg.SensorResult | dg.SkipReason:
    """New drop folders (and drops whose files changed) since the cursor: register the new ones
    as partitions and ingest each on its own."""
    seen: dict[str, str] = json.loads(cursor) if cursor else {}
    root = drops_root(settings.drops_root)
    current = {drop: drop_fingerprint(root / drop) for drop in find_drops(root)}
    changed = [d for d, print_ in current.items() if seen.get(d) != print_]
    if not changed:
        return dg.SkipReason(f"no new or changed drop in {root}")
    registered = set(instance.get_dynamic_partitions(DROPS.name))
    new = [d for d in changed if d not in registered]
    requests = [
        dg.RunRequest(
            run_key=f"{drop}:{current[drop]}",
            partition_key=drop,
            tags=run_tags(settings.recipe, **{TAG_TRIGGER: "new_drop_sensor", TAG_DROP: drop}),
        )
        for drop in changed
    ]
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[DROPS.build_add_request(new)] if new else [],
        cursor=json.dumps(current, sort_keys=True),
    )


def build_drop_sensor(settings: OperationsSettings = SETTINGS) -> dg.SensorDefinition:
    @dg.sensor(
        name="new_drop_sensor",
        job=ingest_drop_job,
        minimum_interval_seconds=settings.sensor_interval_s,
        description=f"A new folder (or new files) in {settings.drops_root} becomes a drop "
        "partition and is ingested.",
    )
    def new_drop_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        return drop_sensor_tick(context.instance, context.cursor, settings)

    return new_drop_sensor


SFT_DATASET = dg.AssetKey("sft_dataset")
SFT_CHECKPOINT = dg.AssetKey("sft_checkpoint")


def _by_source(record: Any) -> dict[str, int]:
    materialization = record.asset_materialization
    entry = materialization.metadata.get("by_source") if materialization else None
    return dict(entry.value) if entry is not None else {}


def changed_fraction(now: Mapping[str, int], trained: Mapping[str, int]) -> float:
    """Rows gained or lost per source, over the rows trained on. Counted per source so a
    dataset that swaps one source's rows for another's counts as changed."""
    total = sum(trained.values())
    moved = sum(abs(now.get(s, 0) - trained.get(s, 0)) for s in {*now, *trained})
    return moved / total if total else float("inf")


def sft_change(instance: dg.DagsterInstance) -> tuple[float, int] | None:
    """(changed fraction, storage id of the current SFT dataset) since the SFT dataset the last
    SFT checkpoint trained on; None before the first checkpoint or dataset."""
    checkpoint = instance.fetch_materializations(SFT_CHECKPOINT, limit=1).records
    latest = instance.fetch_materializations(SFT_DATASET, limit=1).records
    if not checkpoint or not latest:
        return None
    trained = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=SFT_DATASET, before_storage_id=checkpoint[0].storage_id),
        limit=1,
    ).records
    if not trained:
        return None
    return changed_fraction(_by_source(latest[0]), _by_source(trained[0])), latest[0].storage_id


def sft_sensor_tick(
    instance: dg.DagsterInstance, settings: OperationsSettings
) -> dg.RunRequest | dg.SkipReason:
    change = sft_change(instance)
    if change is None:
        return dg.SkipReason("no SFT checkpoint yet: the first training is launched by hand")
    fraction, dataset_id = change
    if fraction <= settings.sft_change_fraction:
        return dg.SkipReason(
            f"SFT dataset changed by {fraction:.1%} of rows since the last SFT checkpoint "
            f"(threshold {settings.sft_change_fraction:.1%})"
        )
    return dg.RunRequest(
        run_key=f"sft-dataset-{dataset_id}",
        asset_selection=training_keys_from(SFT_CHECKPOINT),
        run_config=recipe_run_config(settings.recipe),
        tags=run_tags(settings.recipe, **{TAG_TRIGGER: "sft_change_sensor"}),
    )


def training_keys_from(key: dg.AssetKey) -> list[dg.AssetKey]:
    return selection_keys(dg.AssetSelection.assets(key).downstream() & TRAINING)


def recipe_run_config(recipe: str) -> dict:
    """The run's recipe, as the launch form sets it: one resource every stage reads."""
    return {"resources": {"recipe": {"config": {"path": recipe}}}}


def build_sft_sensor(settings: OperationsSettings = SETTINGS) -> dg.SensorDefinition:
    @dg.sensor(
        name="sft_change_sensor",
        job=training_job,
        minimum_interval_seconds=settings.sensor_interval_s,
        description="Trains again once the SFT dataset has changed by more than "
        f"{settings.sft_change_fraction:.0%} of its rows since the last SFT checkpoint.",
    )
    def sft_change_sensor(context: dg.SensorEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        return sft_sensor_tick(context.instance, settings)

    return sft_change_sensor


daily_refresh = build_refresh_schedule()
new_drop_sensor = build_drop_sensor()
sft_change_sensor = build_sft_sensor()
schedules = [daily_refresh]
sensors = [new_drop_sensor, sft_change_sensor]
