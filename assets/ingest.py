"""Raw sources and the canonical tables built from them."""
# Dagster reads these annotations at definition time: no "from __future__ import annotations".

import dagster as dg
import polars as pl
from pydantic import Field

from assets.io_manager import frame_metadata
from assets.partitions import (
    DEFAULT_DROPS_ROOT,
    DROPS,
    DropError,
    drop_files,
    load_drop_table,
    qualify_positional_ids,
    replace_by_id,
)
from assets.resources import resolve
from curation.errors import SourceError
from curation.ingest import IngestResult, ReadOptions, ingest
from curation.readers.text import read_text_corpus

GROUP = "ingest"


class SourceConfig(dg.Config):
    """A raw source: files (or HF dataset names/paths for ``hf``) in one format."""

    paths: list[str] = Field(description="Files to read; relative paths are from the project root.")
    format: str = Field(description="oasst | flan | hh | ultrafeedback | jsonl | parquet | hf")
    source: str | None = Field(default=None, description="Name for the source column.")
    columns: dict[str, str] = Field(
        default_factory=dict, description="Canonical name → input column, for generic formats."
    )
    split: str = Field(default="train", description="Split for hf datasets.")


def reason_counts(frame: pl.DataFrame, column: str) -> dict[str, int]:
    if frame.height == 0:
        return {}
    counts = frame.group_by(column).len().sort("len", descending=True)
    return dict(zip(counts[column].to_list(), counts["len"].to_list(), strict=True))


def raw_source_asset(
    name: str, fmt: str, paths: list[str], description: str
) -> dg.AssetsDefinition:
    """One raw asset per source, its config defaulting to the embedded sample files."""
    config_class = type(
        f"{name.title().replace('_', '')}Config",
        (SourceConfig,),
        {
            "__annotations__": {"paths": list[str], "format": str},
            "paths": Field(default=paths, description="Files to read (project-relative)."),
            "format": Field(default=fmt, description="Reader format."),
        },
    )

    @dg.asset(name=name, group_name=GROUP, description=description, kinds={"polars", "parquet"})
    def _raw(context: dg.AssetExecutionContext, config: config_class) -> dict[str, pl.DataFrame]:
        options = ReadOptions(source=config.source, columns=config.columns, split=config.split)
        inputs = config.paths if config.format == "hf" else [resolve(p) for p in config.paths]
        result = ingest(config.format, inputs, options)
        context.add_output_metadata(
            {
                **result.counts(),
                "rejected_reasons": reason_counts(result.rejected, "reason"),
                "excluded_rules": reason_counts(result.ledger, "rule"),
            }
        )
        return as_tables(result)

    return _raw


def as_tables(result: IngestResult) -> dict[str, pl.DataFrame]:
    return {
        "conversations": result.conversations,
        "preferences": result.preferences,
        "rejected": result.rejected,
        "ledger": result.ledger,
    }


RAW_SOURCES = {
    "raw_oasst": (
        "oasst",
        ["data/samples/oasst_trees.jsonl", "data/samples/oasst_messages.jsonl"],
        "OpenAssistant trees and flat messages: best-ranked threads and ranked siblings.",
    ),
    "raw_flan": (
        "flan",
        ["data/samples/flan.jsonl", "data/samples/synthetic_flan.jsonl"],
        "FLAN collection rows (inputs/targets), all task sources and templates.",
    ),
    "raw_hh": (
        "hh",
        ["data/samples/hh_rlhf.jsonl"],
        "Anthropic HH-RLHF chosen/rejected transcripts.",
    ),
    "raw_ultrafeedback": (
        "ultrafeedback",
        ["data/samples/ultrafeedback.jsonl", "data/samples/synthetic_ultrafeedback.jsonl"],
        "UltraFeedback completions ranked by overall score.",
    ),
    "raw_chat": (
        "jsonl",
        ["data/samples/synthetic_chat.jsonl"],
        "Generic chat JSONL (messages column): the synthetic checkable tasks.",
    ),
}

raw_assets = [
    raw_source_asset(name, fmt, paths, description)
    for name, (fmt, paths, description) in RAW_SOURCES.items()
]
RAW_KEYS = [dg.AssetKey(name) for name in RAW_SOURCES]


class TextSourceConfig(dg.Config):
    paths: list[str] = Field(
        default=["data/samples/pretrain.jsonl"],
        description="JSONL/Parquet with a text field, or .txt files.",
    )
    source: str = "pretrain"


@dg.asset(group_name=GROUP, kinds={"polars", "parquet"})
def raw_pretrain(
    context: dg.AssetExecutionContext, config: TextSourceConfig
) -> dict[str, pl.DataFrame]:
    """The pretraining text corpus (one document per row)."""
    corpus = read_text_corpus([resolve(p) for p in config.paths], config.source)
    context.add_output_metadata(
        {"documents": corpus.texts.height, "rejected": corpus.rejected.height}
    )
    return {"texts": corpus.texts, "rejected": corpus.rejected}


