"""Keeping the graph fresh without paying twice: schedules, sensors, automation conditions,
retry policies and run tags, applied to the assets that pipelines/definitions.py loads.

- New drops land in a watched folder; ``new_drop_sensor`` registers each as a partition of
  ``raw_drops`` and ingests it on its own, once per content (a ``touch`` or an rsync of the same
  bytes is not a new drop). ``daily_refresh`` is the safety net when sensors or automation are
  off: once a day it requests a refresh for every pending drop (one run each, run one at a time
  through the ``drops`` lane in dagster.yaml), and skips (never stacks) while a run that writes
  what a refresh writes is still going. A drop stays pending until the curated sets and the
  datasets exported from them were written after its ingest, so a refresh killed or failed
  part-way is picked up again. A run past its maximum runtime (a dead worker leaves its run
  STARTED forever) no longer holds the schedule back; run monitoring marks it failed.
- Curation, profiles and AI feedback are eager: they update when an input changes. A drop whose
  ingest failed does not hold them back (the combine reads the drops that were ingested).
- Training runs only when asked, or when ``sft_change_sensor`` sees the SFT dataset move by
  more than a configured share of rows since the last SFT checkpoint. Nothing in the ``gpu``
  pool is ever part of a scheduled refresh (sampling candidates costs accelerator time).
- Judge calls and ingest I/O retry with backoff; training never retries (a failed stage is
  resumed from its last save by hand, not re-run three times on a busy accelerator).

Settings come from the environment (the same way ``POSTFORGE_OUTPUTS`` moves outputs), so a
deployment changes the cron or the time zone without touching code.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dagster as dg
from dagster._core.definitions.assets.graph.base_asset_graph import BaseAssetGraph
from dagster._core.storage.tags import MAX_RUNTIME_SECONDS_TAG
from dagster._utils.schedules import is_valid_cron_string

from assets.ingest import RAW_KEYS, raw_drops
from assets.partitions import (
    DEFAULT_DROPS_ROOT,
    DROP_CONTENT,
    DROPS,
    drop_content_hash,
    drops_root,
    find_drops,
    visible_files,
)
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
# The content hash of the drop a run ingests (assets/partitions.py): the sensor compares it with
# the files on disk, so a drop is ingested once per content.
TAG_DROP_CONTENT = "postforge/drop_content"
# Runs of one lane run one at a time (dagster.yaml, concurrency.runs.tag_concurrency_limits):
# every refresh writes the combined tables and the curated sets, one drop after the other.
TAG_LANE = "postforge/lane"
DROP_LANE = "drops"
PARTITION_TAG = "dagster/partition"

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
    ``sensor_interval_s``: how often the sensors look (POSTFORGE_SENSOR_INTERVAL_S).
    ``refresh_max_runtime_s``: how long a refresh or ingest run may run
    (POSTFORGE_REFRESH_MAX_RUNTIME_S, tagged ``dagster/max_runtime`` on those runs); past it,
    run monitoring fails the run and the schedule no longer waits for it."""

    refresh_cron: str = "0 3 * * *"
    timezone: str = "UTC"
    drops_root: str = DEFAULT_DROPS_ROOT
    sft_change_fraction: float = 0.1
    recipe: str = "recipes/tiny-cpu.yaml"
    sensor_interval_s: int = 60
    refresh_max_runtime_s: int = 6 * 3600

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
        if self.refresh_max_runtime_s <= 0:
            raise SettingsError(
                f"POSTFORGE_REFRESH_MAX_RUNTIME_S: {self.refresh_max_runtime_s} is not positive"
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
            refresh_max_runtime_s=number(
                "POSTFORGE_REFRESH_MAX_RUNTIME_S", cls.refresh_max_runtime_s, int
            ),
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


@dataclass(frozen=True)
class InPool(dg.AssetSelection):
    """The assets whose step runs in ``pool``, read from the asset definitions (a new GPU asset
    is left out of refreshes without anyone listing it). Dagster resolves it against the graph
    when the job is built, so this module need not import the graph that imports it."""

    pool: str

    def resolve_inner(self, asset_graph: BaseAssetGraph, allow_missing: bool) -> set[dg.AssetKey]:
        return {
            node.key
            for node in asset_graph.asset_nodes
            if node.is_materializable and self.pool in (node.pools or set())
        }


TRAINING = dg.AssetSelection.groups(*TRAINING_GROUPS)
# Never in a scheduled refresh: training, and anything in the gpu pool (model_candidates samples
# on the accelerator, and new candidate texts would make the judge pay again).
NOT_REFRESHED = TRAINING | InPool(GPU_POOL)
# The job holds what a refresh could need; each schedule tick selects a subset (refresh_keys).
REFRESH_SELECTION = dg.AssetSelection.assets(raw_drops.key).downstream().upstream() - NOT_REFRESHED
# A dead worker leaves its run STARTED; past this, run monitoring (dagster.yaml) fails it.
MAX_RUNTIME = {MAX_RUNTIME_SECONDS_TAG: str(SETTINGS.refresh_max_runtime_s)}

refresh_job = dg.define_asset_job(
    "refresh",
    selection=REFRESH_SELECTION,
    partitions_def=DROPS,
    tags=run_tags(SETTINGS.recipe, **MAX_RUNTIME, **{TAG_LANE: DROP_LANE}),
    description="Everything outside training and the gpu pool, for one drop; the daily schedule "
    "selects only what the drop changes (and inputs a fresh instance lacks). Refresh runs wait "
    "for one another (the drops lane).",
)
ingest_drop_job = dg.define_asset_job(
    "ingest_drop",
    selection=dg.AssetSelection.assets(raw_drops.key),
    partitions_def=DROPS,
    tags=run_tags(SETTINGS.recipe, **MAX_RUNTIME),
    description="One drop ingested; automation carries it downstream.",
)
training_job = dg.define_asset_job(
    "train",
    selection=TRAINING,
    tags=run_tags(SETTINGS.recipe),
    description="The training stages (in the gpu pool, one at a time).",
)


# ---------------------------------------------------------------- runs in progress

IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
# Statuses a run has once a worker took it: a worker that died leaves the run in one of them.
HAS_WORKER = {
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
}


def overdue(record: dg.RunRecord, max_runtime_s: float, now: float | None = None) -> bool:
    """Whether a run has been running longer than its limit (its ``dagster/max_runtime`` tag,
    else ``max_runtime_s``). The default run launcher cannot tell whether a run's worker is
    alive (it has no worker health check), so a run whose process was killed stays STARTED;
    past the limit it is taken for dead. Run monitoring fails such runs (dagster.yaml); this
    covers a daemon that has not done so yet. A queued run has no worker and never is."""
    run = record.dagster_run
    if run.status not in HAS_WORKER:
        return False
    try:
        limit = float(run.tags.get(MAX_RUNTIME_SECONDS_TAG, max_runtime_s))
    except ValueError:
        limit = max_runtime_s
    started = record.start_time or record.create_timestamp.timestamp()
    return ((time.time() if now is None else now) - started) > limit


def in_progress_runs(
    instance: dg.DagsterInstance,
    job_name: str | None = None,
    max_runtime_s: float = OperationsSettings.refresh_max_runtime_s,
) -> list[dg.DagsterRun]:
    """Runs (of ``job_name``, or of every job) queued or running, newest first, without those
    past their maximum runtime (``overdue``)."""
    records = instance.get_run_records(
        dg.RunsFilter(job_name=job_name, statuses=IN_PROGRESS), limit=200
    )
    return [r.dagster_run for r in records if not overdue(r, max_runtime_s)]


def written_keys(run: dg.DagsterRun) -> set[dg.AssetKey] | None:
    """What a run materializes: its asset selection, else its job's; None when unknown (a job
    of another code location, an ad-hoc job)."""
    if run.asset_selection is not None:
        return set(run.asset_selection)
    keys = job_keys(run.job_name)
    return None if keys is None else set(keys)


@functools.cache
def job_keys(job_name: str) -> frozenset[dg.AssetKey] | None:
    """The assets a job of the project materializes (building a job takes a second or two, and
    the jobs do not change while the code location runs); None for a job it does not define."""
    from pipelines.definitions import defs

    try:
        return frozenset(defs.resolve_job_def(job_name).asset_layer.executable_asset_keys)
    except Exception:  # noqa: BLE001 - any job this code location cannot build is unknown
        return None


def blocking_run(runs: Sequence[dg.DagsterRun], keys: set[dg.AssetKey]) -> dg.DagsterRun | None:
    """A run that writes one of ``keys`` other than a drop's own partition (two runs writing the
    combined tables or the curated sets at once would race), or whose writes are unknown."""
    shared = keys - {raw_drops.key}
    for run in runs:
        writes = written_keys(run)
        if writes is None or writes & shared:
            return run
    return None


def drops_in_progress(runs: Sequence[dg.DagsterRun]) -> set[str]:
    """Drops a run is working on (an ``ingest_drop`` run of the sensor's, a refresh, a
    backfill): the schedule and the sensor leave them to it."""
    return {run.tags[PARTITION_TAG] for run in runs if PARTITION_TAG in run.tags}


# ---------------------------------------------------------------- pending drops

# What a drop's rows reach when its refresh completes, by the table its ingest reported rows
# for: the curated set and the datasets exported from it. A drop is pending until each of these
# was written after the drop's ingest, whatever stopped the refresh before (a killed worker, a
# combine that failed half-way and was re-run without curating).
REACHES = {
    "conversations": [
        dg.AssetKey("curated_conversations"),
        dg.AssetKey("sft_dataset"),
        dg.AssetKey("prompt_dataset"),
    ],
    "preferences": [dg.AssetKey("curated_preferences"), dg.AssetKey("preference_dataset")],
}


def ingest_records(instance: dg.DagsterInstance, drops: Sequence[str]) -> dict[str, Any]:
    """Drop → the event log record of its latest ``raw_drops`` materialization (storage id,
    run, metadata), for the drops ingested so far: a few queries whatever the drop count."""
    if not drops:
        return {}
    latest = instance.get_latest_storage_id_by_partition(
        raw_drops.key, dg.DagsterEventType.ASSET_MATERIALIZATION, set(drops)
    )
    if not latest:
        return {}
    found = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=raw_drops.key, storage_ids=list(latest.values())),
        limit=len(latest),
    ).records
    by_id = {r.storage_id: r for r in found}
    return {d: by_id[i] for d, i in latest.items() if i in by_id}


