"""Curating preference pairs with the same filters as conversations.

A pair is judged on its prompt and chosen answer, which the model is trained towards. The
rejected answer is *meant* to be bad (unsafe, rambling, citing), so content filters leave it
alone; only PII is removed from it too, because it is still text we would store and train on.

Duplicates are the exception: they are a property of the whole pair. UltraFeedback gives one
prompt's best answer in several pairs, each against a different worse answer, and OpenAssistant
ranks several siblings under one prompt; judged as prompt + chosen, every such pair would be a
"duplicate" of the first. Two pairs are duplicates only when prompt, chosen and rejected all
match: exactly (the same normalised text in each of the three), or near, under the rule
conversations use (``DedupFilter``: MinHash estimate of the shingles' Jaccard and the answer
guard), applied to the pair as one text and to each side alone: judged only as one text, two
short, different rejected answers would pass as alike behind a long shared prompt and chosen
answer. The duplicate pass runs last, over pairs that survived every other rule, so the copy
kept of a cluster is one that passed them all.

A rewrite of the prompt can leave the rejected answer in a form the chosen one lost: the options
filter removes "OPTIONS: (A) shark (B) dolphin ..." and turns the chosen "(B)" into "dolphin",
while the rejected "(D) octopus" would keep its letter, a cue of form a reward model or DPO
learns instead of the content. So when the options filter rewrote a pair, its rejected answer
gets the same mapping against the same options (the prompt's last turn as written), recorded as
``options.rejected_answer``; the prompt's rewrite stays one ``options.explicit`` row. A rejected
answer that names no option by letter (prose, a number) is already text and stays; one whose
letter names none of the options would keep the cue and cannot be mapped, so the pair is
dropped (``options.unresolvable_letter``, as a chosen answer's is). A pair whose answers are
equal once rewritten ("(B)" against "(B) dolphin. ..." both become "dolphin") has nothing left
to prefer and is dropped as ``preference.identical``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import polars as pl

from curation.curate import STATES, CurationResult, curate, repeated_ids, with_repeated
from curation.filters.base import FINDINGS, Batch, Filter, Findings, Policy
from curation.filters.dedup import DedupFilter
from curation.filters.options import map_answers
from curation.schema import LEDGER, MESSAGES

STAGE = "curate"
SIDES = ("prompt", "chosen", "rejected")
AGREEMENT_STEP = 32_768  # candidate pairs compared at once: bounds the signature copies
OPTIONS_RULE = "options.explicit"
REJECTED_ANSWER_RULE = "options.rejected_answer"
UNRESOLVED_RULE = "options.unresolvable_letter"
QUOTE_CHARS = 120  # of each answer in a reason


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


def _blank_prompt_and_rejected() -> pl.Expr:
    """The conversation prompt + rejected with the prompt's text emptied: the structural checks
    see the conversation's roles, while PII finds only what is in the rejected answer (the
    prompt's text is judged, once, with the chosen answer)."""
    blank = pl.col("prompt").list.eval(pl.element().struct.with_fields(content=pl.lit("")))
    return pl.concat_list(blank, "rejected")