class DropConfig(dg.Config):
    root: str = Field(
        default=DEFAULT_DROPS_ROOT,
        description="Watched folder holding one sub-folder per drop (project-relative or "
        "absolute; POSTFORGE_DROPS sets the default).",
    )


@dg.asset(
    group_name=GROUP,
    partitions_def=DROPS,
    kinds={"polars", "parquet"},
    description="One drop (a snapshot folder of source files) read on its own: a new drop costs "
    "only its own rows, and a drop that cannot be read fails its partition alone.",
)
def raw_drops(context: dg.AssetExecutionContext, config: DropConfig) -> dict[str, pl.DataFrame]:
    if not context.has_partition_key:
        # The demo materializes every asset in one unpartitioned run: no drop is selected, and
        # combining reads drops from their partitions, never from this empty output.
        context.add_output_metadata({"drop": "none selected"})
        return as_tables(IngestResult())
    folder = resolve(config.root) / context.partition_key
    try:
        results = [ingest(fmt, files) for fmt, files in drop_files(folder).items()]
    except (DropError, SourceError) as error:
        # Bad input fails this drop alone, and retrying would read the same bytes again.
        raise dg.Failure(f"drop {context.partition_key!r}: {error}", allow_retries=False) from error
    result = IngestResult.concat(results)
    result.conversations = qualify_positional_ids(result.conversations, context.partition_key)
    result.preferences = qualify_positional_ids(result.preferences, context.partition_key)
    context.add_output_metadata(
        {
            **result.counts(),
            "drop": str(folder),
            "rejected_reasons": reason_counts(result.rejected, "reason"),
        }
    )
    return as_tables(result)


def _combine(
    context: dg.AssetExecutionContext, raw: dict[str, dict[str, pl.DataFrame]], table: str
) -> pl.DataFrame:
    """The embedded sources' table, then every ingested drop's in registration order; a row a
    later drop delivers again (same ``id``) is replaced by the later version."""
    drops = load_drop_table(context.instance, raw_drops.key, table)
    parts = [tables[table] for tables in raw.values() if table in tables]
    parts += list(drops.values())
    if not drops or table not in ("conversations", "preferences"):
        return pl.concat(parts, how="vertical")
    combined, replaced = replace_by_id(parts)
    context.add_output_metadata({"drops": list(drops), "replaced_by_later_drop": replaced})
    return combined


@dg.asset(
    group_name=GROUP,
    ins={k.path[0]: dg.AssetIn(k) for k in RAW_KEYS},
    deps=[raw_drops],
    kinds={"polars"},
)
def conversations(
    context: dg.AssetExecutionContext, **raw: dict[str, pl.DataFrame]
) -> pl.DataFrame:
    """Every source's conversations in the canonical schema (one row per conversation), from
    the embedded sources and every drop ingested so far."""
    combined = _combine(context, raw, "conversations")
    context.add_output_metadata({"by_source": reason_counts(combined, "source")})
    return combined


@dg.asset(
    group_name=GROUP,
    ins={k.path[0]: dg.AssetIn(k) for k in RAW_KEYS},
    deps=[raw_drops],
    kinds={"polars"},
)
def preferences_human(
    context: dg.AssetExecutionContext, **raw: dict[str, pl.DataFrame]
) -> pl.DataFrame:
    """Comparison data that came with the sources (OpenAssistant sibling ranks, HH-RLHF,
    UltraFeedback ratings), as TRL prompt/chosen/rejected rows with their origin."""
    combined = _combine(context, raw, "preferences")
    context.add_output_metadata({"by_source": reason_counts(combined, "source")})
    return combined


@dg.asset(
    group_name=GROUP,
    ins={**{k.path[0]: dg.AssetIn(k) for k in RAW_KEYS}, "raw_pretrain": dg.AssetIn()},
    deps=[raw_drops],
    kinds={"polars"},
)
def ingest_rejects(
    context: dg.AssetExecutionContext, **raw: dict[str, pl.DataFrame]
) -> dict[str, pl.DataFrame]:
    """Nothing is lost: unreadable rows (file, line, field, reason) and rows read but excluded
    at ingest (deleted, failed review, spam), from every source and drop."""
    rejected = _combine(context, raw, "rejected")
    ledger = _combine(context, {k: v for k, v in raw.items() if "ledger" in v}, "ledger")
    context.add_output_metadata(
        {
            "rejected_reasons": reason_counts(rejected, "reason"),
            "excluded_rules": reason_counts(ledger, "rule"),
            **{f"rejected_{k}": v for k, v in frame_metadata(rejected).items() if k == "preview"},
        }
    )
    return {"rejected": rejected, "ledger": ledger}


@dg.asset(group_name=GROUP, ins={"raw_pretrain": dg.AssetIn()}, kinds={"polars"})
def pretrain_corpus(raw_pretrain: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Pretraining documents (``id``, ``source``, ``text``, provenance)."""
    return raw_pretrain["texts"]
