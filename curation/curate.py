"""The curation pipeline: run filters in order over conversations, apply drops and rewrites, and
keep a ledger in which every input row ends in exactly one final state.

Order matters and is deliberate: structural checks first (nothing else can run on a row without
messages), then content filters that may rewrite (PII redaction, reference stripping, options),
then safety and length on the rewritten text, and duplicates last, so the copy we keep of a
duplicate cluster is one that survived every other filter.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from curation.filters.base import (
    FINDINGS,
    MESSAGE_ROWS,
    VERDICTS,
    Batch,
    Filter,
    Findings,
    Policy,
)
from curation.schema import LEDGER, MESSAGES, ROLES

STAGE = "curate"
STATES = pl.Schema(
    {
        "row_id": pl.String,
        "source": pl.String,
        "state": pl.String,  # kept | rewritten | dropped
        "rule": pl.String,  # the rule that dropped the row (null when kept)
        "reason": pl.String,
    }
)


@dataclass
class CurationResult:
    curated: pl.DataFrame  # kept conversations, same columns as the input, rewrites applied
    ledger: pl.DataFrame  # every rule that fired: LEDGER schema
    states: pl.DataFrame  # one row per input row: STATES schema

    def counts(self) -> dict[str, int]:
        by_state = dict(self.states.group_by("state").len().iter_rows())
        return {state: by_state.get(state, 0) for state in ("kept", "rewritten", "dropped")}

    def rule_counts(self) -> pl.DataFrame:
        """Rows per rule and verdict, most frequent first."""
        return (
            self.ledger.group_by("rule", "verdict")
            .agg(pl.col("row_id").n_unique().alias("rows"))
            .sort("rows", "rule", descending=[True, False])
        )


def structural_findings(conversations: pl.DataFrame) -> Findings:
    """Rows no filter can judge, or no trainer can use: no messages, null content, roles outside
    system/user/assistant, roles out of order (``role_order``)."""
    messages = conversations.select(pl.col("id").alias("row_id"), "messages")
    exploded = messages.explode("messages").select(
        "row_id",
        pl.col("messages").struct.field("role").alias("role"),
        pl.col("messages").struct.field("content").alias("content"),
    )
    problems = [
        messages.filter(pl.col("messages").is_null() | (pl.col("messages").list.len() == 0))
        .select("row_id")
        .with_columns(rule=pl.lit("quality.empty_conversation"), reason=pl.lit("no messages")),
        exploded.filter(pl.col("role").is_not_null() & pl.col("content").is_null())
        .group_by("row_id", maintain_order=True)
        .len()
        .select(
            "row_id",
            rule=pl.lit("quality.null_content"),
            reason=pl.format("{} message(s) with null content", pl.col("len")),
        ),
        exploded.filter(pl.col("role").is_not_null() & ~pl.col("role").is_in(ROLES))
        .group_by("row_id", maintain_order=True)
        .agg(pl.col("role").unique(maintain_order=True).str.join(", "))
        .select(
            "row_id",
            rule=pl.lit("quality.unknown_role"),
            reason=pl.format("unknown role(s): {}", pl.col("role")),
        ),
    ]
    unknown = problems[-1].select("row_id")
    problems.append(
        role_order(messages.join(unknown, on="row_id", how="anti", maintain_order="left"))
    )
    ledger = pl.concat(problems).with_columns(
        verdict=pl.lit("drop"), score=pl.lit(None, dtype=pl.Float64)
    )
    return Findings(ledger=ledger.select(FINDINGS.names()).cast(FINDINGS))


def role_order(messages: pl.DataFrame) -> pl.DataFrame:
    """row_id, rule, reason of the conversations (row_id, messages; in row order) whose roles do
    not alternate user, assistant, user, ... after an optional leading system message. Chat
    templates refuse such a conversation, or train on it silently wrong (two user turns read as
    one, an answer to nothing); no source should give one, but a reader bug or a hand-made file
    can. A conversation may end on a user turn: it is a prompt (``prompt_rows``), and SFT counts
    what has no answer; a preference pair's answers must end on one (``curation.preferences``)."""
    roles = (
        messages.filter(pl.col("messages").list.len() > 0)
        .select(
            "row_id",
            pl.col("messages").list.eval(pl.element().struct.field("role")).alias("role"),
            pl.int_ranges(pl.col("messages").list.len()).alias("turn"),
        )
        .explode("role", "turn")
    )
    lead = (pl.col("role").first().over("row_id") == "system").fill_null(False).cast(pl.Int64)
    expected = (
        pl.when(pl.col("turn") < lead)
        .then(pl.lit("system"))
        .when((pl.col("turn") - lead) % 2 == 0)
        .then(pl.lit("user"))
        .otherwise(pl.lit("assistant"))
    )
    wrong = pl.col("role").is_null() | (pl.col("role") != pl.col("expected"))
    verdicts = (
        roles.with_columns(expected=expected)
        .group_by("row_id", maintain_order=True)
        .agg(
            pl.col("turn").filter(wrong).first().alias("bad_turn"),
            pl.col("role").filter(wrong).first().alias("bad_role"),
            pl.col("expected").filter(wrong).first().alias("bad_expected"),
        )
        .filter(pl.col("bad_turn").is_not_null())
    )
    found = (
        pl.when(pl.col("bad_role").is_null())
        .then(pl.lit("has no role"))
        .otherwise(pl.format("is {}", "bad_role"))
    )
    reason = pl.format(
        "message {} {}, expected {} (turns alternate user/assistant after an optional "
        "leading system message)",
        "bad_turn",
        found,
        "bad_expected",
    )
    return verdicts.select("row_id", rule=pl.lit("structure.role_order"), reason=reason)


