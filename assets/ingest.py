"""Raw sources and the canonical tables built from them."""
# Dagster reads these annotations at definition time: no "from __future__ import annotations".

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
from pydantic import Field
from upath import UPath

from assets.io_manager import previous_table, read_frame
from assets.partitions import (
    DEFAULT_DROPS_ROOT,
    DROP_CONTENT,
    DROPS,
    Deliveries,
    DropError,
    DropRecord,
    drop_content_hash,
    drop_files,
    drop_records,
    qualify_positional_ids,
    without_later_ids,
)
from assets.resources import resolve
from curation.errors import SourceError
from curation.ingest import IngestResult, ReadOptions, ingest
from curation.readers.text import read_text_corpus
from curation.storage import Part, PartSet, PartUpdate

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


CONTENT_HASH = "content_hash"


def content_hash(tables: dict[str, pl.DataFrame]) -> str:
    """A digest of a raw asset's tables, recorded with its materialization: the combined
    tables compare digests to tell whether the embedded sources changed, without reading
    them (a refresh materializes the raw assets again, mostly with the same content)."""
    digest = hashlib.sha256()
    for name, frame in sorted(tables.items()):
        digest.update(f"{name}:{frame.height}:{frame.hash_rows(seed=7).sum()}".encode())
    return digest.hexdigest()[:32]


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
        with bad_input_fails_once(name):
            result = ingest(config.format, inputs, options)
        tables = as_tables(result)
        context.add_output_metadata(
            {
                **result.counts(),
                "rejected_reasons": reason_counts(result.rejected, "reason"),
                "excluded_rules": reason_counts(result.ledger, "rule"),
                CONTENT_HASH: content_hash(tables),
            }
        )
        return tables

    return _raw


@contextlib.contextmanager
def bad_input_fails_once(asset: str) -> Iterator[None]:
    """A source that cannot be read as configured (missing, empty, another format) fails the
    step without the ingest retry policy's attempts: a retry reads the same bytes again. The
    policy is for I/O that can pass on a second try (a network disk, an object store)."""
    try:
        yield
    except SourceError as error:
        raise dg.Failure(f"{asset}: {error}", allow_retries=False) from error


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
    with bad_input_fails_once("raw_pretrain"):
        corpus = read_text_corpus([resolve(p) for p in config.paths], config.source)
    tables = {"texts": corpus.texts, "rejected": corpus.rejected}
    context.add_output_metadata(
        {
            "documents": corpus.texts.height,
            "rejected": corpus.rejected.height,
            CONTENT_HASH: content_hash(tables),
        }
    )
    return tables


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
        by_format = drop_files(folder)
        # before the read: a file changed while it is read makes the next sensor tick see news
        content = drop_content_hash(folder)
        results = [ingest(fmt, files) for fmt, files in by_format.items()]
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
            # what new_drop_sensor compares with the files on disk, however the run was launched
            DROP_CONTENT: content,
            "rejected_reasons": reason_counts(result.rejected, "reason"),
        }
    )
    return as_tables(result)


EMBEDDED = "sources"


def _drop_part(drop: str) -> str:
    return f"drop={drop}"


class _Lookups:
    """What the combined tables read from the instance (the drops' and the embedded sources'
    latest materializations), looked up once per step for all three tables."""

    def __init__(self, instance: dg.DagsterInstance):
        self.instance = instance
        self._sources: dict[dg.AssetKey, tuple[str, str]] = {}
        self._drops: dict[str, DropRecord] | None = None

    def drops(self) -> dict[str, DropRecord]:
        if self._drops is None:
            self._drops = drop_records(self.instance, raw_drops.key)
        return self._drops

    def source(self, key: dg.AssetKey) -> tuple[str, str]:
        """(its content's version, where it is stored)."""
        if key not in self._sources:
            records = self.instance.fetch_materializations(key, limit=1).records
            materialization = records[0].asset_materialization if records else None
            if materialization is None:
                raise DropError(f"{key.to_user_string()}: not materialized yet")
            metadata = materialization.metadata
            entry = metadata.get(CONTENT_HASH)
            version = (
                entry.value if entry is not None else f"materialization {records[0].storage_id}"
            )
            self._sources[key] = (str(version), str(metadata["path"].value))
        return self._sources[key]


