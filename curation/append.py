"""Curation of a table stored as one part per drop, paying for the new drop only.

``curate_parts`` runs on conversations stored as one part per drop: a new drop is
appended (``curate_append``: its rows alone through the filters, deduplicated against what
earlier parts kept), and only what a full run would decide differently for an earlier part
sends it to ``curate_incremental`` over every row. Measured on 100k rows and a 1% drop
(bench/refresh.py): the ``curated_conversations`` step takes about 0.5 s against 4.9 s for a
full run (append), where the memoised path alone took 1.5 s.

The memoised path over every row (``curate_incremental``) and the state it keeps are in
curation.incremental; this module adds the part states (``PartState``: exact keys, MinHash
signatures, sorted band keys and verdicts of one part's rows) and the append itself.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curation.curate import CurationResult, repeated_ids
from curation.filters.base import FINDINGS, Batch, Filter
from curation.filters.dedup import DedupFilter
from curation.incremental import (
    CACHED_FINDINGS,
    DEDUP,
    PAIRS,
    ROWS,
    CurationState,
    RunInfo,
    _assemble,
    _Clock,
    _filter_rows,
    _split,
    curate_incremental,
    fingerprint,
    row_hashes,
)
from curation.schema import MESSAGES
from curation.storage import PartSet

# --- append-only runs: one part per drop ------------------------------------------------------
#
# ``conversations`` is stored as one part per drop (curation.storage), and a refresh usually
# appends one part after parts curated before. ``curate_append`` curates that part alone: its
# rows go through the per-row filters, and its survivors are deduplicated against what earlier
# parts left in their ``PartState`` (exact keys, MinHash signatures, LSH band keys sorted per
# band, and each row's duplicate verdict), never against their rows. Earlier rows come first in
# the full run's batch order, so the first of an exact group is never a new row when an old one
# shares its key, and the kept row of a near cluster is the cluster's first row: a new row can
# only join an old cluster (its kept row stays) or form its own. What the full run would decide
# differently is detected and answered with a fallback reason (the caller then runs
# ``curate_incremental`` over every row, which is exact): a new row linking two earlier
# clusters (union-find would merge them and one kept row would become a duplicate), a band
# bucket of 2..16 earlier rows growing past ``band_pairs``' small-bucket size (its pairs change),
# a new edge to an earlier near duplicate whose reason names its closest link (that link could
# change), and an exact key shared by two different texts. Verifications read text: new rows'
# from this run, earlier rows' post-filter messages from their part, only for the few rows a
# candidate pair names.

PART_DEDUP = pl.Schema(
    {
        "row_id": pl.String,
        "key": pl.UInt64,
        "filled": pl.Boolean,
        "exact": pl.Boolean,  # the exact pass found it (it takes no part in the near pass)
        "root": pl.String,  # the kept row of its near cluster (null unless a near duplicate)
        "near_score": pl.Float64,
        # the best direct link's agreement when the reason names it ("linked through"), as
        # the reason rounds it (2 decimals); null otherwise
        "link_score": pl.Float64,
    }
)
LINK_SCORE = pl.col("reason").str.extract(r"; linked through \S+, ([0-9.]+)\)$").cast(pl.Float64)
SMALL_BUCKET = 16  # band_pairs' default: buckets up to this size give every pair
BAND_SEED = 0x5EED  # band_pairs' key multipliers


@dataclass
class PartState:
    """What later runs need of one part: ``rows``/``findings`` as in ``CurationState``,
    ``dedup`` (PART_DEDUP, the part's survivors in order) with their ``signatures`` (num_perm x
    survivors), and per band the alive survivors' band keys sorted (``band_keys``) with their
    survivor columns (``band_cols``)."""

    rows: pl.DataFrame | pl.LazyFrame  # lazy when loaded: read only if needed
    findings: pl.DataFrame | pl.LazyFrame
    dedup: pl.DataFrame | pl.LazyFrame  # lazy when loaded: a refresh reads the keys it meets
    signatures: np.ndarray
    band_keys: np.ndarray
    band_cols: np.ndarray
    pairs: pl.DataFrame | pl.LazyFrame = field(default_factory=lambda: pl.DataFrame(schema=PAIRS))


@dataclass
class Earlier:
    """The parts before the new one: their states, and their conversations (read lazily, only
    for rows whose text a verification needs)."""

    states: list[PartState]
    conversations: pl.LazyFrame


def band_index(dedup: DedupFilter, signatures: np.ndarray, alive: np.ndarray) -> tuple:
    """(band keys sorted per band, their survivor columns) of the columns ``alive``: one sort
    per band of the key packed above the column, so equal keys keep column order."""
    keys = _band_keys(dedup, signatures, alive)
    packed = keys.astype(np.uint64) << np.uint64(32)
    packed |= alive.astype(np.uint64)[None, :]
    packed.sort(axis=1)
    return (packed >> np.uint64(32)).astype(np.uint32), (packed & np.uint64(0xFFFFFFFF)).astype(
        np.int64
    )


def _band_keys(dedup: DedupFilter, signatures: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """band_pairs' 32-bit key of each band of the columns ``cols``: (bands x len(cols))."""
    from curation.filters.dedup import splitmix_stream

    bands, rows = dedup.banding()
    mult = (splitmix_stream(BAND_SEED, rows) >> np.uint64(32)).astype(np.uint32) | np.uint32(1)
    keys = np.zeros((bands, cols.size), dtype=np.uint32)
    if not cols.size:
        return keys
    # Whole value rows (contiguous) when most columns are wanted, else only the columns.
    dense = cols.size * 2 > signatures.shape[1]
    with np.errstate(over="ignore"):
        for b in range(bands):
            for r in range(rows):
                values = signatures[b * rows + r]
                keys[b] += (values[cols] if dense else np.take(values, cols)) * mult[r]
    return keys