def curate_preferences(preferences: pl.DataFrame, filters: Sequence[Filter]) -> CurationResult:
    """Returns kept pairs (rewrites applied), the ledger and one final state per pair."""
    columns = preferences.columns
    preferences, repeated = repeated_ids(preferences)
    identical = unusable_pairs(preferences)
    pairs = preferences.join(identical.select("id"), on="id", how="anti", maintain_order="left")
    dedups = [f for f in filters if isinstance(f, DedupFilter)]
    content = [f for f in filters if not isinstance(f, DedupFilter)]
    pii = [f for f in filters if getattr(f, "category", "") == "pii"]

    judged = curate(_as_conversations(pairs, pl.concat_list("prompt", "chosen")), content)
    prompt_len = pl.col("prompt").list.len()
    survivors = (
        pairs.join(judged.curated.select("id", "messages"), on="id", maintain_order="left")
        .with_columns(
            pl.col("messages").list.slice(0, prompt_len).alias("prompt"),
            pl.col("messages").list.slice(prompt_len).alias("chosen"),
        )
        .drop("messages")
    )
    survivors, letters = rejected_letters(pairs, survivors, judged.ledger)
    survivors = survivors.join(
        _dropped([letters]), left_on="id", right_on="row_id", how="anti", maintain_order="left"
    )
    rejected_side = curate(_as_conversations(survivors, _blank_prompt_and_rejected()), pii)
    survivors = survivors.join(
        rejected_side.curated.select("id", pl.col("messages").alias("new")),
        on="id",
        maintain_order="left",
    ).with_columns(pl.col("new").list.slice(prompt_len).alias("rejected"))
    survivors = survivors.drop("new")
    same = same_after_rewrites(survivors)
    survivors = survivors.join(
        same, left_on="id", right_on="row_id", how="anti", maintain_order="left"
    )

    duplicates = [pl.DataFrame(schema=FINDINGS)]
    for dedup in dedups:
        alive = survivors.join(
            _dropped(duplicates), left_on="id", right_on="row_id", how="anti", maintain_order="left"
        )
        duplicates.append(pair_duplicates(alive, dedup).ledger)
    kept = survivors.join(
        _dropped(duplicates), left_on="id", right_on="row_id", how="anti", maintain_order="left"
    ).select(columns)

    identical_ledger = (
        identical.select(
            pl.col("id").alias("row_id"),
            "rule",
            "reason",
            stage=pl.lit(STAGE),
            verdict=pl.lit("drop"),
            score=pl.lit(None, dtype=pl.Float64),
        )
        .select(LEDGER.names())
        .cast(LEDGER)
    )
    duplicate_ledger = (
        pl.concat(duplicates).with_columns(stage=pl.lit(STAGE)).select(LEDGER.names()).cast(LEDGER)
    )
    rejected_ledger = [_in_ledger(letters), rejected_side.ledger, _in_ledger(same)]
    ledger = pl.concat([identical_ledger, judged.ledger, *rejected_ledger, duplicate_ledger])
    rejected_states = _rejected_states(rejected_side.states, letters, same)
    states = _states(preferences, identical, judged, rejected_states, duplicate_ledger, kept)
    return with_repeated(CurationResult(curated=kept, ledger=ledger, states=states), repeated)


