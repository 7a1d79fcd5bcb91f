"""Exact and near-duplicate conversations across all sources.

Exact pass: a normalised text key (lowercase, Unicode punctuation removed, whitespace collapsed)
over the user and assistant turns, role-tagged, in turn order. Rows whose key equals an earlier
row's key are ``duplicate.exact``; the first occurrence (batch order) is kept and named.

Near pass, over the rows the exact pass kept: MinHash LSH on the shingles of the same normalised
text (word 3-grams; character 5-grams for texts too short for word shingles to survive a single
edit, see ``DedupFilter.char_below_words``). Candidate pairs from banded buckets (18 bands of 7
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

Everything that decides a verdict is deterministic across processes, machines and library
versions (up to Unicode table updates in the lowercasing and punctuation classes of polars'
regex engine): no Python ``hash()`` and no polars ``hash()``. Texts are read as UTF-32 code points;
a word's hash is a polynomial over its code points in uint64 arithmetic (wrapping), passed
through the splitmix64 finaliser; a shingle's hash chains the finaliser over its words' (or code
points') hashes. The MinHash "permutations" are ``a*x + b mod 2**32`` on the top 32 bits of
those finalised hashes, with ``a`` (odd) and ``b`` drawn from a splitmix64 stream of ``seed``.
Since the inputs are already well mixed, these linear permutations give Jaccard estimates as
good as random permutations (rmse at the binomial bound, measured); they run in uint32, which
halves the memory traffic of the dominant step.

The filter needs the whole corpus in one ``Batch``: duplicates are a property of the set, and a
chunked call would only find duplicates within a chunk. Rows are chunked internally
(``chunk_rows``) only to bound memory; verdicts do not depend on it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import polars as pl

from curation.filters.base import Batch, Findings, Policy

U64 = np.uint64
U32 = np.uint32
MAX_U32 = np.iinfo(np.uint32).max
ROW_SEP = 0x0A  # "\n": never inside a normalised text (whitespace is collapsed to " ")
SPACE = 0x20
POLY_BASE = U64(0x100000001B3)  # FNV-64 prime: odd, so its powers never become zero mod 2**64
CHAIN_SEED = U64(0x243F6A8885A308D3)  # digits of pi: a fixed start for shingle chains
# The MinHash step works on (PERM_GROUP x MINHASH_BLOCK) uint32 blocks (4 MiB): small enough to
# stay in cache, large enough that numpy's per-call overhead does not show.
MINHASH_BLOCK = 1 << 15
PERM_GROUP = 32
SHINGLE_BLOCK = 1 << 20  # character shingles hashed per step
GUARD_CHARS = 4_000_000  # answer characters compared per batch of candidate pairs
GUARD_MAX_CHARS = 100_000  # characters of one answer the answer guard looks at


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


# --- stable hashing ---------------------------------------------------------------------------


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (Steele et al.), element-wise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + U64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> U64(30))) * U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> U64(27))) * U64(0x94D049BB133111EB)
        return z ^ (z >> U64(31))


def splitmix_stream(seed: int, n: int) -> np.ndarray:
    """``n`` pseudo-random uint64 values from ``seed``: independent of numpy's RNG policy."""
    counter = np.arange(1, n + 1, dtype=U64) * U64(0x9E3779B97F4A7C15)
    return splitmix64(counter + U64(seed % 2**64))


def _codepoints(texts: list[str]) -> np.ndarray:
    """All texts as one uint32 array of code points, separated by ``ROW_SEP``."""
    return np.frombuffer("\n".join(texts).encode("utf-32-le"), dtype=U32)