def _same_values(values: np.ndarray, alive: np.ndarray, members: np.ndarray) -> list[np.ndarray]:
    """``members`` (positions in ``alive``, ascending) split by their band values (columns of
    ``values``), each group ascending: rows whose 32-bit keys collide are different buckets."""
    if members.size == 1:
        return [members]
    columns = values[:, alive[members]]
    if (columns == columns[:, :1]).all():
        return [members]
    _, group = np.unique(columns.T, axis=0, return_inverse=True)
    group = group.reshape(-1)
    return [members[group == g] for g in np.unique(group)]


def split_state(
    state: CurationState,
    result: CurationResult,
    part_of: pl.DataFrame,
    parts: int,
    dedup: DedupFilter | None,
) -> list[PartState]:
    """A full (or incremental) run's state cut into one ``PartState`` per part (``part_of``:
    row_id → part number), with each survivor's duplicate verdict from the result's ledger."""
    verdicts = (
        result.ledger.filter(pl.col("rule").is_in(["duplicate.exact", "duplicate.near"]))
        .select(
            "row_id",
            exact=pl.col("rule") == "duplicate.exact",
            root=pl.when(pl.col("rule") == "duplicate.near").then(
                pl.col("reason").str.extract(r"^near duplicate of (\S+) ")
            ),
            near_score=pl.when(pl.col("rule") == "duplicate.near").then(pl.col("score")),
            link_score=pl.when(pl.col("rule") == "duplicate.near").then(LINK_SCORE),
        )
        .unique("row_id", keep="first")
    )
    dedup_rows = (
        state.dedup.with_row_index("col")
        .join(verdicts, on="row_id", how="left", maintain_order="left")
        .with_columns(pl.col("exact").fill_null(False))
        .join(part_of, on="row_id", how="left", maintain_order="left")
    )
    out = []
    for k in range(parts):

        def mine(frame: pl.DataFrame, column: str = "row_id", k: int = k) -> pl.DataFrame:
            return frame.join(
                part_of.filter(pl.col("part") == k).select(pl.col("row_id").alias(column)),
                on=column,
                how="semi",
            )

        d = dedup_rows.filter(pl.col("part") == k)
        cols = d["col"].to_numpy().astype(np.int64)
        sig = np.ascontiguousarray(np.take(state.signatures, cols, axis=1))
        table = d.select(PART_DEDUP.names()).cast(PART_DEDUP)
        alive = np.flatnonzero((table["filled"] & ~table["exact"]).to_numpy())
        if dedup is not None:
            keys, kcols = band_index(dedup, sig, alive)
        else:
            keys, kcols = np.zeros((0, 0), np.uint32), np.zeros((0, 0), np.int64)
        out.append(
            PartState(
                rows=mine(state.rows),
                findings=mine(state.findings),
                dedup=table,
                signatures=sig,
                band_keys=keys,
                band_cols=kcols,
                pairs=mine(state.pairs, "a"),
            )
        )
    return out


def joined_state(fingerprint_: str, parts: Sequence[PartState]) -> CurationState:
    """The ``CurationState`` of all parts together (for a run over every row)."""
    num_perm = max((p.signatures.shape[0] for p in parts if p.signatures.size), default=0)
    sigs = [p.signatures for p in parts if p.signatures.shape[1]]
    return CurationState(
        fingerprint=fingerprint_,
        rows=pl.concat([_eager(p.rows) for p in parts]) if parts else pl.DataFrame(schema=ROWS),
        findings=pl.concat([_eager(p.findings) for p in parts])
        if parts
        else pl.DataFrame(schema=CACHED_FINDINGS),
        dedup=pl.concat([_eager(p.dedup.select(DEDUP.names())) for p in parts])
        if parts
        else pl.DataFrame(schema=DEDUP),
        signatures=np.concatenate(sigs, axis=1) if sigs else np.zeros((num_perm, 0), np.uint32),
        pairs=pl.concat([_eager(p.pairs) for p in parts]) if parts else pl.DataFrame(schema=PAIRS),
    )