def latest_storage_ids(
    instance: dg.DagsterInstance, keys: Sequence[dg.AssetKey]
) -> dict[dg.AssetKey, int]:
    """Key → storage id of its latest materialization (any partition), -1 for never: one query
    for every key (a tick looks at the whole graph)."""
    found = {
        record.asset_entry.asset_key: record.asset_entry.last_materialization_storage_id
        for record in instance.get_asset_records(list(keys))
    }
    return {key: found.get(key) or -1 for key in keys}


def uncovered(instance: dg.DagsterInstance, records: Mapping[str, Any]) -> set[str]:
    """Ingested drops the curated sets or their datasets have not caught up with. A table the
    drop reported no rows for does not count (a drop of chats leaves the preference branch)."""
    latest = latest_storage_ids(instance, [k for keys in REACHES.values() for k in keys])
    behind = set()
    for drop, record in records.items():
        metadata = record.asset_materialization.metadata
        for table, keys in REACHES.items():
            entry = metadata.get(table)
            if entry is not None and not entry.value:
                continue
            if any(latest[key] < record.storage_id for key in keys):
                behind.add(drop)
    return behind


def latest_drop_run(instance: dg.DagsterInstance, drop: str) -> dg.DagsterRun | None:
    runs = instance.get_runs(dg.RunsFilter(tags={PARTITION_TAG: drop}), limit=1)
    return runs[0] if runs else None