def _row_bounds(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) of each row in the ``_codepoints`` array."""
    ends = np.cumsum(lengths.astype(np.int64) + 1) - 1
    return ends - lengths, ends


def _chain(parts: list[np.ndarray]) -> np.ndarray:
    """Order-sensitive combination of uint64 hashes: h = mix(h ^ part) over the parts."""
    h = np.full(parts[0].shape, CHAIN_SEED, dtype=U64)
    for part in parts:
        h = splitmix64(h ^ part)
    return h


def word_hashes(words: list[str]) -> np.ndarray:
    """Stable uint64 hash of each word: a polynomial over its code points (wrapping uint64),
    with the word's length, through splitmix64. Words must not contain spaces or newlines."""
    if not words:
        return np.zeros(0, dtype=U64)
    cp = _codepoints(words)
    is_sep = cp == ROW_SEP
    starts = np.concatenate([[0], np.flatnonzero(is_sep) + 1])
    lengths = np.diff(np.concatenate([starts, [cp.size + 1]])) - 1
    pos = np.arange(cp.size, dtype=np.int64) - np.repeat(starts, lengths + 1)[: cp.size]
    powers = np.cumprod(np.full(int(lengths.max()) + 1, POLY_BASE, dtype=U64), dtype=U64)
    with np.errstate(over="ignore"):
        terms = (cp.astype(U64) + U64(1)) * powers[pos]
    terms[is_sep] = 0
    # A zero sentinel makes an empty last word a valid index; an empty word elsewhere sums a
    # separator's zero (reduceat returns the element itself for an empty range).
    terms = np.append(terms, U64(0))
    return splitmix64(np.add.reduceat(terms, starts) ^ splitmix64(lengths.astype(U64)))


