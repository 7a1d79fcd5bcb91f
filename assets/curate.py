# Dagster reads these annotations at definition time: no "from __future__ import annotations".
"""Curation: filters with a per-row ledger, and the training sets built from what survives."""

import dataclasses
import hashlib
from typing import Any

import dagster as dg
import polars as pl
from pydantic import Field

from assets.io_manager import preview_markdown
from assets.resources import StorageResource
from curation.curate import FILTERS, build_filters, filter_class
from curation.datasets import (
    ExportConfig,
    export,
    preference_rows,
    pretrain_rows,
    prompt_rows,
    sft_rows,
)
from curation.feedback.pairs import MixConfig, mix_preferences
from curation.incremental import curate_incremental, load_state, save_state
from curation.preferences import curate_preferences
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
    by_rule = (
        ledger.join(states.select("row_id", "source"), on="row_id", how="left")
        .group_by("rule", "verdict", "source")
        .agg(pl.col("row_id").n_unique().alias("rows"))
        .sort("rule", "source")
    )
    return preview_markdown(by_rule, 200)


def dropped_examples(states: pl.DataFrame, conversations: pl.DataFrame, per_rule: int = 2) -> str:
    examples = (
        states.filter(pl.col("state") == "dropped")
        .group_by("rule", maintain_order=True)
        .head(per_rule)
        .join(conversations.select(pl.col("id").alias("row_id"), "messages"), on="row_id")
        .select(
            "rule",
            "reason",
            pl.col("messages")
            .list.last()
            .struct.field("content")
            .str.slice(0, 160)
            .alias("answer"),
        )
    )
    return preview_markdown(examples, 100)


@dg.multi_asset(
    group_name=GROUP,
    outs={
        "curated_conversations": dg.AssetOut(kinds={"polars"}),
        "curation_ledger": dg.AssetOut(kinds={"polars"}),
    },
    deps=["project_tokenizer"],
)
def curated_conversations(
    context: dg.AssetExecutionContext,
    config: CurationConfig,  # type: ignore[valid-type]
    storage: StorageResource,
    conversations: pl.DataFrame,
) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
    """Conversations after the reference, safety, PII, options, quality, length and duplicate
    filters; the ledger has every rule that fired and each row's final state.

    Incremental (curation.incremental): rows curated before, unchanged, under the same config,
    filter code and tokenizer, are not filtered again, and duplicates are decided again from
    their kept keys and signatures; the result is the full run's. The state lives under the
    outputs folder; metadata says whether a run was incremental or full, and why."""
    tokenizer = load_tokenizer(storage.path("project_tokenizer"))
    filters = build_filters(filter_mapping(config), TokenCounter(tokenizer))
    state_dir = storage.path("curation_state", "curated_conversations")
    tokenizer_id = hashlib.sha256(tokenizer.to_str().encode()).hexdigest()
    result, state, run = curate_incremental(
        conversations, filters, load_state(state_dir), context=f"tokenizer {tokenizer_id}"
    )
    if state is not None:
        save_state(state, state_dir)
    context.add_output_metadata(
        {
            **result.counts(),
            "rows_in": conversations.height,
            "mode": run.mode,
            "mode_reason": run.reason,
            "rows_filtered": run.rows_filtered,
            "rows_signed": run.rows_signed,
            "seconds": dg.MetadataValue.json(run.seconds),
            "by_rule": dg.MetadataValue.md(counts_table(result.ledger, result.states)),
            "dropped_examples": dg.MetadataValue.md(dropped_examples(result.states, conversations)),
        },
        output_name="curated_conversations",
    )
    return result.curated, {"ledger": result.ledger, "states": result.states}


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
    preferences_human: pl.DataFrame,
) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
    """Human comparison pairs, judged on prompt and chosen answer, PII removed on every side."""
    counter = TokenCounter(load_tokenizer(storage.path("project_tokenizer")))
    result = curate_preferences(preferences_human, build_filters(filter_mapping(config), counter))
    context.add_output_metadata(
        {**result.counts(), "rows_in": preferences_human.height},
        output_name="curated_preferences",
    )
    return result.curated, {"ledger": result.ledger, "states": result.states}


class DatasetConfig(dg.Config):
    eval_fraction: float = Field(default=0.05, description="Share of rows in the test split.")


def _export(
    name: str, rows: pl.DataFrame, storage: StorageResource, config: DatasetConfig, card: dict
) -> dg.MaterializeResult:
    summary = export(name, rows, storage.path("datasets"), ExportConfig(config.eval_fraction), card)
    return dg.MaterializeResult(
        metadata={
            "train_rows": summary["rows"]["train"],
            "test_rows": summary["rows"]["test"],
            "by_source": summary["by_source"],
            "path": dg.MetadataValue.path(summary["path"]),
            "hf_path": dg.MetadataValue.path(summary["hf_path"]),
        }
    )