def failed_ingest(
    instance: dg.DagsterInstance, drop: str, records: Mapping[str, Any]
) -> str | None:
    """When the drop's latest run failed without storing its ingest (the drop is unreadable as it
    is): the content hash that run was given ('' if it carries none); else None. Such a drop
    waits for a person (fix the files, re-execute from the failure) instead of failing again on
    every tick. A run that failed after the ingest (in the combine, in curation, or killed and
    failed by run monitoring) does not count: the drop is still pending and is refreshed again."""
    run = latest_drop_run(instance, drop)
    if run is None or run.status != dg.DagsterRunStatus.FAILURE:
        return None
    writes = written_keys(run)
    if writes is not None and raw_drops.key not in writes:
        return None
    record = records.get(drop)
    if record is not None and record.run_id == run.run_id:
        return None
    return run.tags.get(TAG_DROP_CONTENT, "")


def failed_drops(
    instance: dg.DagsterInstance,
    drops: Sequence[str],
    root: str,
    records: Mapping[str, Any] | None = None,
) -> set[str]:
    """Drops whose latest ingest failed (``failed_ingest``) and whose files are the ones it
    failed on (a run without a content tag: any files)."""
    records = ingest_records(instance, drops) if records is None else records
    folder = drops_root(root)
    failed = set()
    for drop in drops:
        content = failed_ingest(instance, drop, records)
        if content is not None and content in ("", drop_content_hash(folder / drop)):
            failed.add(drop)
    return failed