def word_shingles(texts: pl.Series, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the word ``n``-grams of each text (normalised: words separated by single
    spaces; every text must have at least ``n`` words). Returns (uint64 hashes, int64 start
    offset of each text's run). Words repeat (Zipf), so each distinct word of the chunk is
    hashed once and mapped back with a join (the join only matches equal strings; the hash
    that decides verdicts is ``word_hashes``)."""
    words = texts.str.split(" ").rename("w").to_frame().with_row_index("row").explode("w")
    distinct = words.select(pl.col("w").unique())
    distinct = distinct.with_columns(h=pl.Series(word_hashes(distinct["w"].to_list())))
    per_word = words.join(distinct, on="w", how="left", maintain_order="left")
    h = per_word["h"].to_numpy()
    row = per_word["row"].to_numpy()
    valid = np.flatnonzero(row[: h.size - n + 1] == row[n - 1 :])
    hashes = _chain([h[valid + k] for k in range(n)])
    offsets = np.searchsorted(row[valid], np.arange(texts.len()), side="left")
    return hashes, offsets.astype(np.int64)


def char_shingles(texts: list[str], lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the character ``n``-grams of each text (spaces included); a text shorter than
    ``n`` characters is one shingle of all its characters. Every text must be non-empty.
    Shingles are hashed in blocks, so one 10 MB text needs a few blocks' worth of scratch
    memory rather than several arrays of its full length."""
    cp = _codepoints(texts)
    row_start, _ = _row_bounds(lengths)
    width = np.minimum(lengths, n).astype(np.int64)
    count = lengths - width + 1
    offsets = np.concatenate([[0], np.cumsum(count)]).astype(np.int64)
    hashes = np.empty(int(offsets[-1]), dtype=U64)
    for g0 in range(0, hashes.size, SHINGLE_BLOCK):
        g = np.arange(g0, min(g0 + SHINGLE_BLOCK, hashes.size), dtype=np.int64)
        row_of = np.searchsorted(offsets, g, side="right") - 1
        begin = g - offsets[row_of] + row_start[row_of]
        w = width[row_of]
        h = np.full(g.size, CHAIN_SEED, dtype=U64)
        for k in range(n):
            # Positions past a short text's end are masked to a constant: "ab" hashes as itself.
            inside = k < w
            part = np.where(inside, cp[np.where(inside, begin + k, 0)], MAX_U32).astype(U64)
            h = splitmix64(h ^ part)
        hashes[g[0] : g[-1] + 1] = splitmix64(h ^ w.astype(U64))
    return hashes, offsets[:-1]


def minhash(hashes: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MinHash signatures (permutations x rows, uint32) of the sets given as contiguous runs of
    ``hashes`` starting at ``offsets`` (each run non-empty). Works through the shingles in blocks
    of ``MINHASH_BLOCK`` and permutations in groups, so memory stays bounded even for a single
    10 MB text; a run that spans blocks is folded in with ``np.minimum``."""
    rows, perms = offsets.size, a.size
    sig = np.full((perms, rows), MAX_U32, dtype=U32)
    x = (hashes >> U64(32)).astype(U32)
    total = x.size
    for s0 in range(0, total, MINHASH_BLOCK):
        s1 = min(s0 + MINHASH_BLOCK, total)
        r0 = int(np.searchsorted(offsets, s0, side="right")) - 1
        r1 = int(np.searchsorted(offsets, s1, side="left"))
        local = np.maximum(offsets[r0:r1], s0) - s0
        xs = x[s0:s1]
        for g in range(0, perms, PERM_GROUP):
            t = np.multiply(a[g : g + PERM_GROUP, None], xs[None, :])
            t += b[g : g + PERM_GROUP, None]
            block = np.minimum.reduceat(t, local, axis=1)
            np.minimum(sig[g : g + PERM_GROUP, r0:r1], block, out=sig[g : g + PERM_GROUP, r0:r1])
    return sig


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """Bands and rows per band, as datasketch chooses them (minimise the integrated false
    positive and false negative candidate probabilities) but with misses weighted 3:1: a pair
    LSH does not propose is lost for good, a false candidate only costs one verification."""
    s_low = np.linspace(0.0, threshold, 201)
    s_high = np.linspace(threshold, 1.0, 201)
    best, best_err = (1, num_perm), math.inf
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp = np.trapezoid(1 - (1 - s_low**rows) ** bands, s_low)
            fn = np.trapezoid((1 - s_high**rows) ** bands, s_high)
            err = 0.25 * fp + 0.75 * fn
            if err < best_err - 1e-12:
                best, best_err = (bands, rows), err
    return best


def band_pairs(sig: np.ndarray, bands: int, rows: int, small_bucket: int = 16) -> pl.DataFrame:
    """Candidate pairs (i < j, UInt32 row indices) of rows sharing a band of the signatures
    ``sig`` (permutations x rows, as ``DedupFilter.signatures`` returns). Buckets of up to
    ``small_bucket`` rows give every pair; larger ones (boilerplate shared by many rows) give
    each member paired with the bucket's first row and with its predecessor, which keeps the
    pair count linear while still reaching the row that would be kept."""
    n = sig.shape[1]
    if n < 2:
        return pl.DataFrame(schema={"i": pl.UInt32, "j": pl.UInt32})
    # One band at a time. A cheap linear key finds the rows whose band values may be shared
    # (most are unique); those few are then grouped by the values themselves (a polars
    # group_by compares values), so a key collision can add work but never a bucket.
    buckets = []
    idx = np.arange(n, dtype=np.uint32)
    mult = splitmix_stream(0x5EED, rows) | U64(1)
    for band in range(bands):
        values = sig[band * rows : (band + 1) * rows]
        key = np.zeros(n, dtype=U64)
        with np.errstate(over="ignore"):
            for k in range(rows):
                key += values[k].astype(U64) * mult[k]
        maybe = pl.Series(key).is_duplicated().to_numpy()
        cols = {f"v{k}": values[k][maybe] for k in range(rows)}
        buckets.append(
            pl.DataFrame({**cols, "idx": idx[maybe]})
            .group_by(list(cols))
            .agg(pl.col("idx").sort())
            .select("idx")
        )
    buckets = pl.concat(buckets).filter(pl.col("idx").list.len() > 1)
    small = buckets.filter(pl.col("idx").list.len() <= small_bucket)
    large = buckets.filter(pl.col("idx").list.len() > small_bucket)
    all_pairs = (
        small.with_columns(j=pl.col("idx"))
        .explode("idx")
        .explode("j")
        .filter(pl.col("idx") < pl.col("j"))
        .select(pl.col("idx").alias("i"), "j")
    )
    linear = (
        large.select(
            first=pl.col("idx").list.first(),
            prev=pl.col("idx").list.slice(0, pl.col("idx").list.len() - 1),
            j=pl.col("idx").list.slice(1),
        )
        .explode("prev", "j")
        .select(
            pl.concat_list("first", "prev").alias("i"),
            pl.concat_list("j", "j").alias("j"),
        )
        .explode("i", "j")
        .filter(pl.col("i") < pl.col("j"))
    )
    return pl.concat([all_pairs, linear]).unique().sort("i", "j")


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


# --- the filter -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DedupFilter:
    """Exact and MinHash-LSH near duplicates across all sources; the first occurrence is kept.

    ``exact``/``near``: run each pass. ``threshold``: the Jaccard similarity of shingle sets
    at which two rows are near duplicates (estimated from signatures). ``answer_threshold``: the
    answers' exact character 5-gram Jaccard that a near pair must also reach (``None`` disables
    the guard; see the module docstring for why it exists). ``num_perm``: MinHash permutations.
    ``bands``/``rows``: LSH banding; derived from threshold and num_perm when ``None``.
    ``shingle``: words per shingle. ``char_shingle``: characters per shingle for short texts.
    ``char_below_words``: texts with fewer words use character shingles; ``None`` derives it
    from the threshold as the shortest text in which one substituted word still leaves word
    shingle Jaccard >= threshold (19 words for 3-grams at 0.7). ``seed``: MinHash permutations.
    ``chunk_rows``: rows per shingling chunk, ``threads``: chunks in flight (``None``: one per
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
    chunk_rows: int = 20_000
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
        texts = self.texts(batch)
        parts = []
        if self.exact:
            exact = self.exact_duplicates(texts)
            parts.append(exact)
            dropped = exact.select("idx")
        else:
            dropped = pl.DataFrame(schema={"idx": pl.UInt32})
        texts = texts.drop("key")  # the exact key is done with: free it before the near pass
        if self.near:
            alive = texts.join(dropped, on="idx", how="anti")
            parts.append(self.near_duplicates(alive))
        if not parts:
            return Findings()
        found = pl.concat(parts).sort("idx")
        ledger = found.join(texts.select("idx", "source"), on="idx", how="left").select(
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

    def texts(self, batch: Batch) -> pl.DataFrame:
        """One row per conversation in batch order: idx, row_id, source, ``key`` (role-tagged
        exact key), ``text`` (what is shingled), ``answer`` (normalised answers)."""
        # A stable sort on the turn number (cheap: integers) puts each row's turns in order,
        # and group_by keeps that order inside each group.
        turns = (
            batch.messages.filter(pl.col("role").is_in(["user", "assistant"]))
            .select("row_id", "turn", "role", normalise(pl.col("content")).alias("norm"))
            .sort("turn", maintain_order=True)
        )
        non_empty = pl.col("norm") != ""
        # Aggregating lists and joining them afterwards is several times faster than
        # ``str.join`` inside the aggregation.
        per_row = turns.group_by("row_id").agg(
            pl.concat_str([pl.col("role").str.head(1), pl.lit(":"), "norm"]).alias("key"),
            pl.col("norm").filter(non_empty).alias("text"),
            pl.col("norm").filter(non_empty & (pl.col("role") == "assistant")).alias("answer"),
        )
        per_row = per_row.with_columns(
            pl.col("key").list.join("\x1e"),
            pl.col("text").list.join(" "),
            pl.col("answer").list.join(" "),
        )
        return (
            batch.rows.select("row_id", "source")
            .with_row_index("idx")
            .join(per_row, on="row_id", how="left", maintain_order="left")
            .with_columns(pl.col("text", "answer").fill_null(""), pl.col("key").fill_null(""))
        )

    def exact_duplicates(self, texts: pl.DataFrame) -> pl.DataFrame:
        """Rows whose key equals an earlier row's key. An empty text (nothing but punctuation,
        whitespace or no user/assistant turn) is never called a duplicate: there is nothing to
        compare, and the quality filters own such rows."""
        keyed = texts.filter(pl.col("text") != "").select(
            "idx", "row_id", "key", first=pl.col("idx").min().over("key")
        )
        firsts = texts.select(pl.col("idx").alias("first"), pl.col("row_id").alias("kept_id"))
        return (
            keyed.filter(pl.col("idx") != pl.col("first"))
            .join(firsts, on="first", how="left")
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

    def signatures(self, texts: pl.DataFrame) -> np.ndarray:
        """MinHash signatures of the non-empty ``text`` column: (num_perm x len(texts)), uint32.
        Permutation-major, so a band's values and each permutation are contiguous rows."""
        params = splitmix_stream(self.seed, 2 * self.num_perm)
        a = (params[: self.num_perm] >> U64(32)).astype(U32) | U32(1)
        b = (params[self.num_perm :] >> U64(32)).astype(U32)
        sized = texts.select(
            "text",
            pl.col("text").str.len_chars().alias("chars"),
            (pl.col("text").str.count_matches(" ") + 1).alias("words"),
        ).with_row_index("pos")
        sig = np.empty((self.num_perm, texts.height), dtype=U32)
        by_words = pl.col("words") >= self.min_words()

        def run(mode: str, chunk: pl.DataFrame) -> None:
            if mode == "word":
                hashes, offsets = word_shingles(chunk["text"], self.shingle)
            else:
                strings, lengths = chunk["text"].to_list(), chunk["chars"].to_numpy()
                hashes, offsets = char_shingles(strings, lengths, self.char_shingle)
            sig[:, chunk["pos"].to_numpy()] = minhash(hashes, offsets, a, b)

        jobs = [
            (mode, chunk)
            for mode, part in (("word", sized.filter(by_words)), ("char", sized.filter(~by_words)))
            for chunk in _chunks(part, self.chunk_rows)
        ]
        # numpy and polars release the GIL in their loops, so chunks overlap on several cores;
        # each chunk writes its own columns of ``sig``, so the result does not depend on timing.
        with ThreadPoolExecutor(max_workers=self.threads or os.cpu_count() or 1) as pool:
            for done in [pool.submit(run, mode, chunk) for mode, chunk in jobs]:
                done.result()
        return sig

    def near_duplicates(self, alive: pl.DataFrame) -> pl.DataFrame:
        texts = alive.filter(pl.col("text") != "").with_row_index("pos")
        empty = pl.DataFrame(
            schema={
                "idx": pl.UInt32,
                "row_id": pl.String,
                "rule": pl.String,
                "reason": pl.String,
                "score": pl.Float64,
            }
        )
        if texts.height < 2:
            return empty
        sig = self.signatures(texts)
        pairs = band_pairs(sig, *self.banding())
        if pairs.is_empty():
            return empty
        i = pairs["i"].to_numpy().astype(np.int64)
        j = pairs["j"].to_numpy().astype(np.int64)
        agree = _agreement(sig, i, j)
        keep = agree >= self.threshold - 1e-12
        i, j, agree = i[keep], j[keep], agree[keep]
        if self.answer_threshold is not None and i.size:
            answer_sim = self.answer_similarity(texts["answer"], i, j)
            keep = answer_sim >= self.answer_threshold - 1e-12
            i, j, agree = i[keep], j[keep], agree[keep]
        if not i.size:
            return empty
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
        ids = texts["row_id"]
        out = (
            pl.DataFrame({"pos": dup, "kept": kept, "score": sim})
            .join(best_link, left_on="pos", right_on="a", how="left")
            .sort("pos")
        )
        out = out.with_columns(
            kept_id=ids.gather(out["kept"].to_numpy()), via_id=ids.gather(out["b"].to_numpy())
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
        return out.join(texts.select("pos", "idx", "row_id"), on="pos", how="left").select(
            "idx",
            "row_id",
            pl.lit("duplicate.near").alias("rule"),
            pl.when(chained).then(linked).otherwise(reason).alias("reason"),
            pl.col("score").cast(pl.Float64),
        )

    def answer_similarity(self, answers: pl.Series, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Exact Jaccard of the character shingle sets of the answers of pairs (i, j). Two empty
        answers count as equal (prompt-only rows compare by prompt alone); answers longer than
        ``GUARD_MAX_CHARS`` are compared on their start. Pairs go in batches
        of at most ``GUARD_CHARS`` answer characters, which bounds memory however many
        candidate pairs there are and however long their answers."""
        # The guard is for short answers of templated tasks; for a very long answer the
        # whole-text estimate already speaks for it, so only its start is compared.
        answers = answers.str.slice(0, GUARD_MAX_CHARS)
        lengths = answers.str.len_chars().to_numpy().astype(np.int64)
        spent = np.cumsum(lengths[i] + lengths[j] + 1)
        out = np.empty(i.size, dtype=np.float64)
        start = 0
        while start < i.size:
            budget = (spent[start - 1] if start else 0) + GUARD_CHARS
            stop = max(start + 1, int(np.searchsorted(spent, budget, side="right")))
            out[start:stop] = self._answer_jaccard(answers, lengths, i[start:stop], j[start:stop])
            start = stop
        return out

    def _answer_jaccard(
        self, answers: pl.Series, lengths: np.ndarray, i: np.ndarray, j: np.ndarray
    ) -> np.ndarray:
        rows = np.unique(np.concatenate([i, j]))
        rows = rows[lengths[rows] > 0]
        shingles = pl.DataFrame(schema={"row": pl.Int64, "h": pl.UInt64})
        if rows.size:
            hashes, offsets = char_shingles(
                answers.gather(rows).to_list(), lengths[rows], self.char_shingle
            )
            counts = np.diff(np.concatenate([offsets, [hashes.size]]))
            shingles = pl.DataFrame({"row": np.repeat(rows, counts), "h": hashes}).unique()
        sizes = shingles.group_by("row").len("size")
        pairs = pl.DataFrame({"i": i, "j": j}).with_row_index("pair")
        inter = (
            pairs.join(shingles, left_on="i", right_on="row")
            .join(shingles, left_on=["j", "h"], right_on=["row", "h"])
            .group_by("pair")
            .len("inter")
        )
        scored = (
            pairs.join(inter, on="pair", how="left")
            .join(sizes.rename({"row": "i", "size": "size_i"}), on="i", how="left")
            .join(sizes.rename({"row": "j", "size": "size_j"}), on="j", how="left")
            .with_columns(pl.col("inter", "size_i", "size_j").fill_null(0))
            .sort("pair")
        )
        union = scored["size_i"] + scored["size_j"] - scored["inter"]
        sim = (scored["inter"] / union).fill_nan(1.0).fill_null(1.0)  # 0/0: both answers empty
        return sim.to_numpy()


def _agreement(sig: np.ndarray, i: np.ndarray, j: np.ndarray, step: int = 65_536) -> np.ndarray:
    """Share of equal signature entries for each pair: the MinHash estimate of Jaccard."""
    out = np.empty(i.size, dtype=np.float64)
    for s in range(0, i.size, step):
        out[s : s + step] = (sig[:, i[s : s + step]] == sig[:, j[s : s + step]]).mean(axis=0)
    return out


def _chunks(frame: pl.DataFrame, size: int) -> Iterator[pl.DataFrame]:
    for start in range(0, frame.height, size):
        yield frame.slice(start, size)