def _embedded_sources(lookups: _Lookups, keys: list[dg.AssetKey]) -> tuple[str, dict[str, str]]:
    """(a tag of the embedded sources' current content, raw asset → where it is stored), from
    their latest materializations' metadata: no rows are read."""
    digest = hashlib.sha256()
    paths = {}
    for key in keys:
        version, path = lookups.source(key)
        digest.update(f"{key.to_user_string()}={version};".encode())
        paths[key.to_user_string()] = path
    return "sources " + digest.hexdigest()[:16], paths


def _combine(
    context: dg.AssetExecutionContext,
    key: dg.AssetKey,
    sources: list[dg.AssetKey],
    members: tuple[str, ...],
    stats: Callable[[dict[str, pl.DataFrame]], dict[str, dict[str, int]]],
    replace: bool,
    lookups: _Lookups,
    count: str | None = None,
) -> PartUpdate:
    """``key``'s table (the op's output of that name): the embedded sources' tables as one
    part, then one part per ingested drop in registration order; a row a later drop delivers
    again (same ``id``; when ``replace``) is replaced by the later version when its content
    changed, and dropped from the later drop when it did not (``without_later_ids``). A refresh
    after a new drop writes that drop's part only (and reads only the ``id`` column of the
    others, then the stored rows it delivers again, to compare them); any other change (a drop
    ingested again, the embedded sources changed, rows replaced) builds every part. A drop
    whose ingest reported no rows under ``count`` adds no part: a drop of chats leaves the
    comparison table as it was."""
    embedded_tag, embedded_paths = _embedded_sources(lookups, sources)
    drops = {
        d: record
        for d, record in lookups.drops().items()
        if count is None or record.counts.get(count, 1) > 0
    }
    wanted = [(EMBEDDED, embedded_tag)]
    wanted += [(_drop_part(d), record.tag) for d, record in drops.items()]
    paths = {_drop_part(d): record.path for d, record in drops.items()}

    def load(name: str) -> dict[str, pl.DataFrame]:
        if name == EMBEDDED:
            # The embedded sources' tables, in the order of ``sources``; a source without a
            # table (the pretraining corpus has no ledger) adds nothing to it.
            out = {}
            for m in members:
                files = [
                    UPath(embedded_paths[k.to_user_string()]) / f"{m}.parquet" for k in sources
                ]
                frames = [read_frame(f) for f in files if f.exists()]
                out[m] = pl.concat(frames, how="vertical")
            return out
        folder = UPath(paths[name])
        return {m: read_frame(folder / f"{m}.parquet") for m in members}

    base = previous_table(context.instance, key)
    # A part that lost rows to a later drop has "|minus ..." after its source's tag.
    known = [(p.name, p.tag.split("|")[0]) for p in base.parts] if base is not None else []
    if base is None or base.members != _stored_members(members) or wanted[: len(known)] != known:
        return _combine_all(context, key, wanted, load, members, stats, replace, base, drops)
    fresh = {name: load(name) for name, _ in wanted[len(known) :]}
    tags = dict(wanted[len(known) :])
    deliveries = Deliveries([], 0, 0)
    if replace and fresh:
        table = members[0]
        new = [fresh[n][table] for n in fresh]
        # The stored rows the new parts deliver again, first: unchanged ones stay where they
        # are (the new copies go), a changed one leaves its part, and then every part is built.
        earlier = _stored_copies(base, new) if known and base is not None else None
        deliveries = without_later_ids(new if earlier is None else [earlier, *new])
        if earlier is not None:
            if deliveries.parts[0].height < earlier.height:
                return _combine_all(
                    context, key, wanted, load, members, stats, replace, base, drops
                )
            deliveries = deliveries._replace(parts=deliveries.parts[1:])
        tags = _tags_after_losses(tags, new, deliveries.parts)
        fresh = {n: {table: k} for n, k in zip(fresh, deliveries.parts, strict=True)}
    update = PartUpdate(
        parts=[p for p in (base.parts if base is not None and known else [])]
        + [
            Part(name, tags[name], rows=_rows(fresh[name]), stats=stats(fresh[name]))
            for name, _ in wanted[len(known) :]
        ],
        new={n: _stored(f, members) for n, f in fresh.items()},
        base=base,
        members=_stored_members(members),
    )
    context.add_output_metadata(
        {
            "drops": list(drops),
            "replaced_by_later_drop": deliveries.replaced,
            "redelivered": deliveries.redelivered,
            "combine": "append",
            "parts_written": list(fresh),
        },
        output_name=key.to_user_string(),
    )
    return update


