"""Data mixtures with exact token proportions (MiniCPM's decay phase, instruction data mixed
into pretraining), exact in the split that training reads.

The mixture is split before it is mixed: each source's rows go to ``train`` or ``test`` by the
same id hash the export uses (``curation.datasets.split_expr``), and each split is mixed on its
own at the same proportions. Splitting a finished mixture by id instead would leave the train
split's shares off by whichever documents the hash happened to hold out.

Each source is shuffled deterministically (a hash of seed and id, not a random generator, so
adding rows to one source does not reorder the others; rows that share an id are ordered by their
content, so the input order never matters), repeated in whole epochs when it is smaller than its
share, and cut at its exact token target: the last document keeps only the tokens it contributes
(``tokens`` column), which the training stage honours by truncating.

Tokens are counted as training sees them: a document's text tokens plus ``EOS_PER_DOCUMENT``,
because packing (``training.causal_lm.pack``) appends one EOS to every document, cut or not. A
source of short documents would otherwise get more than its share.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import polars as pl

from curation.datasets import split_expr

MIXTURE = pl.Schema(
    {
        "split": pl.String,
        "source": pl.String,
        "id": pl.String,
        "epoch": pl.Int64,
        "text": pl.String,
        "tokens": pl.Int64,
    }
)
SPLITS = ("train", "test")
# training.causal_lm.pack adds one EOS after each document (after truncating it to ``tokens``)
EOS_PER_DOCUMENT = 1
_TAKEN = ["id", "epoch", "text", "tokens"]


@dataclass(frozen=True)
class MixConfig:
    """Attributes:
    proportions: source name → share of the mixture's tokens (must sum to 1 within 1e-6; the
        shares are normalized, so the targets add up to ``total_tokens`` exactly).
    total_tokens: size of the mixture in tokens, EOS included.
    seed: decides the order inside each source and the interleaving.
    eval_fraction: share of the tokens held out as the ``test`` split; its rows are chosen by
        ``curation.datasets.split_expr`` on id, as ``export`` with this fraction does.
    test_tokens: tokens of the test split when not ``eval_fraction`` of the total (a mixture
        that keeps every token of one source sizes each split by what that source holds).
    """

    proportions: Mapping[str, float] = field(default_factory=dict)
    total_tokens: int = 1_000_000
    seed: int = 0
    eval_fraction: float = 0.0
    test_tokens: int | None = None

    def __post_init__(self) -> None:
        if not self.proportions:
            raise ValueError("proportions: at least one source is needed")
        for name, share in self.proportions.items():
            if not isinstance(share, int | float) or not math.isfinite(share) or share < 0:
                raise ValueError(
                    f"proportions.{name}: {share!r} is not a finite non-negative share"
                )
        if abs(sum(self.proportions.values()) - 1.0) > 1e-6:
            raise ValueError(f"proportions must sum to 1, got {sum(self.proportions.values())}")
        if self.total_tokens <= 0:
            raise ValueError("total_tokens must be positive")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction: {self.eval_fraction!r} is not in [0, 1)")
        if self.test_tokens is not None and not 0 <= self.test_tokens <= self.total_tokens:
            raise ValueError(f"test_tokens: {self.test_tokens} is not in [0, total_tokens]")


@dataclass
class Mixture:
    rows: pl.DataFrame  # MIXTURE: the train split in training order, then the test split
    report: pl.DataFrame  # per split and source: target and achieved tokens (EOS included)


def split_totals(config: MixConfig) -> dict[str, int]:
    """Tokens of each split: the test split's is ``test_tokens``, or ``eval_fraction`` of the
    total, rounded."""
    test = config.test_tokens
    if test is None:
        test = round(config.total_tokens * config.eval_fraction)
    return {"train": config.total_tokens - test, "test": test}


def token_targets(config: MixConfig, total: int | None = None) -> dict[str, int]:
    """Integer targets that sum exactly to ``total`` (``total_tokens`` by default), by largest
    remainder over the normalized shares."""
    total = config.total_tokens if total is None else total
    return _largest_remainder(config.proportions, total)


def _largest_remainder(shares: Mapping[str, float], total: int) -> dict[str, int]:
    norm = math.fsum(shares.values())
    exact = {name: share / norm * total for name, share in shares.items()}
    targets = {name: math.floor(value) for name, value in exact.items()}
    short = total - sum(targets.values())
    # ties in the remainder go by name, so the targets do not depend on the mapping's order
    ranked = sorted(exact, key=lambda n: (-(exact[n] - targets[n]), n))
    for name in ranked[:short]:
        targets[name] += 1
    return targets


def _order_key(seed: int, *parts: pl.Expr) -> pl.Expr:
    def digest(keys: pl.Series) -> pl.Series:
        return pl.Series(
            [
                int.from_bytes(hashlib.blake2b(f"{seed}\x1f{k}".encode(), digest_size=8).digest())
                for k in keys
            ],
            dtype=pl.UInt64,
        )

    return pl.concat_str(list(parts), separator="\x1f").map_batches(digest, return_dtype=pl.UInt64)


def take_tokens(
    rows: pl.DataFrame, target: int, seed: int, source: str
) -> tuple[pl.DataFrame, int]:
    """Rows of ``source`` (id, text, tokens) repeated and cut so that their tokens plus one EOS
    each come to exactly ``target``. A document cut to its last token may keep no text tokens:
    it then contributes only its EOS, which is what keeps the count exact."""
    cost = pl.col("tokens") + EOS_PER_DOCUMENT
    available = int(rows.select(cost.sum()).item() or 0)
    if target == 0:
        return pl.DataFrame(schema={k: MIXTURE[k] for k in _TAKEN}), 0
    if available == 0:
        raise ValueError(
            f"source {source!r} has a positive share ({target} tokens wanted) but no tokens "
            f"({rows.height} rows)"
        )
    epochs = -(-target // available)  # ceil
    # rows with the same id share the hash; their content decides, so input order never does
    shuffled = rows.with_columns(order=_order_key(seed, pl.col("id"))).sort(
        ["order", "id", "text", "tokens"]
    )
    shuffled = shuffled.drop("order")
    stream = pl.concat(
        [shuffled.with_columns(epoch=pl.lit(e, dtype=pl.Int64)) for e in range(epochs)]
    ).with_columns(before=cost.cum_sum() - cost)
    taken = stream.filter(pl.col("before") < target).with_columns(
        tokens=pl.min_horizontal(
            pl.col("tokens"), pl.lit(target) - pl.col("before") - EOS_PER_DOCUMENT
        )
    )
    return taken.select(_TAKEN).cast({k: MIXTURE[k] for k in _TAKEN}), epochs


def checked_source(name: str, frame: pl.DataFrame) -> pl.DataFrame:
    """The ``id``, ``text`` and ``tokens`` columns of a source, or an error naming it."""
    missing = [c for c in ("id", "text", "tokens") if c not in frame.columns]
    if missing:
        raise ValueError(f"source {name!r}: missing column(s) {missing} (has {frame.columns})")
    rows = frame.select(
        pl.col("id").cast(pl.String), pl.col("text").cast(pl.String), pl.col("tokens")
    )
    if not rows.schema["tokens"].is_integer():
        raise ValueError(f"source {name!r}: tokens must be integers, got {rows.schema['tokens']}")
    for column in ("id", "text", "tokens"):
        nulls = rows.filter(pl.col(column).is_null())
        if nulls.height:
            raise ValueError(
                f"source {name!r}: {nulls.height} row(s) with a null {column} "
                f"(first at row {_first_row(rows, pl.col(column).is_null())})"
            )
    negative = rows.filter(pl.col("tokens") < 0)
    if negative.height:
        raise ValueError(
            f"source {name!r}: {negative.height} row(s) with negative tokens (first: id "
            f"{negative['id'][0]!r}, tokens {negative['tokens'][0]})"
        )
    return rows.with_columns(pl.col("tokens").cast(pl.Int64))


def _first_row(rows: pl.DataFrame, condition: pl.Expr) -> int:
    return int(rows.with_row_index("row").filter(condition)["row"][0])


def _interleave(parts: list[pl.DataFrame], seed: int) -> pl.DataFrame:
    rows = pl.concat(parts)
    key = _order_key(seed, pl.col("source"), pl.col("id"), pl.col("epoch").cast(pl.String))
    return (
        rows.with_columns(order=key)
        .sort(["order", "source", "id", "epoch", "text", "tokens"])
        .drop("order")
    )


def mix(sources: Mapping[str, pl.DataFrame], config: MixConfig) -> Mixture:
    """``sources``: name → frame with ``id``, ``text`` and ``tokens`` (the count of ``text``,
    without EOS)."""
    missing = sorted(set(config.proportions) - set(sources))
    if missing:
        raise ValueError(f"proportions name source(s) not given: {missing}")
    checked = {name: checked_source(name, sources[name]) for name in config.proportions}
    by_split = {
        name: frame.with_columns(split=split_expr(config.eval_fraction))
        for name, frame in checked.items()
    }
    totals = split_totals(config)
    rows, report = [], []
    for split in SPLITS:
        parts = {n: frame.filter(pl.col("split") == split) for n, frame in by_split.items()}
        shares = dict(config.proportions)
        if split == "test":
            # a small source may have no held-out rows: the test split is then mixed from the
            # sources that do, rather than leaking train documents into it
            shares = {n: s for n, s in shares.items() if parts[n].height}
        else:
            # an empty source is named by take_tokens; here, one the hash held out entirely
            held_out = [n for n, p in parts.items() if config.proportions[n] > 0 and not p.height]
            held_out = [n for n in held_out if checked[n].height]
            if held_out:
                raise ValueError(
                    f"source(s) {held_out} have a positive share but every row went to the test "
                    f"split (eval_fraction {config.eval_fraction}); give them more rows"
                )
        total = totals[split] if shares and math.fsum(shares.values()) > 0 else 0
        targets = _largest_remainder(shares, total) if total else dict.fromkeys(shares, 0)
        taken_parts = []
        for name, target in targets.items():
            taken, epochs = take_tokens(parts[name].drop("split"), target, config.seed, name)
            taken_parts.append(taken.with_columns(source=pl.lit(name), split=pl.lit(split)))
            report.append(
                {
                    "split": split,
                    "source": name,
                    "target_share": config.proportions[name],
                    "target_tokens": target,
                    "tokens": int(taken["tokens"].sum()) + EOS_PER_DOCUMENT * taken.height,
                    "documents": taken.height,
                    "epochs": epochs,
                    "available_tokens": int(parts[name]["tokens"].sum())
                    + EOS_PER_DOCUMENT * parts[name].height,
                }
            )
        if taken_parts:
            rows.append(_interleave(taken_parts, config.seed).select(MIXTURE.names()))
    mixed = pl.concat(rows).cast(MIXTURE) if rows else pl.DataFrame(schema=MIXTURE)
    report_frame = pl.DataFrame(report).with_columns(
        achieved_share=pl.col("tokens") / pl.col("tokens").sum().over("split")
    )
    return Mixture(rows=mixed, report=report_frame)
