"""Exact and near-duplicate conversations across all sources.

Exact pass: a normalised text key (lowercase, Unicode punctuation removed, whitespace collapsed)
over the user and assistant turns, role-tagged, in turn order. Rows whose key equals an earlier
row's key are ``duplicate.exact``; the first occurrence (batch order) is kept and named. Rows are
grouped by a 128-bit hash of the key (two seeded polars hashes per turn, mixed with the turn's
role and position), and every row so grouped is then compared with its group's first row turn
by turn, string against string: the verdicts are those of comparing the keys themselves, and
should two different keys ever share a hash, the pass falls back to grouping the key strings.

Near pass, over the rows the exact pass kept: MinHash LSH on the shingles of the same normalised
text (word 3-grams; character 5-grams for texts too short for word shingles to survive a single
edit, see ``DedupFilter.char_below_words``). Candidate pairs from banded buckets (20 bands of 6
rows at the defaults) are verified by signature agreement (the MinHash estimate of Jaccard)
>= ``threshold``, and by their answers: the normalised answers' character 5-gram Jaccard,
computed exactly, must reach ``answer_threshold`` (0.5). The guard keeps templated tasks apart:
FLAN/NIv2 rows share a long definition and differ in a one-word input and answer ("Input: early
/ Output: late" vs "Input: full / Output: empty" have word 3-gram Jaccard 0.75 over prompt and
answer). It cannot separate templated rows that also share their answer (a classification task
with a two-word input and the same label): by surface similarity those are near duplicates,
and ``near_policy`` can flag rather than drop them for such sources. Verified pairs are joined
into clusters (union-find); each cluster keeps its first row and every other member is
``duplicate.near`` with the kept row's id in the reason and the estimated Jaccard to it as the
score.

Signatures are one-permutation MinHash (Li, Owen & Zhang 2012): each shingle is hashed once, its
top bits pick one of ``num_perm`` bins and its low bits compete for that bin's minimum, so the
cost is one hash per shingle rather than one per shingle and permutation. Empty bins (a text
with fewer shingles than bins leaves many) are densified (Shrivastava 2017): an empty bin takes
the value of the bin ``shift`` places further on (circularly), for shifts tried in a fixed
seeded order (a permutation of 1..num_perm-1), the first that lands on a bin the shingles
filled. The order depends on the seed only, never on the text, so for any two texts each bin
agrees with probability exactly their Jaccard similarity; and since a shift moves all empty bins
alike, two empty bins never borrow the same source at the same step, which keeps the estimate's
spread at or below that of ``num_perm`` independent permutations (measured: standard deviation
0.0385 vs 0.0408 at 56 shingles and Jaccard 0.7, 0.0405 vs 0.0401 at 6 shingles, 0.038 vs 0.041
at 1000; independent per-bin probes, as in the paper, gave 0.0425-0.0496).

Everything that decides a verdict is deterministic across processes, machines and library
versions (up to Unicode table updates in the lowercasing and punctuation classes of polars'
regex engine): no Python ``hash()``, and polars' ``hash()`` only where the exact pass looks for
candidates, which it then compares as strings. A word's hash (``word_hashes``) is read from its
UTF-8 bytes as little-endian 8-byte blocks chained through the splitmix64 finaliser, with its
length; the bytes come straight from the texts' Arrow buffers, a word's first block in one
unaligned 8-byte load, so no Python string is built for the word path. A word shingle's hash is
``splitmix64(sum_k word_k * m_k)`` (uint64, wrapping). A character shingle's is a polynomial
over its code points (from prefix sums, so every window costs O(1)), with its length, through
splitmix64, mixed with a salt. The odd ``m_k``, the salt and the densification order come from
a splitmix64 stream of ``seed``.

The filter needs the whole corpus in one ``Batch``: duplicates are a property of the set, and a
chunked call would only find duplicates within a chunk. Rows are chunked internally
(``chunk_rows``) only to bound memory; verdicts do not depend on it.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import numpy as np
import polars as pl

from curation.filters.base import Batch, Findings, Policy

U64 = np.uint64
U32 = np.uint32
MAX_U32 = np.iinfo(np.uint32).max
EMPTY = MAX_U32  # an empty bin of a one-permutation signature; bin values are 31-bit
ROW_SEP = 0x0A  # "\n": never inside a normalised text (whitespace is collapsed to " ")
SPACE = 0x20
POLY_BASE = 0x100000001B3  # FNV-64 prime: odd, so invertible mod 2**64
POLY_INV = pow(POLY_BASE, -1, 2**64)
# Shingling reads texts in steps of about this many UTF-8 bytes: the step's uint64 arrays then
# stay in cache, which makes the per-character work several times cheaper than in big chunks.
STEP_BYTES = 1 << 19
# Densify whole (bins x rows) blocks, shift by shift, while at least this share of bins is
# empty; the few left are then followed one by one.
DENSE_SHARE = 0.2
GUARD_CHARS = 1_000_000  # answer characters compared per batch of candidate pairs
GUARD_MAX_CHARS = 100_000  # characters of one answer the answer guard looks at
# The guard packs (row in batch, shingle hash) into one uint64 so one sort finds each answer's
# distinct shingles: a batch has at most 2 * GUARD_CHARS rows (< 2**23), the hash keeps 41 bits.
# Batches of 1M characters keep that sort and its lookups in cache.
GUARD_ROW_BITS = 23
GUARD_HASH_BITS = 64 - GUARD_ROW_BITS
NEAR_SCHEMA = {
    "idx": pl.UInt32,
    "row_id": pl.String,
    "rule": pl.String,
    "reason": pl.String,
    "score": pl.Float64,
}

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)


@contextmanager
def _phase(name: str, **counts: int) -> Iterator[None]:
    """Log a phase's wall and process CPU seconds at DEBUG (bench/dedup.py collects them)."""
    if not log.isEnabledFor(logging.DEBUG):
        yield
        return
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    log.debug(
        "phase %s",
        name,
        extra={
            "phase": name,
            "wall_s": time.perf_counter() - wall,
            "cpu_s": time.process_time() - cpu,
            **counts,
        },
    )


def normalise(expr: pl.Expr) -> pl.Expr:
    """Lowercase, drop Unicode punctuation, collapse whitespace: the text both passes compare.
    Symbols (``+``, emoji) stay, so "2 + 2" and emoji-only texts do not collapse to nothing."""
    return (
        expr.str.to_lowercase()
        .str.replace_all(r"\p{P}+", "")
        # Only runs of 2+ whitespace characters or non-space whitespace are replaced: ``\s+``
        # would also rewrite every single space, four times slower on ordinary text.
        .str.replace_all(r"\s{2,}|[^\S ]", " ")
        .str.strip_chars(" ")
    )