def rejected_letters(
    pairs: pl.DataFrame, survivors: pl.DataFrame, judged: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(``survivors`` with each rejected answer mapped as the options filter mapped the chosen
    one, the findings: row_id, source, rule, verdict, reason, score). Only pairs the options
    filter rewrote (``judged``: the prompt + chosen ledger) and that survived the content
    filters; the answer is the rejected side's first turn, the options those of the prompt's
    last turn in ``pairs`` (as read, before any filter), so both answers meet the same options
    (PII in an option's text, redacted before the filter saw it, is redacted on the rejected
    side after).
    A letter that names no option drops the pair (see the module docstring)."""
    rewritten = judged.filter(
        (pl.col("rule") == OPTIONS_RULE) & (pl.col("verdict") == "rewrite")
    ).select(id="row_id")
    first = pl.col("rejected").list.first()
    candidates = (
        survivors.join(rewritten, on="id", how="semi", maintain_order="left")
        .select("id", "source", role=first.struct.field("role"), old=first.struct.field("content"))
        .join(pairs.select("id", turn=pl.col("prompt").list.last()), on="id", maintain_order="left")
        .filter(
            (pl.col("role") == "assistant")
            & (pl.col("turn").struct.field("role") == "user")
            & pl.col("old").is_not_null()
        )
    )
    mapped = map_answers(candidates["turn"].struct.field("content"), candidates["old"])
    found = candidates.select("id", "source", "old").with_columns(
        new=mapped["answer"], unresolved=mapped["unresolved"]
    )
    changed = pl.col("unresolved").is_null() & (pl.col("new") != pl.col("old"))
    rewrites = found.filter(changed).select(
        row_id="id",
        source="source",
        rule=pl.lit(REJECTED_ANSWER_RULE),
        verdict=pl.lit("rewrite"),
        reason=pl.format(
            "rejected answer '{}' → '{}' (its options were removed from the prompt)",
            _quote("old"),
            _quote("new"),
        ),
        score=pl.lit(None, dtype=pl.Float64),
    )
    drops = found.filter(pl.col("unresolved").is_not_null()).select(
        row_id="id",
        source="source",
        rule=pl.lit(UNRESOLVED_RULE),
        verdict=pl.lit("drop"),
        reason=pl.format(
            "the rejected answer '{}' refers to option {}, but no option has that letter; "
            "its letter would stay beside the chosen answer's option text",
            _quote("old"),
            "unresolved",
        ),
        score=pl.lit(None, dtype=pl.Float64),
    )
    new_first = pl.struct(role=pl.lit("assistant"), content=pl.col("new"))
    survivors = (
        survivors.join(
            found.filter(changed).select("id", "new"), on="id", how="left", maintain_order="left"
        )
        .with_columns(
            rejected=pl.when(pl.col("new").is_not_null())
            .then(pl.concat_list(new_first, pl.col("rejected").list.slice(1)))
            .otherwise(pl.col("rejected"))
            .cast(MESSAGES)
        )
        .drop("new")
    )
    order = found.select(row_id="id").with_row_index("order")
    findings = pl.concat([rewrites, drops]).join(order, on="row_id", maintain_order="left")
    return survivors, findings.sort("order").drop("order")


def same_after_rewrites(survivors: pl.DataFrame) -> pl.DataFrame:
    """row_id, source, rule, verdict, reason, score of the pairs whose chosen and rejected
    answers became equal through the rewrites (unequal pairs were refused before any)."""
    return survivors.filter(pl.col("chosen") == pl.col("rejected")).select(
        row_id="id",
        source="source",
        rule=pl.lit("preference.identical"),
        verdict=pl.lit("drop"),
        reason=pl.format(
            "chosen equals rejected once rewritten ('{}'): nothing left to prefer",
            _quote(pl.col("chosen").list.last().struct.field("content")),
        ),
        score=pl.lit(None, dtype=pl.Float64),
    )


def _quote(text: str | pl.Expr) -> pl.Expr:
    text = pl.col(text) if isinstance(text, str) else text
    shown = text.str.slice(0, QUOTE_CHARS).str.replace_all("\n", "\\n", literal=True)
    return pl.when(text.str.len_chars() > QUOTE_CHARS).then(shown + pl.lit("…")).otherwise(shown)


def _in_ledger(findings: pl.DataFrame) -> pl.DataFrame:
    return findings.with_columns(stage=pl.lit(STAGE)).select(LEDGER.names()).cast(LEDGER)


def _rejected_states(pii: pl.DataFrame, letters: pl.DataFrame, same: pl.DataFrame) -> pl.DataFrame:
    """One state per pair that reached the rejected side: its letter step (``letters``), then
    PII (``pii``: states of the pairs the letter step kept), then ``same``."""
    mapped = letters.filter(pl.col("verdict") == "rewrite")["row_id"].implode()
    equal = same.select("row_id", s_rule="rule", s_reason="reason")
    alive = (
        pii.join(equal, on="row_id", how="left", maintain_order="left")
        .with_columns(
            state=pl.when(pl.col("s_rule").is_not_null())
            .then(pl.lit("dropped"))
            .when((pl.col("state") == "kept") & pl.col("row_id").is_in(mapped))
            .then(pl.lit("rewritten"))
            .otherwise("state"),
            rule=pl.coalesce("rule", "s_rule"),
            reason=pl.coalesce("reason", "s_reason"),
        )
        .select(STATES.names())
    )
    dropped = letters.filter(pl.col("verdict") == "drop").select(
        "row_id", "source", state=pl.lit("dropped"), rule="rule", reason="reason"
    )
    return pl.concat([alive.cast(STATES), dropped.cast(STATES)])


def unusable_pairs(preferences: pl.DataFrame) -> pl.DataFrame:
    """The pairs refused before any filter, with ``rule`` and ``reason``: chosen equal to
    rejected (nothing to prefer), or an answer that does not end on an assistant turn (a
    reward model or DPO would score the user's words as the answer). The structural checks
    take roles in order but let a conversation end on a user turn, since that is a prompt."""
    sides = ("chosen", "rejected")
    last_role = {side: pl.col(side).list.last().struct.field("role") for side in sides}
    unanswered = [
        pl.when(last_role[side].fill_null("") != "assistant").then(
            pl.format(
                "{} ends with a {} message, not an assistant answer",
                pl.lit(side),
                last_role[side].fill_null("missing"),
            )
        )
        for side in last_role
    ]
    return (
        preferences.with_columns(
            reason=pl.when(pl.col("chosen") == pl.col("rejected"))
            .then(pl.lit("chosen equals rejected"))
            .otherwise(pl.coalesce(unanswered))
        )
        .filter(pl.col("reason").is_not_null())
        .with_columns(
            rule=pl.when(pl.col("reason") == "chosen equals rejected")
            .then(pl.lit("preference.identical"))
            .otherwise(pl.lit("structure.role_order"))
        )
    )


def _dropped(findings: list[pl.DataFrame]) -> pl.DataFrame:
    return pl.concat(findings).filter(pl.col("verdict") == "drop").select("row_id").unique()


def _states(
    preferences: pl.DataFrame,
    identical: pl.DataFrame,
    judged: CurationResult,
    rejected_side: pl.DataFrame,
    duplicates: pl.DataFrame,
    kept: pl.DataFrame,
) -> pl.DataFrame:
    """One final state per pair, in the order the pair met the rules: content (prompt and
    chosen), then the rejected side (``_rejected_states``), then duplicates; the first drop
    names the rule."""
    rejected_states = rejected_side.select(
        "row_id",
        pl.col("state").alias("r_state"),
        pl.col("rule").alias("r_rule"),
        pl.col("reason").alias("r_reason"),
    )
    duplicate_drops = (
        duplicates.filter(pl.col("verdict") == "drop")
        .group_by("row_id", maintain_order=True)
        .agg(pl.col("rule").first().alias("d_rule"), pl.col("reason").first().alias("d_reason"))
    )
    dropped_by_rejected = pl.col("r_state") == "dropped"
    dropped = (pl.col("state") == "dropped") | dropped_by_rejected | pl.col("d_rule").is_not_null()
    both = (
        judged.states.join(rejected_states, on="row_id", how="left", maintain_order="left")
        .join(duplicate_drops, on="row_id", how="left", maintain_order="left")
        .with_columns(
            state=pl.when(dropped)
            .then(pl.lit("dropped"))
            .when((pl.col("state") == "rewritten") | (pl.col("r_state") == "rewritten"))
            .then(pl.lit("rewritten"))
            .otherwise(pl.lit("kept")),
            rule=pl.coalesce("rule", pl.when(dropped_by_rejected).then("r_rule"), pl.col("d_rule")),
            reason=pl.coalesce(
                "reason", pl.when(dropped_by_rejected).then("r_reason"), pl.col("d_reason")
            ),
        )
        .select(STATES.names())
    )
    identical_states = identical.select(
        pl.col("id").alias("row_id"), "source", "rule", "reason", state=pl.lit("dropped")
    ).select(STATES.names())
    states = pl.concat([identical_states.cast(STATES), both.cast(STATES)])
    if states.height != preferences.height:
        raise RuntimeError("preference curation lost pairs: a pair has no final state")
    if states.filter(pl.col("state") != "dropped").height != kept.height:
        raise RuntimeError("preference curation lost pairs: states and kept rows disagree")
    return states


# --- duplicates of whole pairs ----------------------------------------------------------------


def pair_duplicates(pairs: pl.DataFrame, dedup: DedupFilter) -> Findings:
    """``dedup``'s verdicts on pairs (id, source, lang, prompt, chosen, rejected; in batch
    order, the first of a cluster kept): ``duplicate.exact`` when prompt, chosen and rejected
    all have the normalised text of an earlier pair's, ``duplicate.near`` when the pair as a
    whole and each side alone are near duplicates under ``dedup``'s rule. A pair without text
    is never a duplicate, as for conversations."""
    # Each side as ``DedupFilter.turns`` sees it (idx: the pair's place in ``pairs``).
    sides = [dedup.turns(_batch(pairs, pl.col(side))) for side in SIDES]
    keys = _side_keys(sides, pairs.height)
    exact = _exact_pairs(pairs, keys) if dedup.exact else pl.DataFrame(schema=_FOUND)
    parts = [exact]
    if dedup.near:
        parts.append(_near_pairs(pairs, sides, keys, exact["idx"], dedup))
    found = pl.concat(parts).sort("idx")
    near_policy = dedup.near_policy if isinstance(dedup.near_policy, Policy) else dedup.policy
    ledger = found.select(
        "row_id",
        "rule",
        pl.when(pl.col("rule") == "duplicate.exact")
        .then(dedup.policy.expr())
        .otherwise(near_policy.expr())
        .alias("verdict"),
        "reason",
        "score",
    )
    return Findings(ledger=ledger.cast(FINDINGS))


_FOUND = pl.Schema(
    {
        "idx": pl.UInt32,
        "row_id": pl.String,
        "source": pl.String,
        "rule": pl.String,
        "reason": pl.String,
        "score": pl.Float64,
    }
)
Side = tuple[pl.DataFrame, pl.DataFrame]  # DedupFilter.turns: (rows, turns)


def _side_keys(sides: list[Side], height: int) -> pl.DataFrame:
    """Per pair (in order): for each side, a code equal between two pairs exactly when that
    side's key is (the role-tagged normalised user and assistant turns the conversation pass
    compares), whether the side has text, and ``filled``: whether any side has."""
    frame = pl.DataFrame({"idx": pl.arange(0, height, dtype=pl.UInt32, eager=True)})
    for side, (rows, turns) in zip(SIDES, sides, strict=True):
        key = turns.group_by("idx", maintain_order=True).agg(
            pl.concat_str(pl.col("role").str.head(1), pl.lit(":"), "norm")
            .str.join("\n")
            .alias(side)
        )
        frame = frame.join(
            key,
            on="idx",
            how="left",
            maintain_order="left",
        ).with_columns(
            pl.col(side).fill_null("").rank("dense").cast(pl.UInt32),
            rows["has_text"].alias(f"{side}_text"),
        )
    return frame.with_columns(filled=pl.any_horizontal([f"{side}_text" for side in SIDES]))


def _exact_pairs(pairs: pl.DataFrame, keys: pl.DataFrame) -> pl.DataFrame:
    """Pairs whose three sides have the keys of an earlier pair's."""
    whole = pl.struct(SIDES)
    return (
        keys.with_columns(pl.Series("row_id", pairs["id"]), pl.Series("source", pairs["source"]))
        .filter("filled")
        .with_columns(kept_id=pl.col("row_id").first().over(whole))
        .filter(~whole.is_first_distinct())
        .select(
            "idx",
            "row_id",
            "source",
            rule=pl.lit("duplicate.exact"),
            reason=pl.format(
                "exact duplicate of {} (same normalised prompt, chosen and rejected)", "kept_id"
            ),
            score=pl.lit(1.0),
        )
        .cast(_FOUND)
    )