def with_string_content(conversations: pl.DataFrame) -> tuple[pl.DataFrame, Findings]:
    """Cast messages to the canonical type. Content that is not text (numbers, nested values from
    a foreign Parquet file) is dropped with a reason instead of failing the run."""
    dtype = conversations.schema["messages"]
    if dtype == MESSAGES:
        return conversations, Findings()
    inner = dtype.inner if isinstance(dtype, pl.List) else None
    fields = {f.name: f.dtype for f in inner.fields} if isinstance(inner, pl.Struct) else {}
    if fields.get("content") == pl.String and fields.get("role") == pl.String:
        return conversations.with_columns(pl.col("messages").cast(MESSAGES)), Findings()
    ledger = conversations.select(
        pl.col("id").alias("row_id"),
        rule=pl.lit("quality.non_string_content"),
        verdict=pl.lit("drop"),
        reason=pl.lit(f"messages are {dtype}, expected list of {{role: str, content: str}}"),
        score=pl.lit(None, dtype=pl.Float64),
    )
    emptied = conversations.with_columns(pl.lit([], dtype=MESSAGES).alias("messages"))
    return emptied, Findings(ledger=ledger)


def curate(conversations: pl.DataFrame, filters: Sequence[Filter]) -> CurationResult:
    """Run ``filters`` in order; see the module docstring for why the order matters."""
    conversations, repeated = repeated_ids(conversations)
    conversations, typed = with_string_content(conversations)
    structural = structural_findings(conversations)
    findings = [typed, structural]
    dead = pl.concat([typed.ledger, structural.ledger]).select("row_id").unique()
    alive = conversations.join(dead, left_on="id", right_on="row_id", how="anti")
    batch = Batch.from_conversations(alive)
    rewritten: list[pl.DataFrame] = []
    for step in filters:
        if batch.rows.height == 0:
            break
        found = step(batch)
        findings.append(found)
        batch, changed = apply(batch, found)
        rewritten.append(changed)
    ledger = Findings.concat(findings).ledger.with_columns(stage=pl.lit(STAGE))
    ledger = ledger.select(LEDGER.names()).cast(LEDGER)
    rewritten_ids = pl.concat(rewritten).unique() if rewritten else pl.DataFrame({"row_id": []})
    curated = rebuild(conversations, batch, rewritten_ids)
    states = final_states(conversations, ledger, curated, rewritten_ids)
    return with_repeated(CurationResult(curated=curated, ledger=ledger, states=states), repeated)


