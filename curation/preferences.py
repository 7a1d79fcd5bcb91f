"""Curating preference pairs with the same filters as conversations.

A pair is judged on its prompt and chosen answer, which the model is trained towards. The
rejected answer is *meant* to be bad (unsafe, rambling, citing), so content filters leave it
alone; only PII is removed from it too, because it is still text we would store and train on.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from curation.curate import STATES, CurationResult, curate
from curation.filters.base import Filter
from curation.schema import LEDGER, MESSAGES

STAGE = "curate"


def _as_conversations(pairs: pl.DataFrame, messages: pl.Expr) -> pl.DataFrame:
    return pairs.select(
        "id",
        "source",
        pl.col("id").alias("source_id"),
        "lang",
        messages.cast(MESSAGES).alias("messages"),
        pl.lit("{}").alias("meta"),
        "provenance",
    )


def curate_preferences(preferences: pl.DataFrame, filters: Sequence[Filter]) -> CurationResult:
    """Returns kept pairs (rewrites applied), the ledger and one final state per pair."""
    identical = preferences.filter(pl.col("chosen") == pl.col("rejected"))
    pairs = preferences.join(identical.select("id"), on="id", how="anti")
    judged = curate(_as_conversations(pairs, pl.concat_list("prompt", "chosen")), filters)
    pii = [f for f in filters if getattr(f, "category", "") == "pii"]
    rejected_side = curate(_as_conversations(pairs, pl.col("rejected")), pii)

    kept = pairs.join(judged.curated.select("id", "messages"), on="id", how="inner")
    prompt_len = pl.col("prompt").list.len()
    kept = kept.with_columns(
        pl.col("messages").list.slice(0, prompt_len).alias("prompt"),
        pl.col("messages").list.slice(prompt_len).alias("chosen"),
    ).drop("messages")
    kept = (
        kept.join(
            rejected_side.curated.select("id", pl.col("messages").alias("new_rejected")),
            on="id",
            how="left",
        )
        .with_columns(pl.coalesce("new_rejected", "rejected").alias("rejected"))
        .drop("new_rejected")
        .select(preferences.columns)
    )
    # With a PII drop policy, PII in the rejected answer drops the whole pair.
    dropped_rejected = rejected_side.states.filter(pl.col("state") == "dropped")
    kept = kept.join(dropped_rejected.select(pl.col("row_id").alias("id")), on="id", how="anti")

    identical_ledger = identical.select(
        pl.col("id").alias("row_id"),
        stage=pl.lit(STAGE),
        rule=pl.lit("preference.identical"),
        verdict=pl.lit("drop"),
        reason=pl.lit("chosen equals rejected"),
        score=pl.lit(None, dtype=pl.Float64),
    ).cast(LEDGER)
    ledger = pl.concat([identical_ledger, judged.ledger, rejected_side.ledger])
    states = _states(preferences, identical, judged, rejected_side, kept)
    return CurationResult(curated=kept, ledger=ledger, states=states)


def _states(
    preferences: pl.DataFrame,
    identical: pl.DataFrame,
    judged: CurationResult,
    rejected_side: CurationResult,
    kept: pl.DataFrame,
) -> pl.DataFrame:
    both = (
        judged.states.join(
            rejected_side.states.select(
                "row_id",
                pl.col("state").alias("r_state"),
                pl.col("rule").alias("r_rule"),
                pl.col("reason").alias("r_reason"),
            ),
            on="row_id",
            how="left",
        )
        .with_columns(
            state=pl.when(pl.col("state") == "dropped")
            .then(pl.lit("dropped"))
            .when(pl.col("r_state") == "dropped")
            .then(pl.lit("dropped"))
            .when((pl.col("state") == "rewritten") | (pl.col("r_state") == "rewritten"))
            .then(pl.lit("rewritten"))
            .otherwise(pl.lit("kept")),
            rule=pl.coalesce("rule", "r_rule"),
            reason=pl.coalesce("reason", "r_reason"),
        )
        .select(STATES.names())
    )
    identical_states = identical.select(
        pl.col("id").alias("row_id"),
        "source",
        state=pl.lit("dropped"),
        rule=pl.lit("preference.identical"),
        reason=pl.lit("chosen equals rejected"),
    )
    states = pl.concat([identical_states.cast(STATES), both.cast(STATES)])
    if states.filter(pl.col("state") != "dropped").height != kept.height:
        raise RuntimeError("preference curation lost pairs: states and kept rows disagree")
    return states
