"""Curation that pays for new rows only, with the result of a full run.

``curate`` is a chain of per-row filters (a row's verdicts and rewrites depend on its own
content and the filter config, nothing else) followed by the duplicate filter, which is a
property of the whole set. A refresh after a new drop sees mostly rows it has curated before,
so this module memoises the pure parts and recomputes only what depends on the set:

* Per-row filters: each row's findings (ledger rows), whether it survived, and its rewritten
  messages, keyed by (row id, a 64-bit hash of everything a filter sees of it: source, lang,
  meta, messages). Only rows whose (id, hash) is not in the state go through the filters. A new
  version of a row under an old id simply has another hash.
* Duplicates: a row's exact key, whether it has text and its MinHash signature depend on its own
  post-filter text only (``DedupFilter.exact_keys``/``row_signatures``), and are kept. Which
  rows are duplicates of which is then decided again over every row, on the kept values, by the
  full run's own code: grouping by key in batch order (the first of a group is kept),
  ``band_pairs`` over all signatures, signature agreement, the answer guard and union-find
  (``DedupFilter.near_from_signatures``). Verifications that read text (string equality of an
  exact pair, the answer guard of a near pair) are kept per pair of row ids and reused while
  both rows are unchanged. Deciding again costs a sort per band over all rows and a few
  joins (linear, but no text is read); memoising the verdicts themselves would not be exact:
  a new row can join two old clusters (union-find is transitive), a replaced row can stop being
  the kept copy, and an LSH bucket that grows past ``band_pairs``' small-bucket size proposes
  other pairs. Doing the set-level step again makes all of that the full run's behaviour by
  construction, in any row order, with rows removed, replaced or added.

The ledger is put together in the full run's order: by filter step, then (for the structural
checks, which list one rule after another) by rule block, then by row position, then by the
order of a row's findings within its step. Every filter lists its findings in row order, so
this is the order ``curate`` produces (tests/test_incremental.py compares frames exactly).

What invalidates the state (and makes the run ``full``, which computes everything and writes
a new state): another filter config, another version of the filter code (a hash of every file
of the filters package, of the curation modules in ``CODE_MODULES`` and of any other filter
class's module, plus ``VERSION``), another polars or numpy (the row and exact-key hashes are
polars hashes), or whatever the caller names in ``context`` (the tokenizer the length filter
counts with: it is not part of the filter's config). Cases the memoised path does not cover run
``curate`` itself and keep no state: messages that are not the canonical type (the cast and
its drop verdicts are about the whole column), a duplicate filter that is not the last filter,
and two different texts sharing a 64-bit exact key (``curate`` then groups key strings).

On disk (``save_state``): Parquet files for rows, findings, dedup keys and verified pairs, and
the signatures as one value-major uint32 ``.npy`` matrix, memory-mapped on load: converting a
Parquet list column to the layout banding reads cost more than the rest of a refresh. Each
save is a new sub-folder that ``CURRENT`` points to once complete; a state that cannot be read
makes the next run full.

``curate_parts`` (below) runs on conversations stored as one part per drop: a new drop is
appended (``curate_append``: its rows alone through the filters, deduplicated against what
earlier parts kept), and only what a full run would decide differently for an earlier part
sends it to ``curate_incremental`` over every row. Measured on 100k rows and a 1% drop
(bench/refresh.py): the ``curated_conversations`` step takes about 0.5 s against 4.9 s for a
full run (append), where the memoised path alone took 1.5 s.

A row's content hash is 64 bits: a changed row is mistaken for its old version with
probability 2**-64.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curation.curate import (
    STAGE,
    CurationResult,
    apply,
    curate,
    final_states,
    repeated_ids,
    structural_findings,
    with_repeated,
)
from curation.filters.base import FINDINGS, Batch, Filter
from curation.filters.dedup import DedupFilter
from curation.schema import LEDGER, MESSAGES
from curation.storage import PartSet, write_parquet

VERSION = 1  # bump when what the state means changes
HASH_SEED = 0x1C2E
STRUCTURAL_RULES = ("quality.empty_conversation", "quality.null_content", "quality.unknown_role")
ROWS = pl.Schema(
    {
        "row_id": pl.String,
        "row_hash": pl.UInt64,
        "survived": pl.Boolean,  # passed every per-row filter: the duplicate filter sees it
        "rewritten": pl.Boolean,
        "messages_after": MESSAGES,  # the rewritten messages (null unless rewritten)
    }
)
CACHED_FINDINGS = pl.Schema(
    {
        "row_id": pl.String,
        "step": pl.UInt16,  # 0: structural checks, k: the k-th filter
        "block": pl.UInt8,  # the structural rule's place in STRUCTURAL_RULES, else 0
        "seq": pl.UInt32,  # order of the row's findings within its step
        **FINDINGS,
    }
)
DEDUP = pl.Schema({"row_id": pl.String, "key": pl.UInt64, "filled": pl.Boolean})
PAIRS = pl.Schema({"kind": pl.String, "a": pl.String, "b": pl.String, "value": pl.Float64})
# Modules whose code decides verdicts besides the filters package.
CODE_MODULES = (
    "curation/curate.py",
    "curation/incremental.py",
    "curation/schema.py",
    "curation/tokens.py",
)


@dataclass
class CurationState:
    """What a run leaves for the next one (see the module docstring)."""

    fingerprint: str
    rows: pl.DataFrame  # ROWS, one per curated row
    findings: pl.DataFrame  # CACHED_FINDINGS of the per-row filters
    dedup: pl.DataFrame  # DEDUP: the rows the duplicate filter saw, in batch order
    signatures: np.ndarray  # (num_perm x len(dedup)) uint32: column k is dedup row k's
    pairs: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=PAIRS))


@dataclass
class RunInfo:
    mode: str  # incremental | full
    reason: str
    rows_in: int
    rows_filtered: int  # rows that went through the per-row filters this run
    rows_signed: int  # rows whose dedup key and signature were computed this run
    seconds: dict[str, float] = field(default_factory=dict)  # wall seconds per phase


# --- fingerprint ------------------------------------------------------------------------------


def _canonical(value: Any) -> Any:
    """A JSON-able form of a filter field that is the same in every process: sets sorted
    (their iteration order follows Python's per-process string hashing), mappings by key."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            "__class__": type(value).__qualname__,
            **{
                f.name: _canonical(getattr(value, f.name))
                for f in dataclasses.fields(value)
                if f.compare
            },
        }
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, set | frozenset):
        return sorted(_canonical(v) for v in value)
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)  # e.g. a judge object: its repr, so another one invalidates the state


