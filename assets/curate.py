# Dagster reads these annotations at definition time: no "from __future__ import annotations".
"""Curation: filters with a per-row ledger, and the training sets built from what survives."""

import dataclasses
import hashlib
from collections.abc import Callable, Collection, Iterator
from typing import Any

import dagster as dg
import polars as pl
from pydantic import Field

from assets.io_manager import preview_markdown, previous_table
from assets.resources import StorageResource, dataset_version
from curation.append import curate_parts
from curation.curate import FILTERS, STATES, CurationResult, build_filters, filter_class
from curation.datasets import (
    ExportConfig,
    export,
    export_parts,
    preference_rows,
    pretrain_rows,
    prompt_rows,
    rows_tag,
    sft_rows,
)
from curation.feedback.pairs import MixConfig, mix_preferences
from curation.incremental import fingerprint
from curation.preferences import curate_preferences
from curation.schema import LEDGER
from curation.storage import Part, PartSet, PartUpdate
from curation.tokens import TokenCounter
from training.tokenizer import load_tokenizer

GROUP = "curate"
SCALARS = (bool, int, float, str)


def section_config(name: str) -> type[dg.Config]:
    """A launch-form section per filter, generated from the filter's own dataclass fields, so the
    filter's docstring and defaults stay the one reference. Empty means "the filter's default"."""
    cls = filter_class(name)
    annotations: dict[str, Any] = {
        "enabled": bool,
        "policy": str | None,
        "per_source": dict[str, str],
    }
    defaults: dict[str, Any] = {
        "enabled": Field(default=True, description=f"Run the {name} filter."),
        "policy": Field(
            default=None, description="keep | drop | rewrite | flag (default: the filter's)."
        ),
        "per_source": Field(default_factory=dict, description="source → verdict overrides."),
    }
    for field in dataclasses.fields(cls):
        if field.init and field.name != "policy" and isinstance(field.default, SCALARS):
            annotations[field.name] = type(field.default) | None
            defaults[field.name] = Field(default=None, description=f"default {field.default!r}")
    title = name.title().replace("_", "")
    return type(f"{title}FilterConfig", (dg.Config,), {"__annotations__": annotations, **defaults})


SECTIONS = {name: section_config(name) for name in FILTERS}


# One launch-form section per filter, in pipeline order.
CurationConfig = type(
    "CurationConfig",
    (dg.Config,),
    {
        "__annotations__": dict(SECTIONS),
        "__doc__": "Curation filters; each section's fields are the filter's own settings.",
        **{name: Field(default_factory=section) for name, section in SECTIONS.items()},
    },
)


def filter_mapping(config: dg.Config) -> dict[str, dict[str, Any]]:
    """The launch form as the mapping ``build_filters`` takes (unset fields left out)."""
    mapping = {}
    for name in FILTERS:
        values = getattr(config, name).model_dump()
        mapping[name] = {
            k: v for k, v in values.items() if v is not None and not (k == "per_source" and not v)
        }
    return mapping


def counts_table(ledger: pl.DataFrame, states: pl.DataFrame) -> str:
    return preview_markdown(_rule_rows(ledger, states), 200)


def _rule_rows(ledger: pl.DataFrame, states: pl.DataFrame) -> pl.DataFrame:
    return (
        ledger.join(states.select("row_id", "source"), on="row_id", how="left")
        .group_by("rule", "verdict", "source")
        .agg(pl.col("row_id").n_unique().alias("rows"))
        .sort("rule", "source")
    )


def dropped_examples(states: pl.DataFrame, conversations: pl.DataFrame, per_rule: int = 2) -> str:
    return preview_markdown(_examples(states, conversations, per_rule), 100)


def _examples(
    states: pl.DataFrame, conversations: pl.DataFrame | pl.LazyFrame, per_rule: int = 2
) -> pl.DataFrame:
    dropped = states.filter(pl.col("state") == "dropped").group_by("rule", maintain_order=True)
    dropped = dropped.head(per_rule)
    messages = (
        conversations.lazy()
        .filter(pl.col("id").is_in(dropped["row_id"].implode()))
        .select(pl.col("id").alias("row_id"), "messages")
        .collect()
    )
    return dropped.join(messages, on="row_id", how="left", maintain_order="left").select(
        "rule",
        "reason",
        pl.col("messages").list.last().struct.field("content").str.slice(0, 160).alias("answer"),
    )