def register_new_drops(instance: dg.DagsterInstance, root: str) -> list[str]:
    registered = set(instance.get_dynamic_partitions(DROPS.name))
    new = [d for d in find_drops(root) if d not in registered]
    if new:
        instance.add_dynamic_partitions(DROPS.name, new)
    return new


def pending_drops(
    instance: dg.DagsterInstance, root: str, busy: set[str] | frozenset[str] = frozenset()
) -> list[str]:
    """Drops on disk and registered whose refresh has not completed, oldest registration first:
    never ingested, or ingested but not yet curated and exported (``uncovered``). Left out: a
    drop whose ingest failed and whose files are unchanged since (``failed_ingest``), and the
    ``busy`` ones a run is working on."""
    on_disk = set(find_drops(root))
    candidates = [
        d for d in instance.get_dynamic_partitions(DROPS.name) if d in on_disk and d not in busy
    ]
    records = ingest_records(instance, candidates)
    behind = uncovered(instance, records)
    waiting = [d for d in candidates if d not in records or d in behind]
    failed = failed_drops(instance, waiting, root, records)
    return [d for d in waiting if d not in failed]


# ---------------------------------------------------------------- schedule


def refresh_tick(
    instance: dg.DagsterInstance, settings: OperationsSettings
) -> list[dg.RunRequest] | dg.SkipReason:
    """A refresh for every pending drop, oldest first (one run each; the drops lane runs them one
    after the other), or the reason there is none this tick."""
    running = in_progress_runs(instance, max_runtime_s=settings.refresh_max_runtime_s)
    blocker = blocking_run(running, set(selection_keys(REFRESH_SELECTION)))
    if blocker is not None:
        kind = "refresh" if blocker.job_name == refresh_job.name else blocker.job_name
        return dg.SkipReason(
            f"{kind} run {blocker.run_id} is still {blocker.status.value}; this tick is "
            "skipped, not queued behind it"
        )
    register_new_drops(instance, settings.drops_root)
    pending = pending_drops(instance, settings.drops_root, drops_in_progress(running))
    if not pending:
        return dg.SkipReason(f"no new or unfinished drop in {drops_root(settings.drops_root)}")
    records = ingest_records(instance, pending)
    folder = drops_root(settings.drops_root)
    requests = []
    for index, drop in enumerate(pending):
        keys = refresh_keys(instance, records.get(drop), missing_inputs=index == 0)
        tags = {TAG_TRIGGER: "daily_refresh", TAG_DROP: drop}
        if raw_drops.key in keys:
            tags[TAG_DROP_CONTENT] = drop_content_hash(folder / drop)
        requests.append(
            dg.RunRequest(
                # Dagster asks for a key when a tick requests several runs; it is per tick.
                run_key=f"refresh:{drop}",
                partition_key=drop,
                asset_selection=keys,
                tags=run_tags(settings.recipe, **tags),
            )
        )
    return requests


def refresh_keys(
    instance: dg.DagsterInstance, ingested: Any = None, missing_inputs: bool = True
) -> list[dg.AssetKey]:
    """What a refresh materializes: the drop and everything downstream of it except training,
    the gpu pool and, before its first materialization, the AI feedback that samples from it;
    plus (``missing_inputs``) any input of those never materialized (raw sources, the tokenizer)
    on a fresh instance.

    For a drop already ingested (``ingested``: its latest ``raw_drops`` record) whose refresh
    stopped part-way, only what was not written since that ingest: the drop is not read again,
    and a combined table that already holds it is not selected (in a drop's run it would be
    left as stored and skip curation, the way a re-executed combine did)."""
    latest = latest_storage_ids(instance, selection_keys(dg.AssetSelection.all()))
    never = dg.AssetSelection.assets(*(k for k, i in latest.items() if i < 0))
    blocked = (never & NOT_REFRESHED).downstream() & dg.AssetSelection.groups(FEEDBACK_GROUP)
    core = dg.AssetSelection.assets(raw_drops.key).downstream() - NOT_REFRESHED - blocked
    selection = core
    if missing_inputs:
        selection = core | ((core.upstream() - NOT_REFRESHED - blocked) & never)
    keys = selection_keys(selection)
    if ingested is None:
        return keys
    return [k for k in keys if k != raw_drops.key and latest[k] < ingested.storage_id]


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
        description=f"Refresh every drop in {settings.drops_root} not yet ingested or not yet "
        "curated, one run each; skipped while a refresh runs.",
    )
    def daily_refresh(
        context: dg.ScheduleEvaluationContext,
    ) -> list[dg.RunRequest] | dg.SkipReason:
        return refresh_tick(context.instance, settings)

    return daily_refresh