def _parallel(fn: Callable[[T], R], items: Iterable[T], threads: int) -> list[R]:
    """``fn`` over ``items`` in order, ``threads`` at a time (numpy and polars release the GIL
    in their loops, so the calls overlap on several cores)."""
    items = list(items)
    if threads <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(fn, items))


def _normalise_series(texts: pl.Series, threads: int) -> pl.Series:
    """``normalise`` over a string Series, in ``threads`` slices at once (a polars string
    expression over one column runs on one core)."""
    step = max(1, -(-texts.len() // max(threads, 1)))

    def one(start: int) -> pl.Series:
        return texts.slice(start, step).to_frame("t").select(normalise(pl.col("t")))["t"]

    parts = _parallel(one, range(0, max(texts.len(), 1), step), threads)
    return pl.concat(parts, rechunk=False) if len(parts) > 1 else parts[0]


# --- stable hashing ---------------------------------------------------------------------------


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (Steele et al.), element-wise on uint64 (wrapping arithmetic).
    Returns a new array; ``x`` is not modified."""
    with np.errstate(over="ignore"):
        z = x + U64(0x9E3779B97F4A7C15)
        z ^= z >> U64(30)
        z *= U64(0xBF58476D1CE4E5B9)
        z ^= z >> U64(27)
        z *= U64(0x94D049BB133111EB)
        z ^= z >> U64(31)
        return z


def splitmix_stream(seed: int, n: int) -> np.ndarray:
    """``n`` pseudo-random uint64 values from ``seed``: independent of numpy's RNG policy."""
    counter = np.arange(1, n + 1, dtype=U64) * U64(0x9E3779B97F4A7C15)
    return splitmix64(counter + U64(seed % 2**64))


LENGTH_MIX = splitmix64(np.arange(4096, dtype=U64))  # splitmix64(length) for short segments


def _length_mix(lengths: np.ndarray) -> np.ndarray:
    if lengths.size and int(lengths.max()) < LENGTH_MIX.size:
        return LENGTH_MIX[lengths]
    return splitmix64(lengths.astype(U64))


def _codepoints(texts: list[str]) -> np.ndarray:
    """All texts as one uint32 array of code points, separated by ``ROW_SEP``."""
    return np.frombuffer("\n".join(texts).encode("utf-32-le"), dtype=U32)


def poly_tables(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``B**(q + 1)`` and ``B**-q`` (uint64, wrapping) for ``q < n``: with them, the polynomial
    hash of any segment of a text is a difference of two prefix sums (``Segments``)."""
    n = max(n, 1)
    up = np.cumprod(np.full(n, POLY_BASE, dtype=U64), dtype=U64)
    down = np.ones(n, dtype=U64)
    down[1:] = np.cumprod(np.full(n - 1, POLY_INV, dtype=U64), dtype=U64)
    return up, down


class PolyTables:
    """``poly_tables`` of at least the size asked for, built once and grown when a bigger one
    is asked for (tables are read-only, so threads may share them)."""

    def __init__(self) -> None:
        self._tables = poly_tables(1)
        self._lock = threading.Lock()

    def at_least(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        tables = self._tables
        if tables[0].size < n:
            with self._lock:
                if self._tables[0].size < n:
                    self._tables = poly_tables(max(n, 2 * self._tables[0].size))
                tables = self._tables
        return tables


class Segments:
    """Code points (uint64, already including any separator rewrites) with the prefix sums of
    ``(cp + 1) * B**(q + 1)`` (``q`` the position), so that the hash of any segment costs O(1):
    ``sum over the segment of (cp + 1) * B**(position in segment + 1)`` is
    ``(prefix[end] - prefix[start]) * B**-start``. ``tables``: ``poly_tables`` of at least the
    code point count."""

    def __init__(self, cp: np.ndarray, tables: tuple[np.ndarray, np.ndarray]) -> None:
        up, self.down = tables
        x = cp.astype(U64)
        x += U64(1)
        x *= up[: x.size]
        self.prefix = np.zeros(x.size + 1, dtype=U64)
        np.cumsum(x, out=self.prefix[1:])

    def hashes(self, starts: np.ndarray, ends: np.ndarray, short: bool = False) -> np.ndarray:
        """Polynomial hashes of the segments ``[starts, ends)``, with their lengths, through
        splitmix64. ``short``: every segment is known to be shorter than ``LENGTH_MIX``."""
        h = self.prefix[ends] - self.prefix[starts]
        h *= self.down[starts]
        lengths = ends - starts
        h ^= LENGTH_MIX[lengths] if short else _length_mix(lengths)
        return splitmix64(h)


BLOCK_MASK = np.array([(1 << (8 * n)) - 1 for n in range(8)] + [2**64 - 1], dtype=U64)


def _padded(data: np.ndarray) -> np.ndarray:
    """``data`` (uint8) with 16 zero bytes after it, so that 8-byte loads may run past its end."""
    out = np.zeros(data.size + 16, dtype=np.uint8)
    out[: data.size] = data
    return out


def _byte_words(padded: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``word_hashes`` of the byte ranges ``[starts, starts + lengths)`` of ``padded``."""
    # A uint64 view at every byte offset: one (unaligned) load reads a word's next 8 bytes.
    blocks = np.ndarray((padded.size - 8,), dtype="<u8", buffer=padded, strides=(1,))
    h = blocks[starts]
    h &= BLOCK_MASK[np.minimum(lengths, 8)]
    h ^= _length_mix(lengths)
    h = splitmix64(h)
    longer = np.flatnonzero(lengths > 8)
    q = 8
    while longer.size:
        block = blocks[starts[longer] + q] & BLOCK_MASK[np.minimum(lengths[longer] - q, 8)]
        h[longer] = splitmix64(h[longer] ^ block)
        q += 8
        longer = longer[lengths[longer] > q]
    return h


def word_hashes(words: list[str]) -> np.ndarray:
    """Stable uint64 hash of each word, from its UTF-8 bytes read as little-endian 8-byte
    blocks (the last one zero-padded): ``h = splitmix64(block_0 ^ splitmix64(len))``, then
    ``h = splitmix64(h ^ block_q)`` for each further block. Shingling computes the same values
    straight from the texts' UTF-8 buffers."""
    encoded = [w.encode("utf-8") for w in words]
    lengths = np.array([len(e) for e in encoded], dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    padded = _padded(np.frombuffer(b"".join(encoded), dtype=np.uint8))
    return _byte_words(padded, starts, lengths)


def char_shingles(
    texts: list[str], lengths: np.ndarray, n: int, tables: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the character ``n``-grams of each text (spaces included; each a polynomial
    over its code points, with its length, through splitmix64: ``Segments``); a text shorter
    than ``n`` characters is one shingle of all its characters. ``lengths``: the texts' lengths
    in code points. Returns (uint64 hashes, int64 text index of each)."""
    seg = Segments(_codepoints(texts), tables)
    lengths = lengths.astype(np.int64)
    row_start = np.cumsum(lengths + 1) - 1 - lengths
    return _char_windows(seg, row_start, lengths, np.arange(lengths.size), n)


def _char_windows(
    seg: Segments, row_start: np.ndarray, lengths: np.ndarray, rows: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    width = np.minimum(lengths, n)
    count = lengths - width + 1
    row = np.repeat(rows, count)
    begin = _runs(row_start, count)
    return seg.hashes(begin, begin + np.repeat(width, count), short=n < LENGTH_MIX.size), row


def _runs(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Flat indices of the runs ``[start, start + length)``, one after another."""
    before = np.cumsum(lengths) - lengths
    return np.repeat(starts - before, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)


@dataclass(frozen=True)
class Shingling:
    """How texts become shingle hashes: word ``shingle``-grams for texts of at least
    ``min_words`` words, else character ``char_shingle``-grams; ``mult`` (odd, one per word of a
    shingle) and ``char_salt`` come from the seed."""

    shingle: int
    char_shingle: int
    min_words: int
    mult: np.ndarray
    char_salt: np.uint64
    tables: PolyTables

    def __call__(
        self,
        padded: np.ndarray,
        bounds: np.ndarray,
        part_row: np.ndarray,
        rows: int,
        strings: Callable[[np.ndarray], list[str]],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Shingle hashes of ``rows`` texts, each given as one or more non-empty normalised
        parts read as joined by single spaces: part ``q`` is the UTF-8 bytes
        ``padded[bounds[q]:bounds[q + 1]]`` (``_padded``) and belongs to row ``part_row[q]``
        (non-decreasing, every row has a part). ``strings(parts)`` gives parts as ``str`` (for
        the few texts shingled by characters). Returns (uint64 hashes, int64 row of each)."""
        size = int(bounds[-1])
        # A word starts after a space or at a part's start, and ends at a space or at a
        # part's end (parts are stored back to back, without separators).
        starts_here = np.zeros(size, dtype=bool)
        starts_here[1:] = padded[: size - 1] == SPACE
        starts_here[bounds[:-1]] = True
        starts = np.flatnonzero(starts_here)
        del starts_here
        first_word = np.searchsorted(starts, bounds[:-1])
        ends = np.empty(starts.size, dtype=np.int64)
        ends[:-1] = starts[1:] - 1
        ends[first_word[1:] - 1] += 1
        ends[-1] = size
        word_row = np.repeat(part_row, np.diff(np.append(first_word, starts.size)))
        wide = np.bincount(word_row, minlength=rows) >= self.min_words
        hashes, row = [], []
        if wide.any():
            words = _byte_words(padded, starts, ends - starts)
            n = self.shingle
            m = words.size - n + 1
            with np.errstate(over="ignore"):
                acc = words[:m] * self.mult[0]
                for k in range(1, n):
                    acc += words[k : k + m] * self.mult[k]
            valid = np.flatnonzero((word_row[:m] == word_row[n - 1 :]) & wide[word_row[:m]])
            hashes.append(splitmix64(acc[valid]))
            row.append(word_row[valid])
        narrow = np.flatnonzero(~wide)
        if narrow.size:
            first_part = np.searchsorted(part_row, narrow)
            counts = np.searchsorted(part_row, narrow, side="right") - first_part
            pieces = strings(_runs(first_part, counts))
            texts, at = [], 0
            for c in counts.tolist():
                texts.append(" ".join(pieces[at : at + c]))
                at += c
            lengths = np.array([len(t) for t in texts], dtype=np.int64)
            tables = self.tables.at_least(int(lengths.sum()) + lengths.size)
            h, r = char_shingles(texts, lengths, self.char_shingle, tables)
            hashes.append(splitmix64(h ^ self.char_salt))
            row.append(narrow[r])
        return np.concatenate(hashes), np.concatenate(row)


# --- one-permutation MinHash ------------------------------------------------------------------


def shift_order(salt: np.uint64, k: int) -> np.ndarray:
    """The densification shifts: a permutation of 1..k-1 drawn from ``salt``."""
    keys = splitmix64(np.arange(1, k, dtype=U64) + salt)
    return np.argsort(keys, kind="stable").astype(np.int64) + 1


def one_permutation(
    hashes: np.ndarray, row: np.ndarray, rows: int, k: int, shifts: np.ndarray
) -> np.ndarray:
    """One-permutation MinHash signatures (``k`` x ``rows``, uint32) of the sets of ``hashes``
    (uint64, well mixed) grouped by ``row`` (every row non-empty): ``_bin_minima`` then
    ``_densify``."""
    sig = np.full((k, rows), EMPTY, dtype=U32)
    _bin_minima(sig, hashes, row)
    _densify(sig, shifts)
    return sig


def _bin_minima(sig: np.ndarray, hashes: np.ndarray, row: np.ndarray) -> None:
    """Fold ``hashes`` of rows ``row`` into ``sig`` (bins x rows, in place): a hash goes to the
    bin given by its top 32 bits (multiply-shift) and competes there with its low 32 bits
    (halved: 31 bits, so no value equals ``EMPTY``); a bin keeps the minimum."""
    k, rows = sig.shape
    with np.errstate(over="ignore"):
        if k & (k - 1) == 0:  # the same bins as below, in one shift
            at = (hashes >> U64(64 - (k.bit_length() - 1))).astype(np.int64)
        else:
            at = (((hashes >> U64(32)) * U64(k)) >> U64(32)).astype(np.int64)
        at *= rows
        at += row
    np.minimum.at(sig.reshape(-1), at, hashes.astype(U32) >> U32(1))


def _densify(sig: np.ndarray, shifts: np.ndarray, scratch: np.ndarray | None = None) -> None:
    """Fill the empty bins of ``sig`` (bins x rows, in place): bin ``i`` takes the original
    value of bin ``(i + s) % k`` for the first shift ``s`` of ``shifts`` whose bin is filled.
    ``scratch``: optional uint32 space of at least 3 * sig.size, reused across calls."""
    k, rows = sig.shape
    if scratch is None or scratch.size < 3 * sig.size:
        scratch = np.empty(3 * sig.size, dtype=U32)
    # The original twice over: bins i + s for i < k are then one slice, with no wrap-around.
    twice = scratch[: 2 * sig.size].reshape(2 * k, rows)
    twice[:k] = sig
    twice[k:] = sig
    attempt = 0
    if np.count_nonzero(sig == EMPTY) > DENSE_SHARE * sig.size:
        keep = scratch[2 * sig.size : 3 * sig.size].reshape(k, rows)
        while attempt < shifts.size:
            # All ones where a bin is filled, zero where it is empty: OR-ed into the borrowed
            # values, the minimum then keeps filled bins and fills empty ones.
            np.right_shift(sig, U32(31), out=keep)
            keep -= U32(1)
            if np.count_nonzero(keep) >= (1.0 - DENSE_SHARE) * sig.size:
                break
            s = int(shifts[attempt])
            attempt += 1
            np.bitwise_or(twice[s : s + k], keep, out=keep)
            np.minimum(sig, keep, out=sig)
    flat, source = sig.reshape(-1), twice.reshape(-1)
    todo = np.flatnonzero(flat == EMPTY)
    while todo.size and attempt < shifts.size:
        value = source[todo + int(shifts[attempt]) * rows]
        attempt += 1
        flat[todo] = value  # a miss writes EMPTY where EMPTY was
        todo = np.compress(value == EMPTY, todo)


@functools.cache  # a pure search over (bands, rows) that every call of ``banding`` repeats
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """Bands and rows per band, as datasketch chooses them (minimise the integrated false
    positive and false negative candidate probabilities, taking a band of ``r`` values to agree
    with probability ``s**r``) but with misses weighted 9:1: a pair LSH does not propose is
    lost for good, a false candidate only costs one verification. The weight also covers what
    ``s**r`` leaves out: one-permutation bins sample a small set without replacement, so all
    ``r`` bins of a band agree less often than ``s**r`` (0.128 instead of 0.144 for 66 shingles
    at Jaccard 0.76). At threshold 0.7 and 128 values this gives 20 bands of 6 (3:1 gave 18 of
    7): on the planted pairs of bench/dedup.py, 99.1% of those at true Jaccard >= 0.7 become
    candidates (97.1% with 18 x 7; k-permutation MinHash had 97.6%)."""
    s_low = np.linspace(0.0, threshold, 201)
    s_high = np.linspace(threshold, 1.0, 201)
    best, best_err = (1, num_perm), math.inf
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp = np.trapezoid(1 - (1 - s_low**rows) ** bands, s_low)
            fn = np.trapezoid((1 - s_high**rows) ** bands, s_high)
            err = 0.1 * fp + 0.9 * fn
            if err < best_err - 1e-12:
                best, best_err = (bands, rows), err
    return best


def band_pairs(
    sig: np.ndarray, bands: int, rows: int, small_bucket: int = 16, threads: int | None = None
) -> pl.DataFrame:
    """Candidate pairs (i < j, UInt32 row indices) of rows sharing a band of the signatures
    ``sig`` (values x rows, as ``DedupFilter.signatures`` returns). Buckets of up to
    ``small_bucket`` rows give every pair; larger ones (boilerplate shared by many rows) give
    each member paired with the bucket's first row and with its predecessor, which keeps the
    pair count linear while still reaching the row that would be kept."""
    n = sig.shape[1]
    if n < 2:
        return pl.DataFrame(schema={"i": pl.UInt32, "j": pl.UInt32})
    threads = threads or os.cpu_count() or 1
    # Per band, a cheap linear 32-bit key of the band's values is packed above the row
    # number and sorted: rows with equal keys become neighbours, in row order. A run of equal
    # keys is a bucket once its rows' band values are checked equal to its first row's; the
    # runs that fail the check (value tuples sharing a key) are split by the values themselves.
    mult = (splitmix_stream(0x5EED, rows) >> U64(32)).astype(U32) | U32(1)
    offsets = np.arange(rows)

    def buckets(band: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows in buckets of ``band`` (grouped, each group in row order) and group sizes."""
        values = sig[band * rows : (band + 1) * rows]
        key = values[0] * mult[0]
        for r in range(1, rows):
            key += values[r] * mult[r]
        packed = key.astype(U64) << U64(32)
        del key
        packed |= np.arange(n, dtype=U64)
        packed.sort()
        top = (packed >> U64(32)).astype(U32)
        same = top[1:] == top[:-1]
        del top
        mark = np.zeros(n, dtype=bool)
        mark[1:] = same
        mark[:-1] |= same
        where = np.flatnonzero(mark)
        idx = (packed[where] & U64(MAX_U32)).astype(np.int64)
        del packed
        new_run = np.ones(where.size, dtype=bool)
        new_run[1:] = (where[1:] != where[:-1] + 1) | ~same[where[1:] - 1]
        starts = np.flatnonzero(new_run)
        sizes = np.diff(np.append(starts, idx.size))
        tuples = values[:, idx]
        run = np.repeat(np.arange(starts.size), sizes)
        bad_row = (tuples != tuples[:, starts[run]]).any(axis=0)
        if not bad_row.any():
            return idx, sizes
        bad_run = np.zeros(starts.size, dtype=bool)
        bad_run[run[bad_row]] = True
        bad = bad_run[run]
        frame = pl.DataFrame({f"v{k}": tuples[k, bad] for k in offsets}).with_columns(
            idx=pl.Series(idx[bad])
        )
        split = (
            frame.group_by([f"v{k}" for k in offsets])
            .agg(pl.col("idx").sort())
            .filter(pl.col("idx").list.len() > 1)
        )
        return (
            np.concatenate([idx[~bad], split["idx"].explode().to_numpy().astype(np.int64)]),
            np.concatenate([sizes[~bad_run], split["idx"].list.len().to_numpy()]).astype(np.int64),
        )

    found = _parallel(buckets, range(bands), threads)
    members = np.concatenate([f[0] for f in found])
    sizes = np.concatenate([f[1] for f in found])
    first = np.cumsum(sizes) - sizes
    rank = np.arange(members.size) - np.repeat(first, sizes)
    size_of = np.repeat(sizes, sizes)
    # Small buckets: every member with every later member.
    small = np.flatnonzero(size_of <= small_bucket)
    later = size_of[small] - 1 - rank[small]
    i_small = np.repeat(members[small], later)
    j_small = members[_runs(small + 1, later)]
    # Large buckets: every member but the first with the first and with its predecessor.
    large = np.flatnonzero((size_of > small_bucket) & (rank > 0))
    i_large = np.concatenate([members[np.repeat(first, sizes)[large]], members[large - 1]])
    j_large = np.concatenate([members[large], members[large]])
    i = np.concatenate([i_small, i_large])
    j = np.concatenate([j_small, j_large])
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    pair = (lo.astype(U64) << U64(32)) | hi.astype(U64)
    pair = pair[lo != hi]
    pair.sort()
    if pair.size:
        pair = pair[np.concatenate([[True], pair[1:] != pair[:-1]])]
    return pl.DataFrame(
        {
            "i": (pair >> U64(32)).astype(np.uint32),
            "j": (pair & U64(MAX_U32)).astype(np.uint32),
        }
    )


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected components over edges (i, j): each node's label is the smallest index in its
    component (min-label propagation with pointer jumping, vectorised union-find)."""
    label = np.arange(n, dtype=np.int64)
    while True:
        low = np.minimum(label[i], label[j])
        before = label.copy()
        np.minimum.at(label, i, low)
        np.minimum.at(label, j, low)
        while True:  # pointer jumping: point every node at its label's label
            jumped = label[label]
            if np.array_equal(jumped, label):
                break
            label = jumped
        if np.array_equal(label, before):
            return label


def _turn_keys(
    turns: pl.DataFrame,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The exact pass's per-row key over ``turns`` (idx, role, norm; ordered by row, then
    turn): (idx of each turn, first turn of each row, turns per row, whether each turn is the
    assistant's, the row's 64-bit key, whether the row has text). A row's key depends on its own
    turns only, so ``exact_keys`` can compute it for some rows and reuse it later."""
    idx = turns["idx"].to_numpy()
    new = np.ones(idx.size, dtype=bool)
    new[1:] = idx[1:] != idx[:-1]
    starts = np.flatnonzero(new)
    counts = np.diff(np.append(starts, idx.size))
    ordinal = np.arange(idx.size) - np.repeat(starts, counts)
    assistant = (turns["role"] == "assistant").to_numpy()
    tag = splitmix64((ordinal * 2 + assistant + 1).astype(U64))
    mixed = splitmix64(turns["norm"].hash(seed=0x51ED).to_numpy() ^ tag)
    key = np.add.reduceat(mixed, starts) ^ _length_mix(counts)
    filled = np.add.reduceat((turns["norm"] != "").to_numpy(), starts) > 0
    return idx, starts, counts, assistant, key, filled


# --- the filter -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DedupFilter:
    """Exact and MinHash-LSH near duplicates across all sources; the first occurrence is kept.

    ``exact``/``near``: run each pass. ``threshold``: the Jaccard similarity of shingle sets
    at which two rows are near duplicates (estimated from signatures). ``answer_threshold``: the
    answers' exact character 5-gram Jaccard that a near pair must also reach (``None`` disables
    the guard; see the module docstring for why it exists). ``num_perm``: values per MinHash
    signature (bins of the one-permutation hash).
    ``bands``/``rows``: LSH banding; derived from threshold and num_perm when ``None``.
    ``shingle``: words per shingle. ``char_shingle``: characters per shingle for short texts.
    ``char_below_words``: texts with fewer words use character shingles; ``None`` derives it
    from the threshold as the shortest text in which one substituted word still leaves word
    shingle Jaccard >= threshold (19 words for 3-grams at 0.7). ``seed``: the shingle hashes
    and the densification order.
    ``chunk_rows``: rows per signature chunk, ``threads``: chunks in flight (``None``: one per
    CPU); both trade memory for speed, neither changes a verdict.
    ``policy``: the verdict for duplicates, per source of the dropped row; ``near_policy``
    overrides it for near duplicates (``None``: the same as ``policy``).
    """

    category: ClassVar[str] = "duplicate"
    exact: bool = True
    near: bool = True
    threshold: float = 0.7
    answer_threshold: float | None = 0.5
    num_perm: int = 128
    bands: int | None = None
    rows: int | None = None
    shingle: int = 3
    char_shingle: int = 5
    char_below_words: int | None = None
    seed: int = 0
    chunk_rows: int = 8192
    threads: int | None = None
    policy: Policy = Policy("drop")
    near_policy: Policy | str | None = None

    def __post_init__(self) -> None:
        # A YAML config can only say ``near_policy: flag``: make that the Policy it means.
        if isinstance(self.near_policy, str):
            object.__setattr__(self, "near_policy", Policy(self.near_policy))  # type: ignore[arg-type]
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.num_perm < 1 or self.shingle < 1 or self.char_shingle < 1 or self.chunk_rows < 1:
            raise ValueError("num_perm, shingle, char_shingle and chunk_rows must be positive")
        bands, rows = self.banding()
        if bands * rows > self.num_perm:
            raise ValueError(f"bands*rows = {bands * rows} exceeds num_perm = {self.num_perm}")

    def _near_policy(self) -> Policy:
        return self.near_policy if isinstance(self.near_policy, Policy) else self.policy

    def _threads(self) -> int:
        return self.threads or os.cpu_count() or 1

    def banding(self) -> tuple[int, int]:
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        if self.bands is not None:
            return self.bands, self.num_perm // self.bands
        if self.rows is not None:
            return self.num_perm // self.rows, self.rows
        return lsh_params(self.threshold, self.num_perm)

    def min_words(self) -> int:
        if self.char_below_words is not None:
            return self.char_below_words
        # One substitution changes ``k`` of the m = words - k + 1 shingles on each side:
        # Jaccard (m - k) / (m + k) >= t  <=>  m >= k (1 + t) / (1 - t).
        k, t = self.shingle, self.threshold
        if t >= 1.0:
            return k
        return math.ceil(k * (1 + t) / (1 - t) - 1e-9) + k - 1

    def __call__(self, batch: Batch) -> Findings:
        with _phase("normalise and order turns"):
            rows, turns = self.turns(batch)
        parts = []
        if self.exact:
            with _phase("exact pass"):
                exact = self.exact_duplicates(rows, turns)
            parts.append(exact)
            dropped = exact.select("idx")
        else:
            dropped = pl.DataFrame(schema={"idx": pl.UInt32})
        if self.near:
            alive = rows.filter("has_text").join(dropped, on="idx", how="anti").sort("idx")
            parts.append(self.near_duplicates(alive, turns))
        if not parts:
            return Findings()
        found = pl.concat(parts).sort("idx")
        ledger = found.join(rows.select("idx", "source"), on="idx", how="left").select(
            "row_id",
            "rule",
            pl.when(pl.col("rule") == "duplicate.exact")
            .then(self.policy.expr())
            .otherwise(self._near_policy().expr())
            .alias("verdict"),
            "reason",
            "score",
        )
        return Findings(ledger=ledger)

    def turns(self, batch: Batch) -> tuple[pl.DataFrame, pl.DataFrame]:
        """``rows``: idx (batch order), row_id, source, ``has_text`` (some user or assistant
        turn is non-empty once normalised). ``turns``: idx, role, ``norm`` (the normalised
        content) of the user and assistant turns, ordered by row and then turn (message order
        among equal turn numbers)."""
        rows = batch.rows.select("row_id", "source").with_row_index("idx")
        messages = batch.messages.filter(pl.col("role").is_in(["user", "assistant"]))
        norm = _normalise_series(messages["content"], self._threads())
        turns = messages.select("row_id", "turn", "role").with_columns(norm=norm)
        runs = messages["row_id"].rle()
        if runs.len() == rows.height and bool((runs.struct.field("value") == rows["row_id"]).all()):
            # Messages already come row by row, in batch order (as Batch.from_conversations
            # builds them): number the runs instead of joining on the row id.
            lengths = runs.struct.field("len").to_numpy()
            idx = np.repeat(np.arange(rows.height, dtype=np.uint32), lengths)
            turns = turns.with_columns(idx=pl.Series(idx, dtype=pl.UInt32))
            turn = turns["turn"].to_numpy()
            if np.any((turn[1:] <= turn[:-1]) & (idx[1:] == idx[:-1])):
                turns = turns.sort("idx", "turn", maintain_order=True)
        else:
            turns = turns.join(rows.select("row_id", "idx"), on="row_id", how="inner").sort(
                "idx", "turn", maintain_order=True
            )
        turns = turns.select("idx", "role", "norm")
        filled = turns.filter(pl.col("norm") != "")["idx"].unique()
        rows = rows.with_columns(has_text=pl.col("idx").is_in(filled.implode()))
        return rows, turns

    def exact_duplicates(self, rows: pl.DataFrame, turns: pl.DataFrame) -> pl.DataFrame:
        """Rows whose key (the role-tagged sequence of their normalised user and assistant
        turns) equals an earlier row's. An empty text (nothing but punctuation, whitespace or no
        user/assistant turn) is never called a duplicate: there is nothing to compare, and the
        quality filters own such rows."""
        pairs = self._exact_pairs(turns)
        if pairs is None:
            pairs = self._exact_by_key_strings(rows, turns)
        firsts = rows.select(pl.col("idx").alias("first"), pl.col("row_id").alias("kept_id"))
        return (
            pairs.join(rows.select("idx", "row_id"), on="idx", how="left")
            .join(firsts, on="first", how="left")
            .sort("idx")
            .select(
                "idx",
                "row_id",
                pl.lit("duplicate.exact").alias("rule"),
                pl.format("exact duplicate of {} (same normalised text)", "kept_id").alias(
                    "reason"
                ),
                pl.lit(1.0).alias("score"),
            )
        )

    @staticmethod
    def _exact_pairs(turns: pl.DataFrame) -> pl.DataFrame | None:
        """(idx, first) of every row with text whose turns equal those of an earlier row,
        ``first`` the earliest such row: rows are grouped by a 64-bit hash of their turns, and
        each grouped row is compared with its group's first, turn by turn. ``None`` if some
        comparison fails (two different keys sharing a hash), for the caller's fallback."""
        schema = {"idx": pl.UInt32, "first": pl.UInt32}
        if turns.is_empty():
            return pl.DataFrame(schema=schema)
        idx, starts, counts, assistant, key, filled = _turn_keys(turns)
        groups = np.flatnonzero(filled)  # row groups with text, in batch order
        order = groups[np.argsort(key[groups], kind="stable")]
        same = key[order[1:]] == key[order[:-1]]
        if not same.any():
            return pl.DataFrame(schema=schema)
        leader = np.maximum.accumulate(np.where(np.append(True, ~same), np.arange(order.size), 0))
        dup = np.flatnonzero(np.append(False, same))
        g_dup, g_first = order[dup], order[leader[dup]]
        if np.any(counts[g_dup] != counts[g_first]):
            return None
        mine = _runs(starts[g_dup], counts[g_dup])
        theirs = _runs(starts[g_first], counts[g_first])
        norm = turns["norm"]
        if np.any(assistant[mine] != assistant[theirs]) or not bool(
            (norm.gather(mine) == norm.gather(theirs)).all()
        ):
            return None
        return pl.DataFrame(
            {"idx": idx[starts[g_dup]], "first": idx[starts[g_first]]}, schema=schema
        )

    @staticmethod
    def _exact_by_key_strings(rows: pl.DataFrame, turns: pl.DataFrame) -> pl.DataFrame:
        """(idx, first) by grouping the key strings themselves: the fallback should two keys
        ever share a hash."""
        keys = turns.group_by("idx", maintain_order=True).agg(
            pl.concat_str([pl.col("role").str.head(1), pl.lit(":"), "norm"])
            .str.join("\x1e")
            .alias("key")
        )
        return (
            keys.join(rows.filter("has_text").select("idx"), on="idx", how="semi")
            .with_columns(first=pl.col("idx").min().over("key"))
            .filter(pl.col("idx") != pl.col("first"))
            .select("idx", "first")
        )

    def _shingling(self) -> tuple[Shingling, np.ndarray]:
        params = splitmix_stream(self.seed, self.shingle + 2)
        shingling = Shingling(
            shingle=self.shingle,
            char_shingle=self.char_shingle,
            min_words=max(self.min_words(), self.shingle),
            mult=params[: self.shingle] | U64(1),
            char_salt=params[self.shingle],
            tables=PolyTables(),
        )
        return shingling, shift_order(params[self.shingle + 1], self.num_perm)

    def signatures(self, texts: pl.DataFrame) -> np.ndarray:
        """One-permutation MinHash signatures of the ``text`` column (normalised, non-empty):
        (num_perm x len(texts)), uint32. Value-major, so a band's values and each value are
        contiguous rows."""
        return self._signatures(texts["text"], np.arange(texts.height), texts.height)

    def exact_keys(self, turns: pl.DataFrame) -> pl.DataFrame:
        """Per row of ``turns`` (as ``turns`` returns them): idx, ``key`` (UInt64, the hash the
        exact pass groups rows by) and ``filled`` (the row has text). Rows with equal keys are
        exact-duplicate candidates, to be confirmed by comparing their normalised turns."""
        if turns.is_empty():
            return pl.DataFrame(schema={"idx": pl.UInt32, "key": pl.UInt64, "filled": pl.Boolean})
        idx, starts, _, _, key, filled = _turn_keys(turns)
        return pl.DataFrame(
            {"idx": idx[starts], "key": key, "filled": filled},
            schema={"idx": pl.UInt32, "key": pl.UInt64, "filled": pl.Boolean},
        )

    def row_signatures(self, rows: np.ndarray, turns: pl.DataFrame) -> np.ndarray:
        """Signatures (num_perm x len(rows)) of the rows ``rows`` (idx values, each with text)
        from ``turns``: the same values the near pass computes for them, since a row's
        signature depends on its own normalised turns only."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return np.empty((self.num_perm, 0), dtype=U32)
        pos_of = np.full(int(rows.max()) + 1, -1, dtype=np.int64)
        pos_of[rows] = np.arange(rows.size)
        turn_idx = turns["idx"].to_numpy().astype(np.int64)
        turn_pos = np.where(
            turn_idx < pos_of.size, pos_of[np.minimum(turn_idx, pos_of.size - 1)], -1
        )
        use = (turn_pos >= 0) & (turns["norm"] != "").to_numpy()
        return self._signatures(turns["norm"].filter(pl.Series(use)), turn_pos[use], rows.size)

    def _signatures(self, parts: pl.Series, part_row: np.ndarray, n: int) -> np.ndarray:
        """Signatures of ``n`` texts given as parts (see ``Shingling``)."""
        shingling, shifts = self._shingling()
        sig = np.empty((self.num_perm, n), dtype=U32)
        if n == 0:
            return sig
        part_start = np.searchsorted(part_row, np.arange(n + 1))
        part_bytes = parts.str.len_bytes().to_numpy().astype(np.int64)
        if np.any(np.diff(part_start) < 1) or np.any(part_bytes < 1):
            raise ValueError("every text needs at least one part, and parts must be non-empty")
        row_bytes = np.add.reduceat(part_bytes, part_start[:-1])

        # Per-thread space for a chunk's bins and densification, reused chunk after chunk:
        # fresh multi-MB arrays each time cost more in page faults than in arithmetic.
        local = threading.local()

        def run(r0: int) -> None:
            r1 = min(r0 + self.chunk_rows, n)
            if not hasattr(local, "space"):
                local.space = np.empty(4 * self.num_perm * min(self.chunk_rows, n), dtype=U32)
            size = self.num_perm * (r1 - r0)
            p0, p1 = int(part_start[r0]), int(part_start[r1])
            chunk = parts.slice(p0, p1 - p0)
            arrow = chunk.to_arrow(compat_level=pl.CompatLevel.oldest())
            offsets = np.frombuffer(arrow.buffers()[1], dtype=np.int64)
            offsets = offsets[arrow.offset : arrow.offset + len(arrow) + 1]
            data = np.frombuffer(arrow.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
            padded = _padded(data)
            offsets = offsets - offsets[0]
            # Steps of about STEP_BYTES keep the per-word arrays in cache.
            spent = np.cumsum(row_bytes[r0:r1])
            cuts = np.searchsorted(spent, np.arange(STEP_BYTES, spent[-1], STEP_BYTES))
            steps = np.unique(np.concatenate([[0], cuts, [r1 - r0]])) + r0
            block = local.space[:size].reshape(self.num_perm, r1 - r0)
            block.fill(EMPTY)
            for a, b in zip(steps[:-1], steps[1:], strict=True):
                q0, q1 = int(part_start[a]) - p0, int(part_start[b]) - p0
                lo = int(offsets[q0])
                h, r = shingling(
                    padded[lo:],
                    offsets[q0 : q1 + 1] - lo,
                    part_row[p0 + q0 : p0 + q1] - a,
                    int(b - a),
                    lambda idx, q0=q0: chunk.gather(idx + q0).to_list(),
                )
                _bin_minima(block, h, r + (a - r0))
            _densify(block, shifts, local.space[size:])
            sig[:, r0:r1] = block

        # Each chunk writes its own columns of ``sig``, so the result does not depend on timing.
        _parallel(run, range(0, n, self.chunk_rows), self._threads())
        return sig

    def near_duplicates(self, alive: pl.DataFrame, turns: pl.DataFrame) -> pl.DataFrame:
        """Near duplicates among ``alive`` (idx, row_id of rows with text, in batch order)."""
        empty = pl.DataFrame(schema=NEAR_SCHEMA)
        if alive.height < 2:
            return empty
        alive_idx = alive["idx"].to_numpy().astype(np.int64)
        with _phase("signatures (shingles, one-permutation, densify)", rows=alive.height):
            sig = self.row_signatures(alive_idx, turns)

        def guard(i: np.ndarray, j: np.ndarray) -> np.ndarray:
            needed, inverse = np.unique(np.concatenate([i, j]), return_inverse=True)
            answers = self._answers(turns, alive_idx[needed])
            return self.answer_similarity(answers, inverse[: i.size], inverse[i.size :])

        return self.near_from_signatures(alive, sig, guard)

    def near_from_signatures(
        self,
        alive: pl.DataFrame,
        sig: np.ndarray,
        guard: Callable[[np.ndarray, np.ndarray], np.ndarray],
    ) -> pl.DataFrame:
        """The near pass once signatures are known: banding, verification, clusters.
        ``alive``: idx, row_id of the rows with text the exact pass kept, in batch order;
        ``sig``: their signatures (column k is row k of ``alive``); ``guard(i, j)``: the answer
        similarity of the pairs at positions (i, j) of ``alive``. Everything here but the
        guard works on the signatures alone, which is what lets a refresh keep the signatures
        of rows it saw before (curation.incremental) and pay only for new rows."""
        empty = pl.DataFrame(schema=NEAR_SCHEMA)
        if alive.height < 2:
            return empty
        alive_idx = alive["idx"].to_numpy().astype(np.int64)
        with _phase("banding"):
            pairs = band_pairs(sig, *self.banding(), threads=self._threads())
        if pairs.is_empty():
            return empty
        with _phase("verification: agreement", pairs=pairs.height):
            i = pairs["i"].to_numpy().astype(np.int64)
            j = pairs["j"].to_numpy().astype(np.int64)
            agree = _agreement(sig, i, j, self._threads())
            keep = agree >= self.threshold - 1e-12
            i, j, agree = i[keep], j[keep], agree[keep]
        if self.answer_threshold is not None and i.size:
            with _phase("verification: answer guard", pairs=int(i.size)):
                answer_sim = guard(i, j)
                keep = answer_sim >= self.answer_threshold - 1e-12
                i, j, agree = i[keep], j[keep], agree[keep]
        if not i.size:
            return empty
        with _phase("clusters and reasons", pairs=int(i.size)):
            return self._clusters(alive, alive_idx, sig, i, j, agree)

    def _clusters(
        self,
        alive: pl.DataFrame,
        alive_idx: np.ndarray,
        sig: np.ndarray,
        i: np.ndarray,
        j: np.ndarray,
        agree: np.ndarray,
    ) -> pl.DataFrame:
        """Union-find over the verified pairs; each cluster keeps its first row."""
        nodes, inverse = np.unique(np.concatenate([i, j]), return_inverse=True)
        label = nodes[components(nodes.size, inverse[: i.size], inverse[i.size :])]
        members = label != nodes
        dup, kept = nodes[members], label[members]
        sim = _agreement(sig, kept, dup)
        # For a row linked to the kept one only through others, name its closest direct link.
        edges = pl.DataFrame(
            {"a": np.concatenate([i, j]), "b": np.concatenate([j, i]), "s": np.tile(agree, 2)}
        )
        best_link = edges.sort("s", "b", descending=[True, False]).group_by("a").first()
        ids = alive["row_id"]
        out = (
            pl.DataFrame({"pos": dup, "kept": kept, "score": sim})
            .join(best_link, left_on="pos", right_on="a", how="left")
            .sort("pos")
        )
        out = out.with_columns(
            idx=pl.Series(alive_idx[out["pos"].to_numpy()], dtype=pl.UInt32),
            row_id=ids.gather(out["pos"].to_numpy()),
            kept_id=ids.gather(out["kept"].to_numpy()),
            via_id=ids.gather(out["b"].to_numpy()),
        )
        score = pl.col("score").round(2).cast(pl.String)
        reason = pl.format("near duplicate of {} (estimated Jaccard {})", "kept_id", score)
        linked = pl.format(
            "near duplicate of {} (estimated Jaccard {}; linked through {}, {})",
            "kept_id",
            score,
            "via_id",
            pl.col("s").round(2).cast(pl.String),
        )
        chained = (pl.col("score") < self.threshold - 1e-12) & (pl.col("b") != pl.col("kept"))
        return out.select(
            "idx",
            "row_id",
            pl.lit("duplicate.near").alias("rule"),
            pl.when(chained).then(linked).otherwise(reason).alias("reason"),
            pl.col("score").cast(pl.Float64),
        )

    @staticmethod
    def answers(turns: pl.DataFrame, idx: np.ndarray) -> pl.Series:
        """What the answer guard compares for rows ``idx`` of ``turns`` (see ``_answers``)."""
        return DedupFilter._answers(turns, idx)

    @staticmethod
    def _answers(turns: pl.DataFrame, idx: np.ndarray) -> pl.Series:
        """The normalised answers (non-empty assistant turns joined by spaces) of rows ``idx``,
        in that order; "" for a row without one."""
        wanted = pl.DataFrame({"idx": idx.astype(np.uint32)})
        answers = (
            turns.join(wanted, on="idx", how="semi")
            .filter((pl.col("role") == "assistant") & (pl.col("norm") != ""))
            .group_by("idx", maintain_order=True)
            .agg(pl.col("norm").str.join(" "))
        )
        return (
            wanted.join(answers, on="idx", how="left", maintain_order="left")["norm"]
            .fill_null("")
            .rename("answer")
        )

    def answer_similarity(self, answers: pl.Series, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Jaccard of the character shingle sets of the answers of pairs (i, j). Equal answers
        (two empty ones included: prompt-only rows compare by prompt alone) are 1.0 without
        shingling; answers longer than ``GUARD_MAX_CHARS`` are compared on their start. The
        other pairs go in batches of at most ``GUARD_CHARS`` answer characters, which bounds
        memory however many candidate pairs there are and however long their answers."""
        # The guard is for short answers of templated tasks; for a very long answer the
        # whole-text estimate already speaks for it, so only its start is compared.
        answers = answers.str.slice(0, GUARD_MAX_CHARS)
        out = np.ones(i.size, dtype=np.float64)
        if not i.size:
            return out
        differ = np.flatnonzero((answers.gather(i) != answers.gather(j)).to_numpy())
        i, j = i[differ], j[differ]
        lengths = answers.str.len_chars().to_numpy().astype(np.int64)
        spent = np.cumsum(lengths[i] + lengths[j] + 1)
        tables = PolyTables()
        bounds = [0]
        while bounds[-1] < i.size:
            start = bounds[-1]
            budget = (spent[start - 1] if start else 0) + GUARD_CHARS
            bounds.append(max(start + 1, int(np.searchsorted(spent, budget, side="right"))))

        def batch(k: int) -> None:
            start, stop = bounds[k], bounds[k + 1]
            part = self._answer_jaccard(answers, lengths, i[start:stop], j[start:stop], tables)
            out[differ[start:stop]] = part

        # Batches write disjoint parts of ``out``; each is computed the same way on any thread.
        _parallel(batch, range(len(bounds) - 1), self._threads())
        return out

    def _answer_jaccard(
        self,
        answers: pl.Series,
        lengths: np.ndarray,
        i: np.ndarray,
        j: np.ndarray,
        tables: PolyTables,
    ) -> np.ndarray:
        """Jaccard of the answers' shingle sets, from one sort: each (row, shingle) packed into
        a uint64 (the row's place in this batch above, 41 bits of the shingle hash below), the
        sorted distinct keys give each row's set as one run; a pair's intersection is the
        smaller set's members looked up in the other's run. 41-bit hashes make a spurious
        shared shingle about as likely as |A| * |B| / 2**41 (5e-9 for two 100-shingle
        answers)."""
        rows, inverse = np.unique(np.concatenate([i, j]), return_inverse=True)
        assert rows.size < 1 << GUARD_ROW_BITS
        a, b = inverse[: i.size], inverse[i.size :]
        filled = np.flatnonzero(lengths[rows] > 0)
        keys = np.zeros(0, dtype=U64)
        if filled.size:
            chosen = rows[filled]
            size = int(lengths[chosen].sum()) + chosen.size
            strings = answers.gather(chosen).to_list()
            hashes, row = char_shingles(
                strings, lengths[chosen], self.char_shingle, tables.at_least(size)
            )
            keys = (filled[row].astype(U64) << U64(GUARD_HASH_BITS)) | (
                hashes >> U64(GUARD_ROW_BITS)
            )
            keys.sort()
            distinct = np.empty(keys.size, dtype=bool)
            distinct[0] = True
            np.not_equal(keys[1:], keys[:-1], out=distinct[1:])
            keys = keys[distinct]
        key_row = (keys >> U64(GUARD_HASH_BITS)).astype(np.int64)
        size = np.bincount(key_row, minlength=rows.size)
        first = np.searchsorted(key_row, np.arange(rows.size))
        swap = size[a] > size[b]
        a, b = np.where(swap, b, a), np.where(swap, a, b)
        count = size[a]
        members = keys[_runs(first[a], count)]
        pair = np.repeat(np.arange(a.size), count)
        wanted = (b[pair].astype(U64) << U64(GUARD_HASH_BITS)) | (
            members & U64((1 << GUARD_HASH_BITS) - 1)
        )
        at = np.minimum(np.searchsorted(keys, wanted), max(keys.size - 1, 0))
        found = keys[at] == wanted if keys.size else np.zeros(0, dtype=bool)
        inter = np.bincount(pair, weights=found, minlength=a.size)
        union = size[a] + size[b] - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def _agreement(
    sig: np.ndarray, i: np.ndarray, j: np.ndarray, threads: int = 1, step: int = 32_768
) -> np.ndarray:
    """Share of equal signature values for each pair: the MinHash estimate of Jaccard."""
    out = np.empty(i.size, dtype=np.float64)

    def part(s: int) -> None:
        mine = np.take(sig, i[s : s + step], axis=1)
        out[s : s + step] = (mine == np.take(sig, j[s : s + step], axis=1)).mean(axis=0)

    _parallel(part, range(0, i.size, step), threads)
    return out