def exact_text_key() -> pl.Expr:
    """The normalised text ``no_exact_duplicates_left`` compares."""
    return (
        pl.col("messages")
        .list.eval(pl.element().struct.field("content"))
        .list.join("\n")
        .str.to_lowercase()
        .str.replace_all(r"\s+", " ")
    )


def _check_keys(curated: pl.DataFrame) -> pl.DataFrame:
    """Per kept row, a 64-bit hash of the text ``no_exact_duplicates_left`` compares: stored
    beside the ledger, so the check reads hashes, not texts, of earlier parts."""
    return curated.select(pl.col("id").alias("row_id"), exact_text_key().hash(0x51).alias("key"))


def _part_stats(result: CurationResult, conversations: pl.LazyFrame) -> dict[str, Any]:
    """What metadata, checks and exports need of one curated part, kept in the manifest.
    ``content`` tags the part's rows (``rows_tag``): the part's own tag is its conversations
    part's, which stays the same when a later drop changes this part's verdicts (a re-delivered
    row moves, a duplicate's first copy goes), so the exports key their parts on this."""
    rules = _rule_rows(result.ledger, result.states)
    flagged = (
        result.ledger.filter(pl.col("verdict") == "flag")
        .join(result.curated.select(pl.col("id").alias("row_id")), on="row_id", how="semi")
        .group_by("rule")
        .agg(pl.col("row_id").n_unique())
    )
    return {
        "states": result.counts(),
        "rows_in": result.states.height,
        "by_rule": [list(r) for r in rules.iter_rows()],
        "flagged": dict(flagged.iter_rows()),
        "examples": _examples(result.states, conversations).to_dicts(),
        "content": rows_tag(result.curated),
    }


def _stored_prefix(*tables: PartSet | None) -> list[tuple[str, str]]:
    """The leading parts every table has, with the same names and tags."""
    if any(t is None for t in tables):
        return []
    prefix = []
    for parts in zip(*(t.parts for t in tables), strict=False):  # type: ignore[union-attr]
        if len({(p.name, p.tag) for p in parts}) != 1:
            break
        prefix.append((parts[0].name, parts[0].tag))
    return prefix


def _summed_stats(parts: list[Part]) -> dict[str, Any]:
    states: dict[str, int] = {}
    flagged: dict[str, int] = {}
    rules: dict[tuple, int] = {}
    examples: list[dict] = []
    for part in parts:
        for k, v in part.stats.get("states", {}).items():
            states[k] = states.get(k, 0) + v
        for k, v in part.stats.get("flagged", {}).items():
            flagged[k] = flagged.get(k, 0) + v
        for rule, verdict, source, rows in part.stats.get("by_rule", []):
            rules[(rule, verdict, source)] = rules.get((rule, verdict, source), 0) + rows
        examples += part.stats.get("examples", [])
    by_rule = pl.DataFrame(
        [(*k, v) for k, v in rules.items()],
        schema={"rule": pl.String, "verdict": pl.String, "source": pl.String, "rows": pl.Int64},
        orient="row",
    ).sort("rule", "source")
    shown = (
        pl.DataFrame(examples, schema={"rule": pl.String, "reason": pl.String, "answer": pl.String})
        .group_by("rule", maintain_order=True)
        .head(2)
    )
    return {"states": states, "flagged": flagged, "by_rule": by_rule, "examples": shown}


