"""Data mixtures with exact token proportions (MiniCPM's decay phase, instruction data mixed
into pretraining).

Each source is shuffled deterministically (a hash of seed and id, not a random generator, so
adding rows to one source does not reorder the others), repeated in whole epochs when it is
smaller than its share, and cut at its exact token target: the last document keeps only the
tokens it contributes (``tokens`` column), which the training stage honours by truncating.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import polars as pl

MIXTURE = pl.Schema(
    {"source": pl.String, "id": pl.String, "epoch": pl.Int64, "text": pl.String, "tokens": pl.Int64}
)


@dataclass(frozen=True)
class MixConfig:
    """Attributes:
    proportions: source name → share of the mixture's tokens (must sum to 1).
    total_tokens: size of the mixture in tokens.
    seed: decides the order inside each source and the interleaving.
    """

    proportions: Mapping[str, float] = field(default_factory=dict)
    total_tokens: int = 1_000_000
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.proportions:
            raise ValueError("proportions: at least one source is needed")
        if any(p < 0 for p in self.proportions.values()):
            raise ValueError("proportions: shares must be non-negative")
        if abs(sum(self.proportions.values()) - 1.0) > 1e-6:
            raise ValueError(f"proportions must sum to 1, got {sum(self.proportions.values())}")
        if self.total_tokens <= 0:
            raise ValueError("total_tokens must be positive")


@dataclass
class Mixture:
    rows: pl.DataFrame  # MIXTURE, in training order
    report: pl.DataFrame  # per source: target and achieved tokens and shares, documents, epochs


def token_targets(config: MixConfig) -> dict[str, int]:
    """Integer targets that sum exactly to ``total_tokens`` (largest remainder)."""
    exact = {name: share * config.total_tokens for name, share in config.proportions.items()}
    targets = {name: int(value) for name, value in exact.items()}
    short = config.total_tokens - sum(targets.values())
    for name in sorted(exact, key=lambda n: exact[n] - targets[n], reverse=True)[:short]:
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
    """Rows of ``source`` (id, text, tokens) repeated and cut to exactly ``target`` tokens."""
    available = int(rows["tokens"].sum())
    if target == 0:
        return pl.DataFrame(schema=MIXTURE).drop("source"), 0
    if available == 0:
        raise ValueError(
            f"source {source!r} has a positive share ({target} tokens wanted) but no tokens "
            f"({rows.height} rows)"
        )
    epochs = -(-target // available)  # ceil
    shuffled = rows.with_columns(order=_order_key(seed, pl.col("id"))).sort("order").drop("order")
    stream = pl.concat(
        [shuffled.with_columns(epoch=pl.lit(e, dtype=pl.Int64)) for e in range(epochs)]
    ).with_columns(before=pl.col("tokens").cum_sum() - pl.col("tokens"))
    taken = stream.filter(pl.col("before") < target).with_columns(
        tokens=pl.min_horizontal(pl.col("tokens"), pl.lit(target) - pl.col("before"))
    )
    return taken.select("id", "epoch", "text", "tokens"), epochs


def mix(sources: Mapping[str, pl.DataFrame], config: MixConfig) -> Mixture:
    """``sources``: name → frame with ``id``, ``text`` and ``tokens`` (the count of ``text``)."""
    missing = sorted(set(config.proportions) - set(sources))
    if missing:
        raise ValueError(f"proportions name source(s) not given: {missing}")
    targets = token_targets(config)
    parts, report = [], []
    for name, target in targets.items():
        taken, epochs = take_tokens(
            sources[name].select("id", "text", "tokens"), target, config.seed, name
        )
        parts.append(taken.with_columns(source=pl.lit(name)))
        report.append(
            {
                "source": name,
                "target_share": config.proportions[name],
                "target_tokens": target,
                "tokens": int(taken["tokens"].sum()) if taken.height else 0,
                "documents": taken.height,
                "epochs": epochs,
                "available_tokens": int(sources[name]["tokens"].sum()),
            }
        )
    rows = pl.concat(parts).select(MIXTURE.names()).cast(MIXTURE)
    rows = (
        rows.with_columns(
            order=_order_key(
                config.seed, pl.col("source"), pl.col("id"), pl.col("epoch").cast(pl.String)
            )
        )
        .sort("order")
        .drop("order")
    )
    report_frame = pl.DataFrame(report).with_columns(
        achieved_share=pl.col("tokens") / pl.col("tokens").sum()
    )
    return Mixture(rows=rows, report=report_frame)