# ---------------------------------------------------------------- sensors


def drop_fingerprint(folder: Path) -> str:
    """Names, sizes and mtimes of a drop's visible files: cheap (no reads), so the sensor hashes
    a drop's content only when this moved."""
    entries = []
    for path in visible_files(folder):
        stat = path.stat()
        entries.append(f"{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16]


def _storage_id(record: Any) -> int:
    return record.storage_id if record is not None else 0


def ingested_content(
    instance: dg.DagsterInstance, record: Any, folder: Path, content: str | None = None
) -> str | None:
    """The content hash of what the drop's latest ingest read: recorded in its metadata, else in
    its run's tags. An ingest that recorded neither (launched by hand before these tags) counts
    as having read the files on disk when none changed after it."""
    entry = record.asset_materialization.metadata.get(DROP_CONTENT)
    if entry is not None:
        return str(entry.value)
    run = instance.get_run_by_id(record.run_id) if record.run_id else None
    if run is not None and TAG_DROP_CONTENT in run.tags:
        return run.tags[TAG_DROP_CONTENT]
    if all(p.stat().st_mtime < record.timestamp for p in visible_files(folder)):
        return content if content is not None else drop_content_hash(folder)
    return None


def _cursor_entry(value: Any) -> dict[str, str]:
    # A cursor from before content hashes held the fingerprint alone.
    return value if isinstance(value, dict) else {"stat": str(value)}


def drop_sensor_tick(
    instance: dg.DagsterInstance, cursor: str | None, settings: OperationsSettings
) -> dg.SensorResult | dg.SkipReason:
    """New drop folders, and drops whose content changed, since the cursor: register the new
    ones as partitions and ingest each on its own. A drop whose files were only touched or
    copied again, one already ingested with the same content (a sensor switched on after the
    schedule ingested it), one whose ingest failed on the same content, and one a run is
    ingesting now are not requested."""
    seen = {d: _cursor_entry(v) for d, v in (json.loads(cursor) if cursor else {}).items()}
    root = drops_root(settings.drops_root)
    drops = find_drops(root)
    busy = drops_in_progress(
        in_progress_runs(instance, max_runtime_s=settings.refresh_max_runtime_s)
    )
    records: dict[str, Any] | None = None
    current: dict[str, dict[str, str]] = {}
    changed: dict[str, str] = {}
    for drop in drops:
        folder, before = root / drop, seen.get(drop, {})
        stat = drop_fingerprint(folder)
        if before.get("stat") == stat:
            current[drop] = before
            continue
        if drop in busy:  # before hashing: a run ingesting a big drop must not cost a read a tick
            if before:  # looked at again next tick, once the run has finished
                current[drop] = before
            continue
        content = drop_content_hash(folder)
        if before.get("content") == content:
            current[drop] = {"stat": stat, "content": content}
            continue
        if records is None:
            records = ingest_records(instance, drops)
        record = records.get(drop)
        done = record is not None and ingested_content(instance, record, folder, content) == content
        if not done and failed_ingest(instance, drop, records) != content:
            changed[drop] = content
        current[drop] = {"stat": stat, "content": content}
    if not changed:
        reason = f"no new or changed drop in {root}"
        if current == seen:
            return dg.SkipReason(reason)
        # Touched files, or drops seen for the first time and already ingested: remembered.
        return dg.SensorResult(skip_reason=reason, cursor=json.dumps(current, sort_keys=True))
    registered = set(instance.get_dynamic_partitions(DROPS.name))
    new = [d for d in changed if d not in registered]
    assert records is not None  # a changed drop looked its records up
    requests = [
        dg.RunRequest(
            # Dagster never runs a run key twice: with the latest ingest in it, a drop rolled
            # back to content it held before is ingested again
            run_key=f"{drop}:{content}:{_storage_id(records.get(drop))}",
            partition_key=drop,
            tags=run_tags(
                settings.recipe,
                **{TAG_TRIGGER: "new_drop_sensor", TAG_DROP: drop, TAG_DROP_CONTENT: content},
            ),
        )
        for drop, content in changed.items()
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
        description=f"A new folder (or changed files) in {settings.drops_root} becomes a drop "
        "partition and is ingested, once per content.",
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