# --- checks beside the assets they guard --------------------------------------------------------
#
# The curated set's checks are check specs of ``curated_conversations`` (asset checks in the UI,
# under the asset they guard) evaluated at the end of its own step, on the tables it has just
# stored: as separate steps each cost Dagster's per-step floor (0.16-0.18 s on the bench VM),
# four of a refresh's fourteen steps; their own work reads manifests and one hash column.
#
# A failed ``rows_are_conserved`` (blocking, ERROR severity) makes Dagster fail the step once
# the body has finished (DagsterAssetCheckFailedError, raised in execute_step after every event
# is out): both tables are already stored and recorded, every check result is reported, and no
# asset downstream of the step runs in that run.
#
# The multi-asset is subsettable for one reason: a run of its checks alone (the UI's "Execute"
# on a check, a check-only selection) evaluates them on the stored tables without curating
# again. The two tables are still written together: a run that selects one of them fails.

CURATED = dg.AssetKey("curated_conversations")
CURATION_KEYS = frozenset({CURATED, dg.AssetKey("curation_ledger")})
CURATED_CHECKS = [
    dg.AssetCheckSpec(
        "rows_are_conserved",
        asset=CURATED,
        blocking=True,
        description="in == kept + rewritten + dropped per part and over all parts, and every "
        "kept row is in the curated set (reads curation_ledger and conversations).",
    ),
    dg.AssetCheckSpec(
        "curated_schema_and_size",
        asset=CURATED,
        description="Same columns and types as conversations in every part, and not empty.",
    ),
    dg.AssetCheckSpec(
        "no_exact_duplicates_left",
        asset=CURATED,
        description="No two kept conversations have the same normalised text.",
    ),
    dg.AssetCheckSpec(
        "residual_flags",
        asset=CURATED,
        description="Kept rows a rule only flagged: a warning above 10%.",
    ),
]