def _eager(frame: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    return frame.collect() if isinstance(frame, pl.LazyFrame) else frame


def curate_append(
    new: pl.DataFrame,
    filters: Sequence[Filter],
    earlier: Earlier,
) -> tuple[CurationResult, PartState, RunInfo] | str:
    """The new part's share of ``curate(earlier rows + new, filters)`` (its curated rows,
    ledger and states, in the full run's order), from the earlier parts' states; or why the
    full run could decide differently (then nothing is returned)."""
    per_row, dedup = _split(filters)
    if new.schema.get("messages") != MESSAGES:
        return "messages are not the canonical type"
    if per_row is None:
        return "the duplicate filter is not the last filter"
    clock = _Clock()
    conv, repeated = repeated_ids(new)
    new_rows, findings, batch = _filter_rows(conv, per_row)
    rows = (
        new_rows.with_columns(row_hash=row_hashes(conv)).select(ROWS.names()).cast(ROWS)
        if conv.height
        else pl.DataFrame(schema=ROWS)
    )
    clock.lap("per-row filters on new rows")
    part_dedup = pl.DataFrame(schema=PART_DEDUP)
    sig = np.zeros((dedup.num_perm if dedup else 0, 0), dtype=np.uint32)
    dedup_findings = pl.DataFrame(schema=CACHED_FINDINGS)
    if dedup is not None and batch.rows.height:
        texts = _PartTexts(conv, rows, earlier)
        outcome = _AppendDedup(dedup, batch, earlier, texts).run()
        if isinstance(outcome, str):
            return outcome
        found, part_dedup, sig = outcome
        dedup_findings = found.with_columns(
            step=pl.lit(len(per_row) + 1, pl.UInt16),
            block=pl.lit(0, pl.UInt8),
            seq=pl.lit(0, pl.UInt32),
        ).select(CACHED_FINDINGS.names())
        clock.lap("dedup against earlier parts")
    result = _assemble(conv, repeated, rows, pl.concat([findings, dedup_findings]))
    alive = np.flatnonzero((part_dedup["filled"] & ~part_dedup["exact"]).to_numpy())
    if dedup is not None:
        keys, cols = band_index(dedup, sig, alive)
    else:
        keys, cols = np.zeros((0, 0), np.uint32), np.zeros((0, 0), np.int64)
    state = PartState(rows, findings, part_dedup, sig, keys, cols)
    clock.lap("assemble")
    info = RunInfo(
        "append",
        "a new part after unchanged parts",
        new.height,
        conv.height,
        batch.rows.height,
        clock.seconds,
    )
    return result, state, info


class _PartTexts:
    """Post-filter conversations (id, source, lang, meta, messages) of new or earlier rows."""

    def __init__(self, conv: pl.DataFrame, rows: pl.DataFrame, earlier: Earlier) -> None:
        self.conv, self.rows, self.earlier = conv, rows, earlier

    def conversations(self, ids: pl.Series) -> pl.DataFrame:
        wanted = ids.unique().implode()
        columns = ["id", "source", "lang", "meta", "messages"]
        new = self.conv.filter(pl.col("id").is_in(wanted)).select(columns)
        after = [self.rows.lazy().select("row_id", "messages_after")]
        frames = [new]
        if new.height < ids.n_unique():
            frames.append(
                self.earlier.conversations.filter(pl.col("id").is_in(wanted))
                .select(columns)
                .collect()
            )
            after += [s.rows.lazy().select("row_id", "messages_after") for s in self.earlier.states]
        found = pl.concat(frames)
        rewritten = (
            pl.concat(after)
            .filter(pl.col("row_id").is_in(wanted) & pl.col("messages_after").is_not_null())
            .rename({"row_id": "id"})
            .collect()
        )
        return (
            found.join(rewritten, on="id", how="left")
            .with_columns(
                pl.coalesce("messages_after", "messages").cast(MESSAGES).alias("messages")
            )
            .drop("messages_after")
        )


class _AppendDedup:
    """The duplicate pass for one new part against earlier parts (see the section comment).
    Nodes are numbered by the full run's batch order: earlier survivors first (part by part),
    then the new part's survivors."""

    def __init__(
        self, dedup: DedupFilter, batch: Batch, earlier: Earlier, texts: _PartTexts
    ) -> None:
        self.dedup, self.batch, self.earlier, self.texts = dedup, batch, earlier, texts
        # A stored part's height is in its Parquet footer (no column is read).
        sizes = [_eager(s.dedup.select(pl.len())).item() for s in earlier.states]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.old_n = int(self.offsets[-1])

    def _old(self, wanted: pl.Expr, columns: Sequence[str]) -> pl.DataFrame:
        """The earlier survivors that meet ``wanted`` (over PART_DEDUP columns and ``node``),
        with their global node numbers. Each part is scanned for the columns asked only, so a
        refresh reads keys (or ids) of earlier parts, not their whole duplicate tables."""
        frames = [
            s.dedup.lazy()
            .select(columns)
            .with_row_index("node", offset=int(self.offsets[k]))
            .filter(wanted)
            for k, s in enumerate(self.earlier.states)
        ]
        empty = pl.DataFrame(schema=PART_DEDUP).lazy().select(columns).with_row_index("node")
        return pl.concat(frames or [empty]).collect()

    def _old_nodes(self, nodes: np.ndarray, columns: Sequence[str]) -> pl.DataFrame:
        """Earlier survivors by global node number, scanning only the parts that hold them."""
        part = np.searchsorted(self.offsets, nodes, side="right") - 1
        frames = []
        for k in np.unique(part).tolist():
            local = pl.Series(nodes[part == k] - self.offsets[k], dtype=pl.UInt32).implode()
            frames.append(
                self.earlier.states[k]
                .dedup.lazy()
                .select(columns)
                .with_row_index("at")
                .filter(pl.col("at").is_in(local))
                .select((pl.col("at") + int(self.offsets[k])).alias("node"), *columns)
            )
        if not frames:
            return pl.DataFrame(schema=PART_DEDUP).select(columns).with_row_index("node")
        return pl.concat(frames).collect()

    def run(self) -> tuple[pl.DataFrame, pl.DataFrame, np.ndarray] | str:
        dedup = self.dedup
        rows, turns = dedup.turns(self.batch)
        keyed = rows.select("idx", "row_id").join(
            dedup.exact_keys(turns), on="idx", how="left", maintain_order="left"
        )
        self.rows, self.turns = rows, turns
        filled = keyed["filled"].fill_null(False).to_numpy()
        n = rows.height
        sig = np.zeros((dedup.num_perm, n), dtype=np.uint32)
        sig[:, filled] = dedup.row_signatures(keyed["idx"].to_numpy()[filled], turns)
        self.sig = sig
        parts: list[pl.DataFrame] = []
        exact_idx = np.zeros(n, dtype=bool)
        if dedup.exact:
            found = self._exact(keyed.with_columns(filled=pl.Series(filled)))
            if isinstance(found, str):
                return found
            parts.append(found)
            exact_idx[found["idx"].to_numpy()] = True
        near = pl.DataFrame(
            schema={
                "idx": pl.UInt32,
                "root": pl.String,
                "score": pl.Float64,
                "link_score": pl.Float64,
            }
        )
        if dedup.near:
            alive = np.flatnonzero(filled & ~exact_idx)
            found = self._near(alive)
            if isinstance(found, str):
                return found
            parts.append(found.drop("root", "link_score"))
            near = found.select("idx", "root", "score", "link_score")
        part_dedup = (
            keyed.select("idx", "row_id", "key", filled=pl.Series(filled))
            .with_columns(exact=pl.Series(exact_idx))
            .join(near, on="idx", how="left", maintain_order="left")
            .select(*PART_DEDUP.names()[:4], "root", "link_score", near_score="score")
            .select(PART_DEDUP.names())
            .cast(PART_DEDUP)
        )
        if not parts:
            return pl.DataFrame(schema=FINDINGS), part_dedup, sig
        found = pl.concat([p.select(NEAR_COLUMNS) for p in parts]).sort("idx")
        ledger = found.join(rows.select("idx", "source"), on="idx", how="left").select(
            "row_id",
            "rule",
            pl.when(pl.col("rule") == "duplicate.exact")
            .then(dedup.policy.expr())
            .otherwise(dedup._near_policy().expr())
            .alias("verdict"),
            "reason",
            "score",
        )
        return ledger.cast(FINDINGS), part_dedup, sig

    def _exact(self, keyed: pl.DataFrame) -> pl.DataFrame | str:
        """A new row whose key an earlier row has is a duplicate of the earliest such row;
        among new rows, of the first with its key. Texts are compared before any verdict."""
        filled = keyed.filter("filled")
        old_first = (
            self._old(
                pl.col("filled") & pl.col("key").is_in(filled["key"].implode()),
                ["row_id", "key", "filled"],
            )
            .group_by("key")
            .agg(pl.col("row_id").sort_by("node").first().alias("old_kept"))
        )
        grouped = (
            filled.join(old_first, on="key", how="left", maintain_order="left")
            .with_columns(first=pl.col("idx").min().over("key"))
            .join(
                filled.select(pl.col("idx").alias("first"), pl.col("row_id").alias("new_kept")),
                on="first",
                how="left",
                maintain_order="left",
            )
            .filter(pl.col("old_kept").is_not_null() | (pl.col("idx") != pl.col("first")))
            .with_columns(kept_id=pl.coalesce("old_kept", "new_kept"))
            .sort("idx")
        )
        if grouped.height and not self._same_texts(grouped["row_id"], grouped["kept_id"]):
            return "two different texts share an exact-duplicate key"
        return grouped.select(
            "idx",
            "row_id",
            pl.lit("duplicate.exact").alias("rule"),
            pl.format("exact duplicate of {} (same normalised text)", "kept_id").alias("reason"),
            pl.lit(1.0).alias("score"),
        )

    def _same_texts(self, a: pl.Series, b: pl.Series) -> bool:
        rows, turns = self.dedup.turns(
            Batch.from_conversations(self.texts.conversations(pl.concat([a, b])))
        )
        per_row = (
            turns.group_by("idx", maintain_order=True)
            .agg(pl.struct("role", "norm").alias("turns"))
            .join(rows.select("idx", "row_id"), on="idx")
            .select("row_id", "turns")
        )
        pairs = (
            pl.DataFrame({"a": a, "b": b})
            .join(per_row.rename({"row_id": "a", "turns": "ta"}), on="a", how="left")
            .join(per_row.rename({"row_id": "b", "turns": "tb"}), on="b", how="left")
        )
        return pairs.height == a.len() and bool((pairs["ta"] == pairs["tb"]).all())

    # -- near pass --

    def _old_sig(self, nodes: np.ndarray) -> np.ndarray:
        """Signature columns of earlier survivors ``nodes`` (global numbers)."""
        out = np.zeros((self.dedup.num_perm, nodes.size), dtype=np.uint32)
        part = np.searchsorted(self.offsets, nodes, side="right") - 1
        for k in np.unique(part):
            at = np.flatnonzero(part == k)
            cols = nodes[at] - self.offsets[k]
            out[:, at] = np.take(self.earlier.states[k].signatures, cols, axis=1)
        return out

    def _columns(self, nodes: np.ndarray) -> np.ndarray:
        """Signatures of any nodes (earlier ones from their parts, new ones from this run)."""
        out = np.zeros((self.dedup.num_perm, nodes.size), dtype=np.uint32)
        old = nodes < self.old_n
        if old.any():
            out[:, old] = self._old_sig(nodes[old])
        if (~old).any():
            out[:, ~old] = self.sig[:, nodes[~old] - self.old_n]
        return out

    def _candidates(self, alive: np.ndarray) -> tuple[np.ndarray, np.ndarray] | str:
        """band_pairs' pairs that involve a new row, over earlier alive rows plus ``alive``
        (new survivor positions), as global node numbers (i < j). Per band, new rows are
        grouped by their band values and looked up in each earlier part's sorted band keys;
        only groups with two new rows or an earlier match are looked at one by one."""
        bands, width = self.dedup.banding()
        self.alive = alive
        new_keys = _band_keys(self.dedup, self.sig, alive)
        new_nodes = alive.astype(np.int64) + self.old_n
        pi: list[np.ndarray] = []
        pj: list[np.ndarray] = []
        for b in range(bands):
            # New rows grouped by their 32-bit band key (one argsort; a key shared by different
            # band values is split below). Sorted keys also make the lookups in each earlier
            # part's sorted keys walk forward through memory.
            order = np.argsort(new_keys[b], kind="stable")
            sorted_keys = new_keys[b][order]
            starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
            ends = np.r_[starts[1:], sorted_keys.size]
            unique_keys = sorted_keys[starts]
            matched = np.zeros(unique_keys.size, dtype=bool)
            for state in self.earlier.states:
                if state.band_keys.size:
                    keys = state.band_keys[b]
                    at = np.minimum(np.searchsorted(keys, unique_keys, "left"), keys.size - 1)
                    matched |= keys[at] == unique_keys
            values = self.sig[b * width : (b + 1) * width]
            for g in np.flatnonzero(matched | (ends - starts > 1)).tolist():
                same_key = order[starts[g] : ends[g]]  # ascending: the sort is stable
                for members in _same_values(values, alive, same_key):
                    olds = self._old_members(
                        b, int(sorted_keys[starts[g]]), values[:, alive[members[0]]]
                    )
                    new_members = new_nodes[members]
                    everyone = np.concatenate([olds, new_members])
                    if everyone.size < 2:
                        continue
                    if everyone.size <= SMALL_BUCKET:
                        for m in range(max(olds.size, 1), everyone.size):
                            pi.append(everyone[:m])
                            pj.append(np.full(m, everyone[m]))
                        continue
                    if 2 <= olds.size <= SMALL_BUCKET and self._loses_an_edge(b, olds):
                        return (
                            "an LSH bucket of earlier rows grew past band_pairs' small-bucket "
                            "size and a pair it no longer proposes was similar"
                        )
                    m = np.arange(max(olds.size, 1), everyone.size)
                    pi += [np.full(m.size, everyone[0]), everyone[m - 1]]
                    pj += [everyone[m], everyone[m]]
        if not pi:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        i, j = np.concatenate(pi), np.concatenate(pj)
        lo, hi = np.minimum(i, j), np.maximum(i, j)
        pair = np.unique(np.stack([lo, hi], axis=1)[lo != hi], axis=0)
        return pair[:, 0], pair[:, 1]

    def _loses_an_edge(self, band: int, olds: np.ndarray) -> bool:
        """A bucket of 2..16 earlier rows that grows past ``SMALL_BUCKET`` stops proposing the
        pairs of its members other than (first, any) and (predecessor, next). Earlier verdicts
        stand if none of those pairs was an edge: all their signature agreements are under the
        threshold (an agreement above it could have been an edge, so the run falls back)."""
        from curation.filters.dedup import _agreement

        p, q = np.triu_indices(olds.size, k=1)
        lost = (p != 0) & (q != p + 1)
        if not lost.any():
            return False
        sig = self._old_sig(olds)
        p, q = p[lost], q[lost]
        close = _agreement(sig, p, q) >= self.dedup.threshold - 1e-12
        if not close.any():
            return False
        if self.dedup.answer_threshold is None:
            return True
        # Similar signatures, but the answer guard may have kept the pair apart.
        p, q = p[close], q[close]
        if self.dedup.answer_threshold is not None:
            sim = self._guard(olds, p, q)
            edge = sim >= self.dedup.answer_threshold - 1e-12
            p, q = p[edge], q[edge]
        # An edge another band still proposes stays an edge.
        return any(
            not self._proposed_elsewhere(band, int(olds[x]), int(olds[y]))
            for x, y in zip(p.tolist(), q.tolist(), strict=True)
        )

    def _proposed_elsewhere(self, band: int, x: int, y: int) -> bool:
        """Whether a band other than ``band`` proposes the earlier pair (x, y) once the new
        rows are in its buckets."""
        bands, width = self.dedup.banding()
        both = self._old_sig(np.array([x, y], dtype=np.int64))
        for b in range(bands):
            values = both[b * width : (b + 1) * width]
            if b == band or not np.array_equal(values[:, 0], values[:, 1]):
                continue
            key = int(_band_keys(self.dedup, both[:, :1], np.array([0]))[b, 0])
            olds = self._old_members(b, key, values[:, 0])
            news = self.sig[b * width : (b + 1) * width][:, self.alive]
            joining = int((news == values[:, :1]).all(axis=0).sum())
            if olds.size + joining <= SMALL_BUCKET:
                return True
            at = {int(n): k for k, n in enumerate(olds.tolist())}
            lo, hi = sorted((at[x], at[y]))
            if lo == 0 or hi == lo + 1:
                return True
        return False

    def _old_members(self, band: int, key: int, values: np.ndarray) -> np.ndarray:
        """Earlier alive rows in the bucket of ``values`` in ``band`` (global numbers, in
        order): rows with the same 32-bit key whose band values are equal."""
        found = []
        width = self.dedup.banding()[1]
        for k, state in enumerate(self.earlier.states):
            if not state.band_keys.size:
                continue
            keys = state.band_keys[band]
            # In the keys' own dtype: numpy casts the whole (memory-mapped) array to a Python
            # int's int64 otherwise, 3-13 ms per lookup at 2M rows against 0.1-0.3 ms.
            typed = keys.dtype.type(key)
            lo, hi = np.searchsorted(keys, typed, "left"), np.searchsorted(keys, typed, "right")
            if hi == lo:
                continue
            cols = np.asarray(state.band_cols[band][lo:hi])
            tuples = np.take(state.signatures[band * width : (band + 1) * width], cols, axis=1)
            same = (tuples == values[:, None]).all(axis=0)
            found.append(np.sort(cols[same]) + self.offsets[k])
        return np.concatenate(found) if found else np.zeros(0, np.int64)

    def _near(self, alive: np.ndarray) -> pl.DataFrame | str:
        from curation.filters.dedup import _agreement, components

        dedup = self.dedup
        empty = pl.DataFrame(schema=NEAR_OUT)
        if alive.size == 0:
            return empty
        cand = self._candidates(alive)
        if isinstance(cand, str):
            return cand
        i, j = cand
        if not i.size:
            return empty
        nodes, inverse = np.unique(np.concatenate([i, j]), return_inverse=True)
        local = self._columns(nodes)
        li, lj = inverse[: i.size], inverse[i.size :]
        agree = _agreement(local, li, lj)
        keep = agree >= dedup.threshold - 1e-12
        i, j, li, lj, agree = i[keep], j[keep], li[keep], lj[keep], agree[keep]
        if dedup.answer_threshold is not None and i.size:
            sim = self._guard(nodes, li, lj)
            keep = sim >= dedup.answer_threshold - 1e-12
            i, j, li, lj, agree = i[keep], j[keep], li[keep], lj[keep], agree[keep]
        if not i.size:
            return empty
        # Earlier rows stand for their cluster's kept row; a near duplicate among them whose
        # reason may name another link makes the run fall back.
        touched = np.unique(np.concatenate([i, j])[np.concatenate([i, j]) < self.old_n])
        info = self._old_nodes(touched, ["row_id", "root", "near_score", "link_score"])
        # An earlier near duplicate under the threshold names its closest direct link: a new
        # edge closer than that link would change its reason.
        best_new = (
            pl.DataFrame({"node": np.concatenate([i, j]), "s": np.tile(agree, 2)})
            .group_by("node")
            .agg(pl.col("s").max())
            .with_columns(pl.col("node").cast(pl.UInt32))
        )
        moved = (
            info.filter(
                pl.col("root").is_not_null() & (pl.col("near_score") < dedup.threshold - 1e-12)
            )
            .join(best_new, on="node")
            .filter(
                pl.when(pl.col("link_score").is_not_null())
                .then(pl.col("s") >= pl.col("link_score") - 0.005 - 1e-12)
                .otherwise(pl.col("s") > pl.col("near_score"))
            )
        )
        if moved.height:
            return "a new row is closer to an earlier near duplicate than the link its reason names"
        roots = info.filter(pl.col("root").is_not_null())
        root_node = dict(zip(touched.tolist(), touched.tolist(), strict=True))
        if roots.height:
            by_id = self._old(pl.col("row_id").is_in(roots["root"].implode()), ["row_id"])
            node_of = dict(zip(by_id["row_id"].to_list(), by_id["node"].to_list(), strict=True))
            for node, root in zip(roots["node"].to_list(), roots["root"].to_list(), strict=True):
                if root not in node_of:
                    return "an earlier near duplicate's kept row is not among the survivors"
                root_node[node] = node_of[root]
        ri = np.array([root_node.get(x, x) for x in i.tolist()], dtype=np.int64)
        rj = np.array([root_node.get(x, x) for x in j.tolist()], dtype=np.int64)
        cnodes, cinv = np.unique(np.concatenate([ri, rj]), return_inverse=True)
        label = cnodes[components(cnodes.size, cinv[: ri.size], cinv[ri.size :])]
        old_roots = pl.DataFrame({"label": label, "node": cnodes}).filter(
            pl.col("node") < self.old_n
        )
        if old_roots.height and old_roots.group_by("label").len()["len"].max() > 1:
            return "a new row links two earlier clusters"
        label_of = dict(zip(cnodes.tolist(), label.tolist(), strict=True))
        dups = np.array([x for x in cnodes.tolist() if x >= self.old_n and label_of[x] != x])
        if not dups.size:
            return empty
        kept = np.array([label_of[x] for x in dups.tolist()], dtype=np.int64)
        pair_sig = self._columns(np.concatenate([kept, dups]))
        score = _agreement(pair_sig, np.arange(dups.size), np.arange(dups.size) + dups.size)
        edges = pl.DataFrame(
            {"a": np.concatenate([i, j]), "b": np.concatenate([j, i]), "s": np.tile(agree, 2)}
        )
        best = edges.sort("s", "b", descending=[True, False]).group_by("a").first()
        ids = self._ids(np.concatenate([kept, dups, best["b"].to_numpy()]))
        out = (
            pl.DataFrame({"node": dups, "kept": kept, "score": score})
            .join(best, left_on="node", right_on="a", how="left")
            .sort("node")
            .with_columns(
                idx=(pl.col("node") - self.old_n).cast(pl.UInt32),
                kept_id=pl.col("kept").replace_strict(ids, return_dtype=pl.String),
                via_id=pl.col("b").replace_strict(ids, return_dtype=pl.String),
            )
        )
        out = out.with_columns(row_id=self.rows["row_id"].gather(out["idx"]))
        score_text = pl.col("score").round(2).cast(pl.String)
        reason = pl.format("near duplicate of {} (estimated Jaccard {})", "kept_id", score_text)
        linked = pl.format(
            "near duplicate of {} (estimated Jaccard {}; linked through {}, {})",
            "kept_id",
            score_text,
            "via_id",
            pl.col("s").round(2).cast(pl.String),
        )
        chain = (pl.col("score") < dedup.threshold - 1e-12) & (pl.col("b") != pl.col("kept"))
        return out.select(
            "idx",
            "row_id",
            pl.lit("duplicate.near").alias("rule"),
            pl.when(chain).then(linked).otherwise(reason).alias("reason"),
            pl.col("score").cast(pl.Float64),
            pl.col("kept_id").alias("root"),
            pl.when(chain).then(pl.col("s").round(2)).alias("link_score"),
        )

    def _ids(self, nodes: np.ndarray) -> dict[int, str]:
        nodes = np.unique(nodes)
        out: dict[int, str] = {}
        old = nodes[nodes < self.old_n]
        if old.size:
            found = self._old_nodes(old, ["row_id"])
            out.update(zip(found["node"].to_list(), found["row_id"].to_list(), strict=True))
        for node in nodes[nodes >= self.old_n].tolist():
            out[node] = self.rows["row_id"][node - self.old_n]
        return out

    def _guard(self, nodes: np.ndarray, li: np.ndarray, lj: np.ndarray) -> np.ndarray:
        """The answer guard of the pairs (li, lj) of positions in ``nodes``."""
        needed = np.unique(np.concatenate([li, lj]))
        ids = self._ids(nodes[needed])
        wanted = pl.Series([ids[int(nodes[k])] for k in needed.tolist()], dtype=pl.String)
        convs = self.texts.conversations(wanted)
        order = wanted.to_frame("id").with_row_index("_o")
        convs = convs.join(order, on="id").sort("_o").drop("_o")
        rows, turns = self.dedup.turns(Batch.from_conversations(convs))
        answers = self.dedup.answers(turns, rows["idx"].to_numpy())
        at = {int(n): k for k, n in enumerate(needed.tolist())}
        ia = np.array([at[x] for x in li.tolist()], dtype=np.int64)
        ib = np.array([at[x] for x in lj.tolist()], dtype=np.int64)
        return self.dedup.answer_similarity(answers, ia, ib)


NEAR_COLUMNS = ["idx", "row_id", "rule", "reason", "score"]
NEAR_OUT = pl.Schema(
    {
        "idx": pl.UInt32,
        "row_id": pl.String,
        "rule": pl.String,
        "reason": pl.String,
        "score": pl.Float64,
        "root": pl.String,
        "link_score": pl.Float64,
    }
)


# --- part states on disk ----------------------------------------------------------------------

PARTS_MANIFEST = "parts.json"
PART_FRAMES = ("rows", "findings", "dedup", "pairs")


@dataclass(frozen=True)
class PartEntry:
    name: str  # the conversations part it curates
    tag: str  # that part's tag when it was curated
    folder: str


def save_part_state(state: PartState, folder: Path) -> str:
    """One part's state in a fresh sub-folder of ``folder`` (written under a temporary name,
    then renamed); returns its name for the manifest."""
    name = uuid.uuid4().hex
    tmp = folder / f".{name}.tmp"
    tmp.mkdir(parents=True)
    for frame_name in PART_FRAMES:
        getattr(state, frame_name).write_parquet(tmp / f"{frame_name}.parquet")
    np.save(tmp / "signatures.npy", np.ascontiguousarray(state.signatures))
    np.save(tmp / "band_keys.npy", np.ascontiguousarray(state.band_keys))
    np.save(tmp / "band_cols.npy", np.ascontiguousarray(state.band_cols))
    tmp.rename(folder / name)
    return name


def load_part_state(folder: Path) -> PartState:
    """A part's state; the signature and band arrays are memory-mapped (a refresh touches
    the few columns a candidate pair needs)."""
    # Nothing is read now: the duplicate pass scans the keys and ids it meets, and rows,
    # findings and pairs are scanned when a verification or a run over every row needs them.
    frames: dict[str, Any] = {n: pl.scan_parquet(folder / f"{n}.parquet") for n in PART_FRAMES}
    arrays = {
        n: np.load(folder / f"{n}.npy", mmap_mode="r")
        for n in ("signatures", "band_keys", "band_cols")
    }
    return PartState(**frames, **arrays)


def write_parts_manifest(folder: Path, print_: str, entries: Sequence[PartEntry]) -> None:
    """The manifest last (one rename), then the part folders it no longer names."""
    payload = {"fingerprint": print_, "parts": [dataclasses.asdict(e) for e in entries]}
    tmp = folder / f".{PARTS_MANIFEST}.{uuid.uuid4().hex}.tmp"
    tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    tmp.replace(folder / PARTS_MANIFEST)
    named = {e.folder for e in entries}
    for entry in folder.iterdir():
        if entry.is_dir() and entry.name not in named:
            shutil.rmtree(entry, ignore_errors=True)


def read_parts_manifest(folder: Path) -> tuple[str, list[PartEntry]] | None:
    try:
        data = json.loads((folder / PARTS_MANIFEST).read_text(encoding="utf-8"))
        return data["fingerprint"], [PartEntry(**e) for e in data["parts"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --- a run over a parted table ----------------------------------------------------------------


@dataclass
class PartsRun:
    """Results for the parts to write (by part name; the others are kept as stored), and how
    the run went."""

    results: dict[str, CurationResult]
    info: RunInfo


def curate_parts(
    table: PartSet,
    filters: Sequence[Filter],
    state_dir: Path,
    context: str = "",
    stored: Sequence[tuple[str, str]] = (),
    start_over: str | None = None,
) -> PartsRun:
    """Curate a table of conversation parts. Parts curated before (same name and tag, in the
    same order, under the same fingerprint, and still ``stored`` as outputs) are kept; parts
    after them are appended (``curate_append``). Anything else runs ``curate_incremental`` over
    every row and writes every part. The state under ``state_dir`` follows the result.
    ``start_over``: a reason to reuse nothing of the state (every row through every filter)."""
    print_ = fingerprint(filters, context)
    if start_over is not None:
        return _full_parts(table, filters, state_dir, context, print_, [], start_over)
    wanted = [(p.name, p.tag) for p in table.parts]
    manifest = read_parts_manifest(state_dir)
    reason = "no state from an earlier run"
    entries: list[PartEntry] = []
    if manifest is not None:
        old_print, entries = manifest
        known = [(e.name, e.tag) for e in entries]
        if old_print != print_:
            reason = "filter config, filter code, libraries or tokenizer changed"
        elif wanted[: len(known)] != known:
            reason = "an earlier part changed (a drop ingested again, or rows replaced)"
        elif list(stored)[: len(known)] != known:
            reason = "the stored curated parts are not the ones the state describes"
        else:
            appended = _append_parts(table, filters, state_dir, print_, entries)
            if isinstance(appended, PartsRun):
                return appended
            reason = appended
    return _full_parts(table, filters, state_dir, context, print_, entries, reason)


def _append_parts(
    table: PartSet,
    filters: Sequence[Filter],
    state_dir: Path,
    print_: str,
    entries: list[PartEntry],
) -> PartsRun | str:
    clock = _Clock()
    try:
        states = [load_part_state(state_dir / e.folder) for e in entries]
    except (OSError, ValueError, pl.exceptions.PolarsError):
        return "the state of an earlier part cannot be read"
    clock.lap("load earlier parts' state")
    results: dict[str, CurationResult] = {}
    new_states: list[tuple[str, str, PartState]] = []
    rows_in = filtered = signed = 0
    for k, part in enumerate(table.parts[len(entries) :], start=len(entries)):
        earlier = Earlier(states, pl.scan_parquet([str(p) for p in table.paths()[:k]]))
        outcome = curate_append(table.read_part(part.name), filters, earlier)
        if isinstance(outcome, str):
            return outcome
        result, state, info = outcome
        results[part.name] = result
        states.append(state)
        new_states.append((part.name, part.tag, state))
        rows_in += info.rows_in
        filtered += info.rows_filtered
        signed += info.rows_signed
        for phase, seconds in info.seconds.items():
            clock.seconds[phase] = round(clock.seconds.get(phase, 0.0) + seconds, 4)
    clock.lap("append")
    for name, tag, state in new_states:
        entries = [*entries, PartEntry(name, tag, save_part_state(state, state_dir))]
    write_parts_manifest(state_dir, print_, entries)
    clock.lap("save new parts' state")
    if not new_states:
        reason = "no new part"
    else:
        reason = f"{len(new_states)} new part(s) after {len(states) - len(new_states)} unchanged"
    info = RunInfo("append", reason, rows_in, filtered, signed, clock.seconds)
    return PartsRun(results, info)


def _full_parts(
    table: PartSet,
    filters: Sequence[Filter],
    state_dir: Path,
    context: str,
    print_: str,
    entries: list[PartEntry],
    reason: str,
) -> PartsRun:
    """Every part from one run over all rows (incremental when the parts' states are valid)."""
    previous = None
    if entries:
        try:
            previous = joined_state(
                read_parts_manifest(state_dir)[0],  # type: ignore[index]
                [load_part_state(state_dir / e.folder) for e in entries],
            )
        except (OSError, ValueError, pl.exceptions.PolarsError):
            previous = None
    conversations = table.read() if table.parts else pl.DataFrame()
    part_of = pl.concat(
        [
            pl.scan_parquet(path)
            .select(pl.col("id").alias("row_id"))
            .with_columns(part=pl.lit(k, pl.UInt32))
            .collect()
            for k, path in enumerate(table.paths())
        ]
    ).unique("row_id", keep="first", maintain_order=True)
    result, state, run = curate_incremental(conversations, filters, previous, context)
    per_part = _split_result(result, part_of, len(table.parts))
    results = {p.name: per_part[k] for k, p in enumerate(table.parts)}
    state_dir.mkdir(parents=True, exist_ok=True)
    if state is not None:
        _, dedup = _split(filters)
        states = split_state(state, result, part_of, len(table.parts), dedup)
        new_entries = [
            PartEntry(p.name, p.tag, save_part_state(s, state_dir))
            for p, s in zip(table.parts, states, strict=True)
        ]
        write_parts_manifest(state_dir, print_, new_entries)
    else:
        (state_dir / PARTS_MANIFEST).unlink(missing_ok=True)
    why = f"{reason}; {run.mode}: {run.reason}" if run.mode == "incremental" else reason
    if run.mode == "full" and run.reason != "no state from an earlier run":
        why = f"{reason}; {run.reason}" if reason != run.reason else reason
    info = dataclasses.replace(run, reason=why)
    return PartsRun(results, info)


def _split_result(result: CurationResult, part_of: pl.DataFrame, parts: int) -> list:
    """One ``CurationResult`` per part, each frame in the full run's order."""

    def split(frame: pl.DataFrame, column: str) -> dict[int, pl.DataFrame]:
        tagged = frame.join(
            part_of.rename({"row_id": column}), on=column, how="left", maintain_order="left"
        )
        groups = tagged.partition_by("part", as_dict=True, maintain_order=True)
        return {key[0]: g.drop("part") for key, g in groups.items()}

    curated = split(result.curated, "id")
    ledger = split(result.ledger, "row_id")
    states = split(result.states, "row_id")
    return [
        CurationResult(
            curated=curated.get(k, result.curated.clear()),
            ledger=ledger.get(k, result.ledger.clear()),
            states=states.get(k, result.states.clear()),
        )
        for k in range(parts)
    ]