def _stored_copies(base: PartSet, new: list[pl.DataFrame]) -> pl.DataFrame:
    """The stored rows whose ``id`` a new part delivers again, every column: the ``id`` column
    of every part is scanned (as before any row is compared), and only parts holding such a row
    are read whole. Usually there is none, and nothing but ids is read."""
    ids = pl.concat([frame["id"].cast(pl.String) for frame in new]).unique().implode()
    paths = [str(path) for path in base.paths()]
    if not paths:
        return pl.DataFrame()
    holding = (
        pl.scan_parquet(paths, include_file_paths="_part_file")
        .select("id", "_part_file")
        .filter(pl.col("id").is_in(ids))
        .select(pl.col("_part_file").unique())
        .collect()["_part_file"]
        .to_list()
    )
    if not holding:
        return pl.DataFrame()
    # In the stored order; should a path come back spelled otherwise, every part is read.
    ordered = [path for path in paths if path in set(holding)] or paths
    return pl.scan_parquet(ordered).filter(pl.col("id").is_in(ids)).collect()


def _tags_after_losses(
    tags: dict[str, str], frames: list[pl.DataFrame], kept: list[pl.DataFrame]
) -> dict[str, str]:
    """A part that lost rows to another gets its own tag (what it holds is no longer what its
    source delivered): "|minus" and the count and a digest of the ids it lost. Appending and
    building every part tag a part alike, so curation sees a part as unchanged either way."""
    out = dict(tags)
    for name, frame, part in zip(tags, frames, kept, strict=True):
        lost = frame.join(part.select("id"), on="id", how="anti")
        if lost.height:
            digest = hashlib.sha256("\n".join(sorted(lost["id"])).encode()).hexdigest()
            out[name] += f"|minus {lost.height} {digest[:12]}"
    return out


def _combine_all(
    context: dg.AssetExecutionContext,
    key: dg.AssetKey,
    wanted: list[tuple[str, str]],
    load: Callable[[str], dict[str, pl.DataFrame]],
    members: tuple[str, ...],
    stats: Callable[[dict[str, pl.DataFrame]], dict[str, dict[str, int]]],
    replace: bool,
    base: PartSet | None,
    drops: dict,
) -> PartUpdate:
    frames = {name: load(name) for name, _ in wanted}
    deliveries = Deliveries([], 0, 0)
    tags = dict(wanted)
    if replace:
        table = members[0]
        delivered = [f[table] for f in frames.values()]
        deliveries = without_later_ids(delivered)
        tags = _tags_after_losses(tags, delivered, deliveries.parts)
        frames = {n: {table: k} for n, k in zip(frames, deliveries.parts, strict=True)}
    context.add_output_metadata(
        {
            "drops": list(drops),
            "replaced_by_later_drop": deliveries.replaced,
            "redelivered": deliveries.redelivered,
            "combine": "rebuild",
            "parts_written": list(frames),
        },
        output_name=key.to_user_string(),
    )
    return PartUpdate(
        parts=[Part(n, tags[n], rows=_rows(frames[n]), stats=stats(frames[n])) for n, _ in wanted],
        new={n: _stored(f, members) for n, f in frames.items()},
        base=base,
        members=_stored_members(members),
    )


def _stored_members(members: tuple[str, ...]) -> tuple[str, ...]:
    """A one-member table is stored as plain part files (readers get a frame)."""
    return members if len(members) > 1 else ()


def _stored(frames: dict[str, pl.DataFrame], members: tuple[str, ...]) -> Any:
    return frames if len(members) > 1 else frames[members[0]]


def _rows(frames: dict[str, pl.DataFrame]) -> int:
    return next(iter(frames.values())).height if frames else 0


def _by_source(frames: dict[str, pl.DataFrame]) -> dict[str, dict[str, int]]:
    return {"by_source": reason_counts(next(iter(frames.values())), "source")}


def _reject_stats(frames: dict[str, pl.DataFrame]) -> dict[str, dict[str, int]]:
    return {
        "rejected_reasons": reason_counts(frames["rejected"], "reason"),
        "excluded_rules": reason_counts(frames["ledger"], "rule"),
    }