def _near_pairs(
    pairs: pl.DataFrame,
    sides: list[Side],
    keys: pl.DataFrame,
    exact: pl.Series,
    dedup: DedupFilter,
) -> pl.DataFrame:
    """Near duplicates among the pairs with text the exact pass did not find. Candidates, their
    verification and the clusters are ``DedupFilter.near_from_signatures``' on the whole pair
    (its three sides as one text); the guard it calls then requires each side, compared alone,
    to pass the conversation rule too: signature estimate >= ``threshold`` and answer guard
    (so "I think it is 797." and "I think it is 26." are not alike whatever they share)."""
    alive = (
        keys.with_columns(pl.Series("row_id", pairs["id"]), pl.Series("source", pairs["source"]))
        .filter(pl.col("filled") & ~pl.col("idx").is_in(exact.implode()))
        .select("idx", "row_id", "source")
    )
    if alive.height < 2:
        return pl.DataFrame(schema=_FOUND)
    positions = alive["idx"].to_numpy().astype(np.int64)
    # The whole pair's turns: each side's, in prompt, chosen, rejected order within a pair.
    tagged = [turns.with_columns(side=pl.lit(k)) for k, (_, turns) in enumerate(sides)]
    whole = pl.concat(tagged).sort("idx", "side", maintain_order=True).drop("side")
    signatures = dedup.row_signatures(positions, whole)
    codes = [keys[side].to_numpy() for side in SIDES]
    with_text = [keys[f"{side}_text"].to_numpy() for side in SIDES]

    def guard(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        similarity = np.ones(i.size, dtype=np.float64)
        a, b = positions[i], positions[j]
        for (_, turns), code, text in zip(sides, codes, with_text, strict=True):
            similarity = np.minimum(similarity, _side_similarity(dedup, turns, code, text, a, b))
        return similarity

    # Without the answer guard the filter would not call ours: give it a threshold our 0/1
    # verdicts on the sides can pass or fail.
    judge = dedup
    if dedup.answer_threshold is None:
        judge = dataclasses.replace(dedup, answer_threshold=1.0)
    near = judge.near_from_signatures(alive.select("idx", "row_id"), signatures, guard)
    return (
        near.join(alive.select("idx", "source"), on="idx", how="left", maintain_order="left")
        .with_columns(reason=pl.format("{}; prompt, chosen and rejected each alike", "reason"))
        .select(_FOUND.names())
        .cast(_FOUND)
    )


def _side_similarity(
    dedup: DedupFilter,
    turns: pl.DataFrame,
    code: np.ndarray,
    text: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
) -> np.ndarray:
    """1.0 where one side of pairs ``a`` and ``b`` passes the conversation rule (signature
    estimate >= threshold, and the answer guard when set), else 0.0. ``code``/``text``: that
    side's key code and whether it has text, per pair. Equal keys pass; a side with text
    against one without fails. Each distinct text is signed once: a prompt repeats in all
    its pairs, an answer in every pair it is part of."""
    distinct, first, inverse = np.unique(
        code[np.concatenate([a, b])], return_index=True, return_inverse=True
    )
    delegates = np.concatenate([a, b])[first]  # one pair per distinct key
    ka, kb = inverse[: a.size], inverse[a.size :]
    # Signed in pair order (``row_signatures`` reads the turns in one pass); column[k] is the
    # signature column of distinct key k, -1 for a side without text.
    signed = np.flatnonzero(text[delegates])
    signed = signed[np.argsort(delegates[signed], kind="stable")]
    column = np.full(distinct.size, -1, dtype=np.int64)
    column[signed] = np.arange(signed.size)
    signatures = dedup.row_signatures(delegates[signed], turns)
    ca, cb = column[ka], column[kb]
    agree = np.where(ka == kb, 1.0, 0.0)
    both = np.flatnonzero((ka != kb) & (ca >= 0) & (cb >= 0))
    for s in range(0, both.size, AGREEMENT_STEP):
        k = both[s : s + AGREEMENT_STEP]
        agree[k] = (signatures[:, ca[k]] == signatures[:, cb[k]]).mean(axis=0)
    passed = (agree >= dedup.threshold - 1e-12).astype(np.float64)
    if dedup.answer_threshold is None:
        return passed
    answers = dedup.answers(turns, delegates)
    guarded = dedup.answer_similarity(answers, ka, kb) >= dedup.answer_threshold - 1e-12
    return passed * guarded


def _batch(pairs: pl.DataFrame, messages: pl.Expr) -> Batch:
    return Batch.from_conversations(
        pairs.select("id", "source", "lang", pl.lit("{}").alias("meta"), messages.alias("messages"))
    )