def _source_files(filters: Sequence[Filter]) -> list[Path]:
    """Every file of the filters package (word lists included), the modules in
    ``CODE_MODULES`` and the module of any filter class from elsewhere."""
    root = Path(__file__).resolve().parents[1]
    files = {root / name for name in CODE_MODULES}
    files |= {
        path
        for path in (root / "curation" / "filters").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    for f in filters:
        source = inspect.getsourcefile(type(f))
        if source:
            files.add(Path(source).resolve())
    return sorted(files)


def fingerprint(filters: Sequence[Filter], context: str = "") -> str:
    """What the state is valid for: the filters' config, their code, library versions and
    ``context`` (anything else a verdict depends on, such as the tokenizer)."""
    digest = hashlib.sha256()
    payload = {
        "version": VERSION,
        "polars": pl.__version__,
        "numpy": np.__version__,
        "filters": [_canonical(f) for f in filters],
        "context": context,
    }
    digest.update(json.dumps(payload, sort_keys=True).encode())
    for path in _source_files(filters):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


# --- state on disk ----------------------------------------------------------------------------


def save_state(state: CurationState, folder: Path) -> Path:
    """Write the state as Parquet files in a fresh sub-folder, then point ``CURRENT`` at it
    (one atomic rename), so a crash never leaves a mix of two runs' files."""
    folder.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    target = folder / token
    for name, frame in (
        ("rows", state.rows),
        ("findings", state.findings),
        ("dedup", state.dedup),
        ("pairs", state.pairs),
    ):
        write_parquet(frame, target / f"{name}.parquet")
    # The signatures are a plain uint32 matrix that the next run slices column by column: as
    # .npy it is written and memory-mapped as is (as a Parquet list column, converting it to
    # and from the value-major layout cost more than the rest of a refresh).
    np.save(target / "signatures.npy", np.ascontiguousarray(state.signatures))
    (target / "fingerprint").write_text(state.fingerprint)
    pointer = folder / f".CURRENT.{token}.tmp"
    pointer.write_text(token)
    pointer.replace(folder / "CURRENT")
    for old in folder.iterdir():
        if old.is_dir() and old.name != token:
            shutil.rmtree(old, ignore_errors=True)
    return target


def load_state(folder: Path) -> CurationState | None:
    """The state ``save_state`` last completed in ``folder``, or None."""
    pointer = folder / "CURRENT"
    if not pointer.exists():
        return None
    target = folder / pointer.read_text().strip()
    try:
        frames = {n: pl.read_parquet(target / f"{n}.parquet") for n in STATE_FRAMES}
        signatures = np.load(target / "signatures.npy", mmap_mode="r")
        fingerprint = (target / "fingerprint").read_text()
        if signatures.ndim != 2 or signatures.shape[1] != frames["dedup"].height:
            return None
        return CurationState(fingerprint=fingerprint, signatures=signatures, **frames)
    except (OSError, ValueError, pl.exceptions.PolarsError):
        return None  # unreadable: the run is full and writes a new state


STATE_FRAMES = ("rows", "findings", "dedup", "pairs")


# --- the run ----------------------------------------------------------------------------------


def row_hashes(conversations: pl.DataFrame) -> pl.Series:
    """A 64-bit hash of everything a filter sees of a row besides its id."""
    return conversations.select(
        pl.struct("source", "lang", "meta", "messages").hash(HASH_SEED).alias("row_hash")
    )["row_hash"]


def curate_incremental(
    conversations: pl.DataFrame,
    filters: Sequence[Filter],
    previous: CurationState | None,
    context: str = "",
) -> tuple[CurationResult, CurationState | None, RunInfo]:
    """``curate(conversations, filters)``, reusing what ``previous`` knows of unchanged rows.
    Returns the result, the state for the next run (None where the memoised path does not
    apply) and how the run went."""
    per_row, dedup = _split(filters)
    height = conversations.height
    if conversations.schema.get("messages") != MESSAGES:
        reason = "messages are not the canonical type"
        return curate(conversations, filters), None, RunInfo("full", reason, height, height, 0)
    if per_row is None:
        reason = "the duplicate filter is not the last filter"
        return curate(conversations, filters), None, RunInfo("full", reason, height, height, 0)
    print_ = fingerprint(filters, context)
    if previous is None:
        reason = "no state from an earlier run"
    elif previous.fingerprint != print_:
        reason = "filter config, filter code, libraries or tokenizer changed"
        previous = None
    else:
        reason = ""
    clock = _Clock()
    result, state, counts = _run(conversations, per_row, dedup, previous, print_, clock)
    if result is None:  # an exact-key collision: the full run's fallback decides
        reason = "two different texts share an exact-duplicate key"
        return curate(conversations, filters), None, RunInfo("full", reason, height, height, 0)
    mode = "incremental" if previous is not None else "full"
    info = RunInfo(mode, reason or "unchanged rows reused", height, *counts, clock.seconds)
    return result, state, info


class _Clock:
    """Wall seconds per phase of a run, for the asset's metadata and bench/refresh.py."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._last, 4)
        self._last = now


def _split(filters: Sequence[Filter]) -> tuple[list[Filter] | None, DedupFilter | None]:
    dedups = [i for i, f in enumerate(filters) if isinstance(f, DedupFilter)]
    if not dedups:
        return list(filters), None
    if dedups != [len(filters) - 1]:
        return None, None
    return list(filters[:-1]), filters[-1]  # type: ignore[return-value]


def _run(
    conversations: pl.DataFrame,
    per_row: list[Filter],
    dedup: DedupFilter | None,
    previous: CurationState | None,
    print_: str,
    clock: _Clock,
) -> tuple[CurationResult | None, CurationState | None, tuple[int, int]]:
    """The memoised run; (None, None, ...) when an exact pair's texts differ."""
    conv, repeated = repeated_ids(conversations)
    # ``rows`` stays aligned with ``conv`` (one entry per row, same order): masks over it
    # select rows of ``conv`` without joining the wide input.
    keys = conv.select(pl.col("id").alias("row_id"), row_hash=row_hashes(conv))
    if previous is not None:
        matched = keys.join(
            previous.rows, on=["row_id", "row_hash"], how="left", maintain_order="left"
        )
    else:
        matched = keys.with_columns(
            pl.lit(None, dtype).alias(name) for name, dtype in ROWS.items() if name not in keys
        )
    known = matched["survived"].is_not_null()
    known_ids = keys["row_id"].filter(known)
    fresh = conv.filter(~known)
    clock.lap("hash and match rows")
    new_rows, new_findings, new_batch = _filter_rows(fresh, per_row)
    clock.lap("per-row filters on new rows")
    positions = pl.int_range(pl.len(), dtype=pl.UInt32).alias("pos")
    rows = (
        pl.concat(
            [
                matched.with_columns(positions).filter(known),
                new_rows.with_columns(
                    keys["row_hash"].filter(~known),
                    pos=pl.Series(np.flatnonzero(~known.to_numpy()), dtype=pl.UInt32),
                ),
            ],
            how="diagonal_relaxed",
        )
        .sort("pos")
        .select(ROWS.names())
        .cast(ROWS)
    )
    findings = pl.DataFrame(schema=CACHED_FINDINGS)
    if previous is not None:
        findings = previous.findings.filter(pl.col("row_id").is_in(known_ids.implode()))
    findings = pl.concat([findings, new_findings])
    survived = rows["survived"]
    survivors = pl.DataFrame(
        {"row_id": keys["row_id"].filter(survived), "source": conv["source"].filter(survived)}
    )
    clock.lap("cached findings")
    dedup_state = pl.DataFrame(schema=DEDUP)
    signatures = np.empty((0, 0), dtype=np.uint32)
    pairs = pl.DataFrame(schema=PAIRS)
    dedup_findings = pl.DataFrame(schema=CACHED_FINDINGS)
    signed = 0
    if dedup is not None and survivors.height:
        texts = _TextSource(conv, rows, new_batch, dedup)
        dedup_state, signatures, signed = _dedup_values(
            dedup, survivors, previous, known_ids, texts
        )
        clock.lap("dedup keys and signatures")
        outcome = _deduplicate(
            dedup, survivors, dedup_state, signatures, previous, texts, known_ids
        )
        if outcome is None:
            return None, None, (0, 0)
        found, pairs = outcome
        dedup_findings = found.with_columns(
            step=pl.lit(len(per_row) + 1, pl.UInt16),
            block=pl.lit(0, pl.UInt8),
            seq=pl.lit(0, pl.UInt32),
        ).select(CACHED_FINDINGS.names())
        clock.lap("dedup verdicts")

    result = _assemble(conv, repeated, rows, pl.concat([findings, dedup_findings]))
    clock.lap("assemble")
    state = CurationState(print_, rows, findings, dedup_state, signatures, pairs)
    return result, state, (fresh.height, signed)


def _filter_rows(
    fresh: pl.DataFrame, per_row: list[Filter]
) -> tuple[pl.DataFrame, pl.DataFrame, Batch]:
    """The per-row part of ``curate`` on the rows not seen before: their ROWS entries (without
    the hash), their findings, and the batch of the survivors (rewritten)."""
    structural = structural_findings(fresh)
    block = pl.col("rule").replace_strict(
        {rule: i for i, rule in enumerate(STRUCTURAL_RULES)}, return_dtype=pl.UInt8
    )
    parts = [structural.ledger.with_columns(step=pl.lit(0, pl.UInt16), block=block)]
    dead = structural.ledger.select("row_id").unique()
    batch = Batch.from_conversations(fresh.join(dead, left_on="id", right_on="row_id", how="anti"))
    rewritten: list[pl.DataFrame] = []
    for step, f in enumerate(per_row, start=1):
        if batch.rows.height == 0:
            break
        found = f(batch)
        parts.append(
            found.ledger.select(FINDINGS.names())
            .cast(FINDINGS)
            .with_columns(step=pl.lit(step, pl.UInt16), block=pl.lit(0, pl.UInt8))
        )
        batch, changed = apply(batch, found)
        rewritten.append(changed)
    findings = (
        pl.concat(parts)
        .with_columns(seq=pl.int_range(pl.len(), dtype=pl.UInt32).over("row_id", "step"))
        .select(CACHED_FINDINGS.names())
        .cast(CACHED_FINDINGS)
    )
    rewritten_ids = (
        pl.concat(rewritten).unique()["row_id"] if rewritten else pl.Series([], dtype=pl.String)
    )
    survived = batch.rows["row_id"]
    after = _messages_after(batch, rewritten_ids)
    rows = (
        fresh.select(pl.col("id").alias("row_id"))
        .with_columns(
            survived=pl.col("row_id").is_in(survived.implode()),
            rewritten=pl.col("row_id").is_in(rewritten_ids.implode()),
        )
        .join(after, on="row_id", how="left", maintain_order="left")
    )
    return rows, findings, batch


def _messages_after(batch: Batch, rewritten_ids: pl.Series) -> pl.DataFrame:
    """Rewritten survivors' messages, built as ``curate.rebuild`` builds them."""
    return (
        batch.messages.filter(pl.col("row_id").is_in(rewritten_ids.implode()))
        .sort("row_id", "turn")
        .group_by("row_id")
        .agg(pl.struct("role", "content").alias("messages_after"))
        .with_columns(pl.col("messages_after").cast(MESSAGES))
    )


class _TextSource:
    """Post-filter messages of any current row, as a batch: a new row's from this run's
    filters, an old row's from its rewritten messages or, unchanged, from the input."""

    def __init__(
        self, conv: pl.DataFrame, rows: pl.DataFrame, new_batch: Batch, dedup: DedupFilter
    ) -> None:
        self.conv, self.rows, self.new_batch, self.dedup = conv, rows, new_batch, dedup

    def turns(self, row_ids: pl.Series) -> tuple[pl.DataFrame, pl.DataFrame]:
        """``DedupFilter.turns`` of the rows ``row_ids`` (in that order)."""
        wanted = pl.DataFrame({"id": row_ids.unique(maintain_order=True)})
        ids = wanted["id"].implode()
        fresh = self.new_batch.rows["row_id"]
        if bool(wanted["id"].is_in(fresh.implode()).all()):
            # New rows only (the usual case): their messages are in this run's batch already.
            order = wanted.rename({"id": "row_id"}).with_row_index("_order")
            messages = (
                self.new_batch.messages.filter(pl.col("row_id").is_in(ids))
                .join(order, on="row_id")
                .sort("_order", "turn")
                .drop("_order")
            )
            rows = order.join(self.new_batch.rows, on="row_id").sort("_order").drop("_order")
            return self.dedup.turns(Batch(messages=messages, rows=rows))
        # Only rows of the wanted ids take part in the joins: the input has every row.
        conv = self.conv.filter(pl.col("id").is_in(ids))
        after = self.rows.filter(pl.col("row_id").is_in(ids)).select(
            pl.col("row_id").alias("id"), "messages_after"
        )
        convs = (
            wanted.join(conv, on="id", how="left", maintain_order="left")
            .join(after, on="id", how="left", maintain_order="left")
            .with_columns(pl.coalesce("messages_after", "messages").alias("messages"))
            .drop("messages_after")
        )
        return self.dedup.turns(Batch.from_conversations(convs))


def _dedup_values(
    dedup: DedupFilter,
    survivors: pl.DataFrame,
    previous: CurationState | None,
    known_ids: pl.Series,
    texts: _TextSource,
) -> tuple[pl.DataFrame, np.ndarray, int]:
    """DEDUP rows and signatures of every survivor, in batch order: an unchanged row's from
    the state, the others' computed (their text normalised once, here)."""
    ordered = survivors.select("row_id")
    if previous is not None and previous.dedup.height:
        kept = previous.dedup.with_row_index("col").filter(
            pl.col("row_id").is_in(known_ids.implode())
        )
        ordered = ordered.join(kept, on="row_id", how="left", maintain_order="left")
    else:
        ordered = ordered.with_columns(
            col=pl.lit(None, pl.UInt32),
            key=pl.lit(None, pl.UInt64),
            filled=pl.lit(None, pl.Boolean),
        )
    have = ordered["col"].is_not_null().to_numpy()
    missing = np.flatnonzero(~have)
    if have.any():
        # One gather of the old columns (a missing row's is overwritten below).
        source = ordered["col"].fill_null(0).to_numpy().astype(np.int64)
        signatures = np.take(previous.signatures, source, axis=1)  # type: ignore[union-attr]
    else:
        signatures = np.zeros((dedup.num_perm, ordered.height), dtype=np.uint32)
    if missing.size:
        rows, turns = texts.turns(ordered["row_id"].gather(missing))
        keyed = rows.select("idx").join(
            dedup.exact_keys(turns), on="idx", how="left", maintain_order="left"
        )
        filled = keyed["filled"].fill_null(False).to_numpy()
        fresh = np.zeros((dedup.num_perm, missing.size), dtype=np.uint32)  # no text: unused
        fresh[:, filled] = dedup.row_signatures(keyed["idx"].to_numpy()[filled], turns)
        signatures[:, missing] = fresh
        ordered = ordered.with_columns(
            key=ordered["key"].scatter(missing, keyed["key"]),
            filled=ordered["filled"].scatter(missing, pl.Series(filled)),
        )
    return ordered.select(DEDUP.names()).cast(DEDUP), signatures, int(missing.size)


def _deduplicate(
    dedup: DedupFilter,
    survivors: pl.DataFrame,
    values: pl.DataFrame,
    signatures: np.ndarray,
    previous: CurationState | None,
    texts: _TextSource,
    known_ids: pl.Series,
) -> tuple[pl.DataFrame, pl.DataFrame] | None:
    """``DedupFilter.__call__``'s findings over the survivors (in order), from their kept
    values. None when an exact pair's texts differ (the full run then groups key strings)."""
    rows = (
        survivors.select("row_id", "source")
        .with_row_index("idx")
        .with_columns(values.select("key", "filled"))
    )
    old_pairs = pl.DataFrame(schema=PAIRS)
    if previous is not None:
        unchanged = known_ids.implode()
        old_pairs = previous.pairs.filter(
            pl.col("a").is_in(unchanged) & pl.col("b").is_in(unchanged)
        )
    parts: list[pl.DataFrame] = []
    pairs: list[pl.DataFrame] = []
    dropped = pl.DataFrame(schema={"idx": pl.UInt32})
    if dedup.exact:
        exact = _exact(rows, old_pairs, texts)
        if exact is None:
            return None
        found, verified = exact
        parts.append(found)
        pairs.append(verified)
        dropped = found.select("idx")
    if dedup.near:
        alive = rows.filter("filled").join(dropped, on="idx", how="anti").sort("idx")
        # np.take keeps the value-major (C) layout that banding and agreement read fast;
        # ``signatures[:, idx]`` would give a column-major copy, several times slower to use.
        sig = np.take(signatures, alive["idx"].to_numpy().astype(np.int64), axis=1)
        guard = _Guard(dedup, alive, old_pairs, texts)
        parts.append(dedup.near_from_signatures(alive.select("idx", "row_id"), sig, guard))
        pairs.append(guard.seen())
    if not parts:
        return pl.DataFrame(schema=FINDINGS), pl.DataFrame(schema=PAIRS)
    found = pl.concat(parts).sort("idx")
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
    return ledger.cast(FINDINGS), pl.concat(pairs).cast(PAIRS)


def _exact(
    rows: pl.DataFrame, old_pairs: pl.DataFrame, texts: _TextSource
) -> tuple[pl.DataFrame, pl.DataFrame] | None:
    """The exact pass from kept keys: in each group of equal keys the first row is kept; every
    other member must have the same normalised turns as the first (checked once per pair)."""
    filled = rows.filter("filled")
    grouped = filled.with_columns(first=pl.col("idx").min().over("key")).filter(
        pl.col("idx") != pl.col("first")
    )
    firsts = rows.select(pl.col("idx").alias("first"), pl.col("row_id").alias("kept_id"))
    grouped = grouped.join(firsts, on="first", how="left")
    checked = old_pairs.filter(pl.col("kind") == "exact").select(
        pl.col("a").alias("row_id"), pl.col("b").alias("kept_id")
    )
    todo = grouped.join(checked, on=["row_id", "kept_id"], how="anti")
    if todo.height:
        _, turns = texts.turns(pl.concat([todo["row_id"], todo["kept_id"]]))
        ids = (
            pl.concat([todo["row_id"], todo["kept_id"]])
            .unique(maintain_order=True)
            .to_frame("row_id")
            .with_row_index("idx")
        )
        per_row = (
            turns.group_by("idx", maintain_order=True)
            .agg(pl.struct("role", "norm").alias("turns"))
            .join(ids, on="idx")
            .select("row_id", "turns")
        )
        compared = todo.join(per_row, on="row_id").join(
            per_row.rename({"row_id": "kept_id", "turns": "kept_turns"}), on="kept_id"
        )
        if compared.height != todo.height or not bool(
            (compared["turns"] == compared["kept_turns"]).all()
        ):
            return None
    found = grouped.sort("idx").select(
        "idx",
        "row_id",
        pl.lit("duplicate.exact").alias("rule"),
        pl.format("exact duplicate of {} (same normalised text)", "kept_id").alias("reason"),
        pl.lit(1.0).alias("score"),
    )
    verified = grouped.select(
        kind=pl.lit("exact"), a="row_id", b="kept_id", value=pl.lit(1.0, pl.Float64)
    )
    return found, verified


class _Guard:
    """The answer guard for pairs of positions in ``alive``: a pair of unchanged rows checked
    in an earlier run reuses its similarity, the others are computed from their answers."""

    def __init__(
        self, dedup: DedupFilter, alive: pl.DataFrame, old_pairs: pl.DataFrame, texts: _TextSource
    ) -> None:
        self.dedup, self.texts = dedup, texts
        self.ids = alive["row_id"]
        self.cache = old_pairs.filter(pl.col("kind") == "guard").select("a", "b", "value")
        self.used = pl.DataFrame(schema=PAIRS)

    def __call__(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        a, b = self.ids.gather(i), self.ids.gather(j)
        # Keyed by the ordered pair of ids: the guard is symmetric, positions move between runs.
        asked = pl.DataFrame({"x": a, "y": b}).select(
            pl.min_horizontal("x", "y").alias("a"), pl.max_horizontal("x", "y").alias("b")
        )
        asked = asked.with_row_index("k").join(self.cache, on=["a", "b"], how="left")
        out = asked["value"].to_numpy(allow_copy=True).astype(np.float64)
        todo = np.flatnonzero(asked["value"].is_null().to_numpy())
        if todo.size:
            rows, turns = self.texts.turns(pl.concat([a.gather(todo), b.gather(todo)]))
            position = dict(zip(rows["row_id"].to_list(), rows["idx"].to_list(), strict=True))
            needed = rows["idx"].to_numpy()
            answers = self.dedup.answers(turns, needed)
            at = {idx: k for k, idx in enumerate(needed.tolist())}
            ia = np.array([at[position[r]] for r in a.gather(todo).to_list()], dtype=np.int64)
            ib = np.array([at[position[r]] for r in b.gather(todo).to_list()], dtype=np.int64)
            out[todo] = self.dedup.answer_similarity(answers, ia, ib)
        self.used = pl.concat(
            [
                self.used,
                asked.select("a", "b", kind=pl.lit("guard"), value=pl.Series(out)).select(
                    PAIRS.names()
                ),
            ]
        )
        return out

    def seen(self) -> pl.DataFrame:
        return self.used.unique(subset=["a", "b"], keep="first")


def _assemble(
    conv: pl.DataFrame, repeated: pl.DataFrame, rows: pl.DataFrame, findings: pl.DataFrame
) -> CurationResult:
    """Curated rows, ledger and states as ``curate`` builds them, from every row's findings
    (``rows`` is aligned with ``conv``)."""
    positions = rows.select("row_id").with_row_index("pos")
    ledger = (
        findings.join(positions, on="row_id", how="left")
        .sort("step", "block", "pos", "seq")
        .with_columns(stage=pl.lit(STAGE))
        .select(LEDGER.names())
        .cast(LEDGER)
    )
    drops = ledger.filter(pl.col("verdict") == "drop")["row_id"].unique()
    kept = rows["survived"] & ~rows["row_id"].is_in(drops.implode())
    curated = conv
    if bool(rows["rewritten"].any()):
        # As ``curate.rebuild``: rewritten messages where a row has them (only survivors of
        # the per-row filters do).
        curated = conv.with_columns(
            pl.coalesce(rows["messages_after"], pl.col("messages")).cast(MESSAGES).alias("messages")
        )
    curated = curated.filter(kept)
    rewritten_ids = rows.filter("rewritten").select("row_id")
    states = final_states(conv, ledger, curated, rewritten_ids)
    return with_repeated(CurationResult(curated=curated, ledger=ledger, states=states), repeated)


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
    dedup: pl.DataFrame
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
        dedup=pl.concat([p.dedup.select(DEDUP.names()) for p in parts])
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
        sizes = [s.dedup.height for s in earlier.states]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.old_n = int(self.offsets[-1])
        self.old = (
            pl.concat([s.dedup for s in earlier.states]).with_row_index("node")
            if earlier.states
            else pl.DataFrame(schema=PART_DEDUP).with_row_index("node")
        )

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
            self.old.filter(pl.col("filled") & pl.col("key").is_in(filled["key"].implode()))
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
            tuples = self.sig[b * width : (b + 1) * width][:, alive].T
            _, group, counts = np.unique(tuples, axis=0, return_inverse=True, return_counts=True)
            group = group.reshape(-1)
            matched = np.zeros(alive.size, dtype=bool)
            for state in self.earlier.states:
                if state.band_keys.size:
                    keys = state.band_keys[b]
                    lo = np.searchsorted(keys, new_keys[b], "left")
                    hi = np.searchsorted(keys, new_keys[b], "right")
                    matched |= hi > lo
            interesting = np.unique(group[matched | (counts[group] > 1)])
            for g in interesting.tolist():
                members = np.flatnonzero(group == g)
                olds = self._old_members(b, int(new_keys[b, members[0]]), tuples[members[0]])
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
                        "an LSH bucket of earlier rows grew past band_pairs' small-bucket size "
                        "and a pair it no longer proposes was similar"
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
            lo, hi = np.searchsorted(keys, key, "left"), np.searchsorted(keys, key, "right")
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
        info = self.old.filter(pl.col("node").is_in(pl.Series(touched, dtype=pl.UInt32).implode()))
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
            by_id = self.old.filter(pl.col("row_id").is_in(roots["root"].implode())).select(
                "row_id", "node"
            )
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
            found = self.old.filter(pl.col("node").is_in(pl.Series(old, dtype=pl.UInt32).implode()))
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
    # Only the duplicate pass's table is read now; rows, findings and pairs are scanned when
    # a verification or a run over every row needs them.
    frames: dict[str, Any] = {n: pl.scan_parquet(folder / f"{n}.parquet") for n in PART_FRAMES}
    frames["dedup"] = pl.read_parquet(folder / "dedup.parquet")
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
) -> PartsRun:
    """Curate a table of conversation parts. Parts curated before (same name and tag, in the
    same order, under the same fingerprint, and still ``stored`` as outputs) are kept; parts
    after them are appended (``curate_append``). Anything else runs ``curate_incremental`` over
    every row and writes every part. The state under ``state_dir`` follows the result."""
    print_ = fingerprint(filters, context)
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