# The tags Dagster puts on a partition's run and on the runs automation launches.
PARTITION_TAG = "dagster/partition"
AUTOMATION_TAG = "dagster/from_automation_condition"
RAW_PRETRAIN = dg.AssetKey("raw_pretrain")
COMBINED_DEPS = {
    "conversations": {*RAW_KEYS, raw_drops.key},
    "preferences_human": {*RAW_KEYS, raw_drops.key},
    "ingest_rejects": {*RAW_KEYS, raw_drops.key, RAW_PRETRAIN},
}


@dg.multi_asset(
    group_name=GROUP,
    outs={
        "conversations": dg.AssetOut(
            kinds={"polars"},
            is_required=False,
            description="Every source's conversations in the canonical schema (one row per "
            "conversation), from the embedded sources and every drop ingested so far: one part "
            "per drop, read as one table downstream.",
        ),
        "preferences_human": dg.AssetOut(
            kinds={"polars"},
            is_required=False,
            description="Comparison data that came with the sources (OpenAssistant sibling "
            "ranks, HH-RLHF, UltraFeedback ratings), as TRL prompt/chosen/rejected rows with "
            "their origin.",
        ),
        "ingest_rejects": dg.AssetOut(
            kinds={"polars"},
            is_required=False,
            description="Nothing is lost: unreadable rows (file, line, field, reason) and rows "
            "read but excluded at ingest (deleted, failed review, spam), from every source and "
            "drop.",
        ),
    },
    deps=[*RAW_KEYS, raw_drops, RAW_PRETRAIN],
    internal_asset_deps=COMBINED_DEPS,
    can_subset=True,
)
def combined_tables(context: dg.AssetExecutionContext) -> Iterator[dg.Output]:
    """The three tables combined from the raw sources and drops, in one step (any subset of
    them can be materialized). Each is stored as one part per drop (see ``_combine``); the raw
    assets are dependencies, not inputs: their content digests and stored paths come from the
    instance, and only a new drop's files are read. One step instead of three: each step costs
    Dagster's floor (0.16-0.18 s on the bench VM), a fifth of a refresh's in-step time at 100k
    rows.

    In a run no person asked for table by table (a drop's run: the schedule, a backfill; or a
    run automation launched after a drop's ingest), a table the drops left as stored is not
    written again and not yielded: what depends on it is skipped (a drop of chats does not
    re-run the preference branch's two steps). A person's materialization always writes."""
    selected = context.selected_output_names
    lookups = _Lookups(context.instance)
    tags = context.run.tags
    unattended = PARTITION_TAG in tags or tags.get(AUTOMATION_TAG) == "true"
    if "conversations" in selected:
        update = _combine(
            context,
            dg.AssetKey("conversations"),
            RAW_KEYS,
            ("conversations",),
            _by_source,
            True,
            lookups,
            count="conversations",
        )
        if not (unattended and _unchanged(update)):
            metadata = {"by_source": _summed(update, "by_source")}
            yield dg.Output(update, "conversations", metadata=metadata)
    if "preferences_human" in selected:
        update = _combine(
            context,
            dg.AssetKey("preferences_human"),
            RAW_KEYS,
            ("preferences",),
            _by_source,
            True,
            lookups,
            count="preferences",
        )
        if not (unattended and _unchanged(update)):
            metadata = {"by_source": _summed(update, "by_source")}
            yield dg.Output(update, "preferences_human", metadata=metadata)
    if "ingest_rejects" in selected:
        update = _combine(
            context,
            dg.AssetKey("ingest_rejects"),
            [*RAW_KEYS, RAW_PRETRAIN],
            ("rejected", "ledger"),
            _reject_stats,
            False,
            lookups,
        )
        metadata = {
            "rejected_reasons": _summed(update, "rejected_reasons"),
            "excluded_rules": _summed(update, "excluded_rules"),
        }
        yield dg.Output(update, "ingest_rejects", metadata=metadata)


def _unchanged(update: PartUpdate) -> bool:
    """Nothing written: the stored parts stand as they are."""
    base = update.base
    return not update.new and base is not None and update.parts == base.parts


def _summed(update: PartUpdate, stat: str) -> dict[str, int]:
    return PartSet(Path("."), update.parts).summed(stat)


@dg.asset(group_name=GROUP, ins={"raw_pretrain": dg.AssetIn()}, kinds={"polars"})
def pretrain_corpus(raw_pretrain: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Pretraining documents (``id``, ``source``, ``text``, provenance)."""
    return raw_pretrain["texts"]