def repeated_ids(conversations: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows whose id comes first, later rows that repeat an id). Rows are keyed by id in the
    pipeline; a repeated id (a source that reuses its own ids) would make two rows one, so
    later copies are set aside, each to get its own final state (``with_repeated``)."""
    first = conversations["id"].is_first_distinct()
    return conversations.filter(first), conversations.filter(~first)


def with_repeated(result: CurationResult, repeated: pl.DataFrame) -> CurationResult:
    """``result`` with the rows ``repeated_ids`` set aside dropped as ``duplicate.same_id``."""
    if not repeated.height:
        return result
    reason = "id already used by an earlier row"
    extra = repeated.select(
        pl.col("id").alias("row_id"),
        "source",
        state=pl.lit("dropped"),
        rule=pl.lit("duplicate.same_id"),
        reason=pl.lit(reason),
    )
    states = pl.concat([result.states, extra.cast(STATES)])
    ledger = pl.concat(
        [
            result.ledger,
            extra.select(
                "row_id",
                stage=pl.lit(STAGE),
                rule="rule",
                verdict=pl.lit("drop"),
                reason="reason",
                score=pl.lit(None, dtype=pl.Float64),
            ).cast(LEDGER),
        ]
    )
    return CurationResult(curated=result.curated, ledger=ledger, states=states)


def apply(batch: Batch, found: Findings) -> tuple[Batch, pl.DataFrame]:
    """Drop rows with a ``drop`` verdict; replace rewritten message contents in the rest."""
    drops = found.ledger.filter(pl.col("verdict") == "drop").select("row_id").unique()
    rewrites = found.rewrites.join(drops, on="row_id", how="anti")
    messages, rows = batch.messages, batch.rows
    if drops.height:
        messages = messages.join(drops, on="row_id", how="anti")
        rows = rows.join(drops, on="row_id", how="anti")
    if rewrites.height:
        messages = (
            messages.join(
                rewrites.rename({"content": "new_content"}), on=["row_id", "turn"], how="left"
            )
            .with_columns(pl.coalesce("new_content", "content").alias("content"))
            .drop("new_content")
        )
    return Batch(messages=messages.cast(MESSAGE_ROWS), rows=rows), rewrites.select(
        "row_id"
    ).unique()


def rebuild(conversations: pl.DataFrame, batch: Batch, rewritten_ids: pl.DataFrame) -> pl.DataFrame:
    """The surviving conversations in input order, with rewritten messages put back."""
    survivors = conversations.join(
        batch.rows.select("row_id"), left_on="id", right_on="row_id", how="semi"
    )
    if rewritten_ids.height == 0:
        return survivors
    new_messages = (
        batch.messages.join(rewritten_ids, on="row_id", how="semi")
        .sort("row_id", "turn")
        .group_by("row_id")
        .agg(pl.struct("role", "content").alias("new_messages"))
    )
    columns = survivors.columns
    return (
        survivors.join(new_messages, left_on="id", right_on="row_id", how="left")
        .with_columns(pl.coalesce("new_messages", "messages").cast(MESSAGES).alias("messages"))
        .select(columns)
    )


def final_states(
    conversations: pl.DataFrame,
    ledger: pl.DataFrame,
    curated: pl.DataFrame,
    rewritten_ids: pl.DataFrame,
) -> pl.DataFrame:
    first_drop = (
        ledger.filter(pl.col("verdict") == "drop")
        .group_by("row_id", maintain_order=True)
        .agg(pl.col("rule").first(), pl.col("reason").first())
    )
    kept = curated.select(pl.col("id").alias("row_id"))
    states = (
        conversations.select(pl.col("id").alias("row_id"), "source")
        .join(first_drop, on="row_id", how="left")
        .with_columns(
            state=pl.when(pl.col("rule").is_not_null())
            .then(pl.lit("dropped"))
            .when(pl.col("row_id").is_in(rewritten_ids["row_id"].implode()))
            .then(pl.lit("rewritten"))
            .otherwise(pl.lit("kept"))
        )
    )
    lost = states.filter(pl.col("state") != "dropped").join(kept, on="row_id", how="anti")
    if lost.height:  # a bug in a filter, never bad input: fail loudly rather than lose rows
        raise RuntimeError(f"{lost.height} rows neither kept nor dropped, e.g. {lost['row_id'][0]}")
    return states.select(STATES.names()).cast(STATES)


# name in a curation config → the filter class, in the order the pipeline runs them.
FILTERS: dict[str, str] = {
    "quality": "curation.filters.quality:QualityFilter",
    "pii": "curation.filters.pii:PiiFilter",
    "references": "curation.filters.references:ReferenceFilter",
    "options": "curation.filters.options:OptionsFilter",
    "safety": "curation.filters.safety:SafetyFilter",
    "length": "curation.filters.quality:LengthFilter",
    "duplicates": "curation.filters.dedup:DedupFilter",
}


def filter_class(name: str) -> type:
    module, cls_name = FILTERS[name].split(":")
    return getattr(importlib.import_module(module), cls_name)


class ConfigError(ValueError):
    """A curation config that names an unknown filter or key, or has a value of the wrong type."""


def check_type(key: str, value: Any, default: Any) -> None:
    """Scalars must match their default's type (an int is a fine float); a YAML typo such as
    ``threshold: high`` fails here, naming the key, not deep inside a filter."""
    if isinstance(default, bool) or default is None or default is dataclasses.MISSING:
        expected = bool if isinstance(default, bool) else None
    else:
        expected = type(default) if isinstance(default, int | float | str) else None
    if expected is None:
        return
    ok = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise ConfigError(
            f"{key}: expected {expected.__name__}, got {type(value).__name__} {value!r}"
        )


def build_filters(
    config: Mapping[str, Any] | None = None,
    count_tokens: Callable[[list[str]], list[int]] | None = None,
) -> list[Filter]:
    """Filters from a config mapping (YAML, JSON or the Dagster launch form)::

        references: {policy: rewrite, per_source: {flan: drop}}
        pii: {policy: rewrite}
        duplicates: {threshold: 0.8}
        options: {enabled: false}

    Each section's keys are the filter dataclass's fields, plus ``enabled``, ``policy`` and
    ``per_source``. Unknown names fail before any work starts, naming the key.
    """
    config = dict(config or {})
    unknown = sorted(set(config) - set(FILTERS), key=str)
    if unknown:
        raise ConfigError(f"unknown filter(s) {unknown}; expected some of {list(FILTERS)}")
    filters = []
    for name in FILTERS:
        section = _section(name, config.get(name))
        enabled = section.pop("enabled", True)
        check_type(f"{name}.enabled", enabled, True)
        if not enabled:
            continue
        cls = filter_class(name)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        policy = section.pop("policy", None)
        per_source = section.pop("per_source", None)
        if policy is not None or per_source is not None:
            section["policy"] = _policy(name, fields, policy, per_source)
        for key, value in section.items():
            if key not in fields:
                raise ConfigError(f"{name}.{key}: unknown key; expected one of {sorted(fields)}")
            check_type(f"{name}.{key}", value, fields[key].default)
        if "count_tokens" in fields and count_tokens is not None:
            section.setdefault("count_tokens", count_tokens)
        try:
            filters.append(cls(**section))
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{name}: {error}") from None
    return filters


def _section(name: str, value: Any) -> dict[str, Any]:
    """A filter's settings as a mapping; ``pii: rewrite`` (a policy where a section belongs)
    is refused naming the section and the form it needs."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{name}: expected a mapping of settings such as {{policy: drop}}, "
            f"got {type(value).__name__} {value!r}"
        )
    return dict(value)


def _policy(name: str, fields: dict[str, Any], policy: Any, per_source: Any) -> Policy:
    """``Policy`` from a section's ``policy`` and ``per_source``, each verdict checked here so
    that the message names the key (``references.per_source.flan``), not just the value."""
    if "policy" not in fields:
        keys = sorted({*fields, "enabled"})
        raise ConfigError(f"{name}.policy: unknown key; expected one of {keys}")
    if policy is not None:
        _check_verdict(f"{name}.policy", policy)
    if per_source is not None and not isinstance(per_source, Mapping):
        raise ConfigError(
            f"{name}.per_source: expected a mapping of source name to verdict such as "
            f"{{flan: drop}}, got {type(per_source).__name__} {per_source!r}"
        )
    for source, verdict in (per_source or {}).items():
        _check_verdict(f"{name}.per_source.{source}", verdict)
    field = fields["policy"]
    default = field.default_factory() if callable(field.default_factory) else field.default
    return Policy(policy or default.default, dict(per_source or {}))


def _check_verdict(key: str, value: Any) -> None:
    if not isinstance(value, str) or value not in VERDICTS:
        raise ConfigError(f"{key}: unknown verdict {value!r}; expected one of {list(VERDICTS)}")