@dg.multi_asset(
    group_name=GROUP,
    # Not required: a run of the checks alone yields neither table (Dagster expects every
    # required output of the op, selected or not).
    outs={
        "curated_conversations": dg.AssetOut(kinds={"polars"}, is_required=False),
        "curation_ledger": dg.AssetOut(kinds={"polars"}, is_required=False),
    },
    deps=["project_tokenizer"],
    check_specs=CURATED_CHECKS,
    can_subset=True,
)
def curated_conversations(
    context: dg.AssetExecutionContext,
    config: CurationConfig,  # type: ignore[valid-type]
    storage: StorageResource,
    conversations: PartSet,
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Conversations after the reference, safety, PII, options, quality, length and duplicate
    filters; the ledger has every rule that fired and each row's final state.

    One part per conversations part (curation.append.curate_parts): a new drop is
    curated alone against what earlier parts kept (``append``), unless a full run would change
    an earlier part's verdicts; then every row runs, reusing unchanged rows' filter results
    (``incremental``), or all of them (``full``: another config, filter code or tokenizer).
    Metadata says which and why; the frames are the full run's either way.

    Selected without either table (its checks alone), it curates nothing: the selected checks
    read the tables stored last. Selected with one table only, it fails: the ledger explains
    the curated set, so they are written together."""
    checks = {key.name for key in context.selected_asset_check_keys}
    selected = set(context.selected_asset_keys) & CURATION_KEYS
    if not selected:
        curated, ledger = _stored_curation(context.instance)
        yield from curated_checks(curated, ledger, conversations, checks)
        return
    if selected != CURATION_KEYS:
        raise dg.Failure(
            description="curated_conversations and curation_ledger are written together by "
            f"one curation; this run selects only {sorted(k.to_user_string() for k in selected)}."
            " Select both (or only their checks).",
            allow_retries=False,
        )
    tokenizer = load_tokenizer(storage.path("project_tokenizer"))
    filters = build_filters(filter_mapping(config), TokenCounter(tokenizer))
    tokenizer_id = hashlib.sha256(tokenizer.to_str().encode()).hexdigest()
    previous = {
        key: previous_table(context.instance, dg.AssetKey(key))
        for key in ("curated_conversations", "curation_ledger")
    }
    run = curate_parts(
        conversations,
        filters,
        storage.path("curation_state", "curated_conversations_parts"),
        context=f"tokenizer {tokenizer_id}",
        stored=_stored_prefix(*previous.values()),
        start_over=_failed_when_written(context.instance),
    )
    curated_parts, ledger_parts = [], []
    curated_new: dict[str, Any] = {}
    ledger_new: dict[str, Any] = {}
    old_curated = previous["curated_conversations"]
    old_ledger = previous["curation_ledger"]
    for part in conversations.parts:
        result = run.results.get(part.name)
        if result is None:  # curated before, unchanged: kept as stored
            curated_parts.append(old_curated.by_name()[part.name])  # type: ignore[union-attr]
            ledger_parts.append(old_ledger.by_name()[part.name])  # type: ignore[union-attr]
            continue
        stats = _part_stats(result, pl.scan_parquet(conversations.path(part)))
        curated_parts.append(Part(part.name, part.tag, rows=result.curated.height, stats=stats))
        ledger_parts.append(Part(part.name, part.tag, rows=result.ledger.height))
        curated_new[part.name] = result.curated
        ledger_new[part.name] = {
            "ledger": result.ledger,
            "states": result.states,
            "keys": _check_keys(result.curated),
        }
    summed = _summed_stats(curated_parts)
    info = run.info
    context.add_output_metadata(
        {
            **{k: summed["states"].get(k, 0) for k in ("kept", "rewritten", "dropped")},
            "rows_in": conversations.rows,
            "mode": info.mode,
            "mode_reason": info.reason,
            "rows_filtered": info.rows_filtered,
            "rows_signed": info.rows_signed,
            "parts_written": list(curated_new),
            "seconds": dg.MetadataValue.json(info.seconds),
            "by_rule": dg.MetadataValue.md(preview_markdown(summed["by_rule"], 200)),
            "dropped_examples": dg.MetadataValue.md(preview_markdown(summed["examples"], 100)),
        },
        output_name="curated_conversations",
    )
    yield dg.Output(PartUpdate(curated_parts, curated_new, old_curated), "curated_conversations")
    yield dg.Output(
        PartUpdate(ledger_parts, ledger_new, old_ledger, members=("ledger", "states", "keys")),
        "curation_ledger",
    )
    # The IO manager has stored both outputs by now (Dagster stores an output before it asks
    # the body for the next event): the checks read the tables as they were written.
    stored = {
        key: previous_table(context.instance, dg.AssetKey(key))
        for key in ("curated_conversations", "curation_ledger")
    }
    names = [p.name for p in curated_parts]
    for key, table in stored.items():
        if table is None or [p.name for p in table.parts] != names:
            raise RuntimeError(f"{key}: the stored table is not the one this step wrote")
    yield from curated_checks(
        stored["curated_conversations"], stored["curation_ledger"], conversations, checks
    )


def _failed_when_written(instance: dg.DagsterInstance) -> str | None:
    """Why not to build on the stored curated set: its blocking check failed in the run that
    wrote it. Dagster records the tables before the step fails on the check, and an append
    keeps earlier parts as stored, so without this a bad part would stay for good."""
    key = dg.AssetCheckKey(CURATED, "rows_are_conserved")
    # The latest evaluation that finished: this run's own is already planned (not yet done).
    history = instance.event_log_storage.get_asset_check_execution_history(key, limit=5)
    record = next((r for r in history if r.status.value in ("SUCCEEDED", "FAILED")), None)
    written = instance.get_latest_materialization_event(CURATED)
    if record is None or written is None or record.run_id != written.run_id:
        return None
    if record.status.value != "FAILED":
        return None
    return f"the stored curated set failed rows_are_conserved in run {written.run_id}"


def _stored_curation(instance: dg.DagsterInstance) -> tuple[PartSet, PartSet]:
    """The curated set and ledger the last curation stored, for a run of the checks alone."""
    curated = previous_table(instance, CURATED)
    ledger = previous_table(instance, dg.AssetKey("curation_ledger"))
    if curated is None or ledger is None:
        raise dg.Failure(
            description="curated_conversations' checks read the stored curated set and ledger, "
            "and they have no readable materialization yet: materialize curated_conversations "
            "and curation_ledger first.",
            allow_retries=False,
        )
    return curated, ledger


@dg.multi_asset(
    group_name=GROUP,
    outs={
        "curated_preferences": dg.AssetOut(kinds={"polars"}),
        "preference_ledger": dg.AssetOut(kinds={"polars"}),
    },
    deps=["project_tokenizer"],
)
def curated_preferences(
    context: dg.AssetExecutionContext,
    config: CurationConfig,  # type: ignore[valid-type]
    storage: StorageResource,
    preferences_human: PartSet,
) -> tuple[PartUpdate, PartUpdate]:
    """Human comparison pairs, judged on prompt and chosen answer, PII removed on every side.
    Pairs are deduplicated across all parts, so any new pair curates every pair again; a
    refresh whose drops bring no pairs keeps the stored parts and adds empty ones."""
    tokenizer = load_tokenizer(storage.path("project_tokenizer"))
    filters = build_filters(filter_mapping(config), TokenCounter(tokenizer))
    print_ = fingerprint(filters, hashlib.sha256(tokenizer.to_str().encode()).hexdigest())[:16]
    wanted = [(p.name, f"{p.tag}|{print_}") for p in preferences_human.parts]
    old = [previous_table(context.instance, dg.AssetKey(k)) for k in PREFERENCE_OUTPUTS]
    stored = _stored_prefix(*old)
    rows = {p.name: p.rows for p in preferences_human.parts}
    if (
        stored
        and wanted[: len(stored)] == stored
        and all(rows[name] == 0 for name, _ in wanted[len(stored) :])
    ):
        mode = "kept" if len(stored) == len(wanted) else "kept; new parts have no pairs"
        results = {name: _no_pairs(preferences_human, name) for name, _ in wanted[len(stored) :]}
    else:
        mode = "all pairs"
        table = preferences_human.read() if preferences_human.parts else pl.DataFrame()
        result = curate_preferences(table, filters)
        results = _split_by_part(result, preferences_human)
    curated_parts, ledger_parts, curated_new, ledger_new = [], [], {}, {}
    for name, tag in wanted:
        if name not in results:
            curated_parts.append(old[0].by_name()[name])  # type: ignore[union-attr]
            ledger_parts.append(old[1].by_name()[name])  # type: ignore[union-attr]
            continue
        result = results[name]
        stats = {"states": result.counts(), "rows_in": result.states.height}
        curated_parts.append(Part(name, tag, rows=result.curated.height, stats=stats))
        ledger_parts.append(Part(name, tag, rows=result.ledger.height))
        curated_new[name] = result.curated
        ledger_new[name] = {"ledger": result.ledger, "states": result.states}
    summed = _summed_stats(curated_parts)["states"]
    context.add_output_metadata(
        {
            **{k: summed.get(k, 0) for k in ("kept", "rewritten", "dropped")},
            "rows_in": preferences_human.rows,
            "mode": mode,
            "parts_written": list(curated_new),
        },
        output_name="curated_preferences",
    )
    return (
        PartUpdate(curated_parts, curated_new, old[0]),
        PartUpdate(ledger_parts, ledger_new, old[1], members=("ledger", "states")),
    )


PREFERENCE_OUTPUTS = ("curated_preferences", "preference_ledger")


def _no_pairs(table: PartSet, name: str) -> CurationResult:
    empty = table.read_part(name).clear()
    return CurationResult(curated=empty, ledger=LEDGER.to_frame(), states=STATES.to_frame())


def _split_by_part(result: CurationResult, table: PartSet) -> dict[str, CurationResult]:
    """A run over every part's rows, cut back into parts (each frame keeps its order)."""
    part_of = pl.concat(
        [
            pl.scan_parquet(table.path(p))
            .select(pl.col("id").cast(pl.String))
            .collect()
            .with_columns(part=pl.lit(p.name))
            for p in table.parts
        ]
    ).unique("id", keep="first")

    def split(frame: pl.DataFrame, column: str) -> dict[str, pl.DataFrame]:
        tagged = frame.join(
            part_of.rename({"id": column}), on=column, how="left", maintain_order="left"
        )
        groups = tagged.partition_by("part", as_dict=True, maintain_order=True)
        return {key[0]: g.drop("part") for key, g in groups.items()}

    curated = split(result.curated, "id")
    ledger = split(result.ledger, "row_id")
    states = split(result.states, "row_id")
    return {
        p.name: CurationResult(
            curated=curated.get(p.name, result.curated.clear()),
            ledger=ledger.get(p.name, result.ledger.clear()),
            states=states.get(p.name, result.states.clear()),
        )
        for p in table.parts
    }


class DatasetConfig(dg.Config):
    eval_fraction: float = Field(default=0.05, description="Share of rows in the test split.")
    by_parts: bool = Field(
        default=True,
        description="Write one train/test Parquet pair per drop (parts/ and a manifest; a "
        "refresh writes the new drop's pair only) instead of whole train/test files and a "
        "save_to_disk copy. Training (load_splits) and `postforge trace` read either.",
    )


def _export(
    name: str, rows: pl.DataFrame, storage: StorageResource, config: DatasetConfig, card: dict
) -> dg.MaterializeResult:
    """A dataset built from every row at once (a mix, a cut, an unparted input): by parts it is
    one part, tagged by a digest of its rows, so an unchanged set is not written again and
    every dataset has the same layout for its readers."""
    out, export_config = storage.path("datasets"), ExportConfig(config.eval_fraction)
    if not config.by_parts:
        return _export_result(export(name, rows, out, export_config, card))
    part = Part("all", rows_tag(rows))
    return _export_result(export_parts(name, [(part, lambda: rows)], out, export_config, card))


def _export_result(summary: dict) -> dg.MaterializeResult:
    """Metadata, and a data version from the content training reads: a dataset written again
    with the same rows keeps its version, so its checkpoints are not stale and not retrained."""
    metadata = {
        "train_rows": summary["rows"]["train"],
        "test_rows": summary["rows"]["test"],
        "by_source": summary["by_source"],
        "path": dg.MetadataValue.path(summary["path"]),
        "hf_path": dg.MetadataValue.path(summary["hf_path"]),
    }
    if "parts_written" in summary:
        metadata["parts_written"] = summary["parts_written"]
    return dg.MaterializeResult(metadata=metadata, data_version=dataset_version(summary["path"]))


def _export_table(
    name: str,
    table: PartSet,
    to_rows: Any,
    storage: StorageResource,
    config: DatasetConfig,
    card: dict,
) -> dg.MaterializeResult:
    """A dataset from every part of ``table`` (``to_rows`` turns a part's frame into the
    dataset's rows): by parts, only parts whose content was not exported before are read."""
    if not config.by_parts:
        return _export(name, to_rows(table.read()), storage, config, card)

    def loader(part: Part) -> Any:
        return lambda: to_rows(pl.read_parquet(table.path(part)))

    summary = export_parts(
        name,
        [(_content_part(p), loader(p)) for p in table.parts],
        storage.path("datasets"),
        ExportConfig(config.eval_fraction),
        card,
    )
    return _export_result(summary)


def _content_part(part: Part) -> Part:
    """``part`` tagged by what it holds, for ``export_parts``: an export is reused only while
    the curated rows it was made from are the same. A part curated before its manifest kept a
    ``content`` tag is named by its file instead: a part is written to a new file whenever it
    is written, so its export is made again once, and reused while the part stays stored."""
    content = part.stats.get("content") or f"file {part.file}"
    return dataclasses.replace(part, tag=f"{part.tag}|{content}")


def _rule_counts(ledger: dict[str, pl.DataFrame]) -> dict[str, int]:
    counts = ledger["ledger"].group_by("rule").agg(pl.col("row_id").n_unique()).sort("rule")
    return dict(counts.iter_rows())


def _stat_rule_counts(curated: PartSet) -> dict[str, int]:
    """Rows per rule from the parts' stored counts (a row is counted once per rule, verdict
    and source it got: in practice once per rule)."""
    counts: dict[str, int] = {}
    for part in curated.parts:
        for rule, _verdict, _source, rows in part.stats.get("by_rule", []):
            counts[rule] = counts.get(rule, 0) + rows
    return dict(sorted(counts.items()))


@dg.asset(group_name=GROUP, kinds={"parquet", "huggingface"})
def sft_dataset(
    config: DatasetConfig,
    storage: StorageResource,
    curated_conversations: PartSet,
    curation_ledger: PartSet,
) -> dg.MaterializeResult:
    """TRL conversational SFT set (``messages``), train/test by id hash."""
    if config.by_parts:
        card = {"filters": _stat_rule_counts(curated_conversations)}
    else:
        card = {"filters": _rule_counts({"ledger": curation_ledger.read("ledger")})}
    return _export_table("sft", curated_conversations, sft_rows, storage, config, card)


class PreferenceDatasetConfig(DatasetConfig):
    human_fraction: float | None = Field(
        default=None,
        description="Share of human pairs (the rest AI/rule pairs); unset keeps every pair.",
    )
    max_pairs: int | None = Field(default=None, description="Cap on the number of pairs.")
    seed: int = Field(default=0, description="Which pairs a cut keeps.")


@dg.asset(group_name=GROUP, deps=["feedback_preferences"], kinds={"parquet", "huggingface"})
def preference_dataset(
    config: PreferenceDatasetConfig,
    storage: StorageResource,
    curated_preferences: pl.DataFrame,
    preference_ledger: dict[str, pl.DataFrame],
) -> dg.MaterializeResult:
    """TRL preference set (``prompt``/``chosen``/``rejected``) with each pair's origin: the
    sources' pairs merged with the AI- and human-feedback pairs, at the configured human share.
    Feedback pairs are read when they exist, so the curated pairs alone make a dataset before
    any model has been trained."""
    frames = [curated_preferences]
    feedback = storage.path("feedback_preferences.parquet")
    if feedback.exists():
        frames.append(pl.read_parquet(feedback))
    mixed, report = mix_preferences(
        frames, MixConfig(config.human_fraction, config.max_pairs, config.seed)
    )
    card = {"filters": _rule_counts(preference_ledger), "mix": report}
    result = _export("preference", preference_rows(mixed), storage, config, card)
    return dg.MaterializeResult(
        metadata={**result.metadata, "mix": dg.MetadataValue.json(report)},
        data_version=result.data_version,
    )


@dg.asset(group_name=GROUP, kinds={"parquet", "huggingface"})
def prompt_dataset(
    config: DatasetConfig, storage: StorageResource, curated_conversations: PartSet
) -> dg.MaterializeResult:
    """Prompts for PPO/GRPO/RLOO and for AI-feedback candidates (``prompt``)."""
    return _export_table("prompt", curated_conversations, prompt_rows, storage, config, {})


@dg.asset(group_name=GROUP, kinds={"parquet", "huggingface"})
def pretrain_dataset(
    config: DatasetConfig, storage: StorageResource, pretrain_corpus: pl.DataFrame
) -> dg.MaterializeResult:
    """Pretraining ``text`` set."""
    return _export("pretrain", pretrain_rows(pretrain_corpus), storage, config, {})


def curated_checks(
    curated: PartSet,
    ledger: PartSet,
    conversations: PartSet,
    names: Collection[str] | None = None,
) -> Iterator[dg.AssetCheckResult]:
    """The checks of ``CURATED_CHECKS`` named in ``names`` (every one when None) on the stored
    tables, named as their specs. A run that subsets the checks gets results for its selection
    only, and the others cost nothing."""
    evaluations: dict[str, Callable[[], dg.AssetCheckResult]] = {
        "rows_are_conserved": lambda: rows_are_conserved(curated, ledger, conversations),
        "curated_schema_and_size": lambda: curated_schema_and_size(curated, conversations),
        "no_exact_duplicates_left": lambda: no_exact_duplicates_left(curated, ledger),
        "residual_flags": lambda: residual_flags(curated),
    }
    for spec in CURATED_CHECKS:
        if names is None or spec.name in names:
            yield evaluations[spec.name]()


def rows_are_conserved(
    curated_conversations: PartSet,
    curation_ledger: PartSet,
    conversations: PartSet,
) -> dg.AssetCheckResult:
    """in == kept + rewritten + dropped, and every kept row is in the curated set: per part
    (each part's counts were taken from its frames when it was written), and over all parts."""
    names = [p.name for p in conversations.parts]
    aligned = (
        names
        == [p.name for p in curated_conversations.parts]
        == [p.name for p in curation_ledger.parts]
    )
    bad = []
    for source, curated in zip(conversations.parts, curated_conversations.parts, strict=False):
        states = curated.stats.get("states", {})
        kept = states.get("kept", 0) + states.get("rewritten", 0)
        if curated.stats.get("rows_in") != source.rows or kept != curated.rows:
            bad.append(source.name)
    counts = _summed_stats(curated_conversations.parts)["states"]
    return dg.AssetCheckResult(
        asset_key=CURATED,
        check_name="rows_are_conserved",
        passed=aligned and not bad,
        metadata={
            "in": conversations.rows,
            **counts,
            "curated": curated_conversations.rows,
            "parts": len(names),
            # False: the curated set, its ledger and the input name different parts (a check
            # run alone after a new drop was combined but not yet curated, say).
            "parts_aligned": aligned,
            "parts_not_conserved": bad,
        },
    )


def curated_schema_and_size(
    curated_conversations: PartSet, conversations: PartSet
) -> dg.AssetCheckResult:
    """Same columns and types as the input (every part, from its file's schema), not empty."""
    expected = (
        {
            pl.read_parquet_schema(p) == pl.read_parquet_schema(conversations.paths()[0])
            for p in curated_conversations.paths()
        }
        if conversations.parts
        else {False}
    )
    same = expected == {True}
    rows = curated_conversations.rows
    return dg.AssetCheckResult(
        asset_key=CURATED,
        check_name="curated_schema_and_size",
        passed=same and rows > 0,
        metadata={"rows": rows, "same_schema": same},
    )


def no_exact_duplicates_left(
    curated_conversations: PartSet, curation_ledger: PartSet
) -> dg.AssetCheckResult:
    """After dedup, no two kept conversations have the same normalised text. Each part's kept
    rows have a hash of that text beside the ledger (``keys``); rows whose hashes meet are
    compared as text. Only the hash column is read for every row (8 bytes a row); row ids
    only for hashes that meet."""
    suspects = None
    if curation_ledger.parts and "keys" in curation_ledger.members:
        hashes = curation_ledger.scan("keys").select("key").collect()["key"]
        if hashes.len() == curated_conversations.rows:
            # Sorted, a repeated hash sits next to its twin: a sort and a shift are several
            # times cheaper than hashing every key again (``is_duplicated``).
            ordered = hashes.sort()
            met = ordered.filter(ordered == ordered.shift(1)).unique()
            suspects = (
                curation_ledger.scan("keys").filter(pl.col("key").is_in(met.implode())).collect()
                if met.len()
                else pl.DataFrame(schema={"row_id": pl.String, "key": pl.UInt64})
            )
    if suspects is None:
        keys = _check_keys(curated_conversations.read())
        suspects = keys.filter(pl.col("key").is_duplicated())
    duplicates = 0
    if suspects.height:
        texts = (
            curated_conversations.scan()
            .filter(pl.col("id").is_in(suspects["row_id"].implode()))
            .select(exact_text_key().alias("text"))
            .collect()
        )
        duplicates = texts.height - texts["text"].n_unique()
    rate = duplicates / max(curated_conversations.rows, 1)
    return dg.AssetCheckResult(
        asset_key=CURATED,
        check_name="no_exact_duplicates_left",
        passed=duplicates == 0,
        metadata={"duplicates": duplicates, "rate": rate},
    )


def residual_flags(curated_conversations: PartSet) -> dg.AssetCheckResult:
    """Kept rows that a rule only flagged, by rule: a warning when more than 10% are flagged."""
    counts = _summed_stats(curated_conversations.parts)["flagged"]
    share = sum(counts.values()) / max(curated_conversations.rows, 1)
    return dg.AssetCheckResult(
        asset_key=CURATED,
        check_name="residual_flags",
        passed=share <= 0.10,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"flagged_rows": counts, "flagged_share": share},
    )