def _rule_counts(ledger: dict[str, pl.DataFrame]) -> dict[str, int]:
    counts = ledger["ledger"].group_by("rule").agg(pl.col("row_id").n_unique()).sort("rule")
    return dict(counts.iter_rows())


@dg.asset(group_name=GROUP, kinds={"parquet", "huggingface"})
def sft_dataset(
    config: DatasetConfig,
    storage: StorageResource,
    curated_conversations: pl.DataFrame,
    curation_ledger: dict[str, pl.DataFrame],
) -> dg.MaterializeResult:
    """TRL conversational SFT set (``messages``), train/test by id hash."""
    card = {"filters": _rule_counts(curation_ledger)}
    return _export("sft", sft_rows(curated_conversations), storage, config, card)


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
    return dg.MaterializeResult(metadata={**result.metadata, "mix": dg.MetadataValue.json(report)})


@dg.asset(group_name=GROUP, kinds={"parquet", "huggingface"})
def prompt_dataset(
    config: DatasetConfig, storage: StorageResource, curated_conversations: pl.DataFrame
) -> dg.MaterializeResult:
    """Prompts for PPO/GRPO/RLOO and for AI-feedback candidates (``prompt``)."""
    return _export("prompt", prompt_rows(curated_conversations), storage, config, {})


@dg.asset(group_name=GROUP, kinds={"parquet", "huggingface"})
def pretrain_dataset(
    config: DatasetConfig, storage: StorageResource, pretrain_corpus: pl.DataFrame
) -> dg.MaterializeResult:
    """Pretraining ``text`` set."""
    return _export("pretrain", pretrain_rows(pretrain_corpus), storage, config, {})


# --- checks beside the assets they guard --------------------------------------------------------


@dg.asset_check(
    asset="curated_conversations",
    blocking=True,
    additional_ins={"curation_ledger": dg.AssetIn(), "conversations": dg.AssetIn()},
)
def rows_are_conserved(
    curated_conversations: pl.DataFrame,
    curation_ledger: dict[str, pl.DataFrame],
    conversations: pl.DataFrame,
) -> dg.AssetCheckResult:
    """in == kept + rewritten + dropped, and every kept row is in the curated set."""
    states = curation_ledger["states"]
    counts = dict(states.group_by("state").len().iter_rows())
    kept = counts.get("kept", 0) + counts.get("rewritten", 0)
    ok = states.height == conversations.height and kept == curated_conversations.height
    return dg.AssetCheckResult(
        passed=ok,
        metadata={"in": conversations.height, **counts, "curated": curated_conversations.height},
    )


@dg.asset_check(asset="curated_conversations", additional_ins={"conversations": dg.AssetIn()})
def curated_schema_and_size(
    curated_conversations: pl.DataFrame, conversations: pl.DataFrame
) -> dg.AssetCheckResult:
    """Same columns and types as the input, and not empty."""
    same = curated_conversations.schema == conversations.schema
    return dg.AssetCheckResult(
        passed=same and curated_conversations.height > 0,
        metadata={"rows": curated_conversations.height, "same_schema": same},
    )


@dg.asset_check(asset="curated_conversations")
def no_exact_duplicates_left(curated_conversations: pl.DataFrame) -> dg.AssetCheckResult:
    """After dedup, no two kept conversations have the same normalised text."""
    key = (
        curated_conversations["messages"]
        .list.eval(pl.element().struct.field("content"))
        .list.join("\n")
        .str.to_lowercase()
        .str.replace_all(r"\s+", " ")
    )
    duplicates = curated_conversations.height - key.n_unique()
    rate = duplicates / max(curated_conversations.height, 1)
    return dg.AssetCheckResult(
        passed=duplicates == 0, metadata={"duplicates": duplicates, "rate": rate}
    )


@dg.asset_check(asset="curated_conversations", additional_ins={"curation_ledger": dg.AssetIn()})
def residual_flags(
    curated_conversations: pl.DataFrame, curation_ledger: dict[str, pl.DataFrame]
) -> dg.AssetCheckResult:
    """Kept rows that a rule only flagged, by rule: a warning when more than 10% are flagged."""
    flagged = (
        curation_ledger["ledger"]
        .filter(pl.col("verdict") == "flag")
        .join(curated_conversations.select(pl.col("id").alias("row_id")), on="row_id", how="semi")
        .group_by("rule")
        .agg(pl.col("row_id").n_unique())
    )
    counts = dict(flagged.iter_rows())
    share = sum(counts.values()) / max(curated_conversations.height, 1)
    return dg.AssetCheckResult(
        passed=share <= 0.10,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"flagged_rows": counts, "flagged_share": share},
    )
