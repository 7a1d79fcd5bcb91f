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

Conversations stored as one part per drop are curated by ``curation.append.curate_parts``,
which appends a new drop's part and falls back to ``curate_incremental`` over every row
where a full run would decide differently for an earlier part.

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
from curation.storage import write_parquet

VERSION = 1  # bump when what the state means changes
HASH_SEED = 0x1C2E
# In the order ``structural_findings`` lists them (its ledger is ordered by rule, then row).
STRUCTURAL_RULES = (
    "quality.empty_conversation",
    "quality.null_content",
    "quality.unknown_role",
    "structure.role_order",
)
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
    "curation/append.py",
    "curation/schema.py",
    "curation/tokens.py",
    "curation/preferences.py",
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
