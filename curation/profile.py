"""Length profiling: characters, words and tokens per source and role, turns per conversation,
and histograms, so a user sees at a glance how differently sources are shaped.

The output length distribution shapes what a model learns (long FLAN-style prompts with one-word
targets versus chatty OpenAssistant answers), so this runs before any curation decision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

CountTokens = Callable[[list[str]], list[int]]

MEASURES = ("chars", "words", "tokens")
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


@dataclass(frozen=True)
class ProfileConfig:
    """Attributes:
    quantiles: reported for every source, role and measure, as the lower order statistic
        (an observed value, and one definition every library shares: pandas agrees exactly).
    histogram_bins: log-spaced bins per histogram.
    token_batch: texts per tokenizer call; bounds memory on large inputs.
    """

    quantiles: Sequence[float] = QUANTILES
    histogram_bins: int = 40
    token_batch: int = 8192


@dataclass
class LengthProfile:
    lengths: pl.DataFrame  # one row per message: source, role, chars, words, tokens
    stats: pl.DataFrame  # one row per source, role and measure: count, mean, quantiles, max
    turns: pl.DataFrame  # one row per source: conversations, turns quantiles
    counts: pl.DataFrame | None = None  # LENGTH_COUNTS, when built from counts (no lengths)

    def table(self, measure: str = "tokens") -> pl.DataFrame:
        return self.stats.filter(pl.col("measure") == measure).drop("measure")


def message_lengths(
    conversations: pl.DataFrame | pl.LazyFrame, count_tokens: CountTokens | None = None
) -> pl.DataFrame:
    """One row per message with its lengths; ``tokens`` is null without a tokenizer."""
    messages = (
        conversations.lazy()
        .select("source", "messages")
        .explode("messages")
        .drop_nulls("messages")
        .select("source", pl.col("messages").struct.field("role", "content"))
        .with_columns(pl.col("content").fill_null(""))
        .collect()
    )
    return add_lengths(messages, count_tokens)


def text_lengths(
    texts: pl.DataFrame | pl.LazyFrame, count_tokens: CountTokens | None = None, role: str = "text"
) -> pl.DataFrame:
    """Lengths of a plain-text corpus (pretraining data), profiled as role ``text``."""
    frame = (
        texts.lazy()
        .select(pl.col("source"), pl.lit(role).alias("role"), pl.col("text").alias("content"))
        .collect()
    )
    return add_lengths(frame, count_tokens)


def add_lengths(messages: pl.DataFrame, count_tokens: CountTokens | None) -> pl.DataFrame:
    tokens = (
        pl.Series("tokens", count_tokens(messages["content"].to_list()), dtype=pl.Int64)
        if count_tokens is not None
        else pl.repeat(None, messages.height, dtype=pl.Int64, eager=True).alias("tokens")
    )
    return messages.select(
        "source",
        "role",
        pl.col("content").str.len_chars().cast(pl.Int64).alias("chars"),
        pl.col("content").str.count_matches(r"\S+").cast(pl.Int64).alias("words"),
    ).with_columns(tokens)


def summarize(lengths: pl.DataFrame, quantiles: Sequence[float] = QUANTILES) -> pl.DataFrame:
    long = lengths.unpivot(
        index=["source", "role"], on=list(MEASURES), variable_name="measure", value_name="value"
    ).drop_nulls("value")
    aggregations = [
        pl.len().alias("count"),
        pl.col("value").mean().alias("mean"),
        pl.col("value").min().alias("min"),
        *(
            pl.col("value").quantile(q, interpolation="lower").alias(f"p{round(q * 100)}")
            for q in quantiles
        ),
        pl.col("value").max().alias("max"),
    ]
    return (
        long.group_by("source", "role", "measure")
        .agg(aggregations)
        .sort("measure", "role", "source")
    )


def turn_stats(
    conversations: pl.DataFrame | pl.LazyFrame, quantiles: Sequence[float] = QUANTILES
) -> pl.DataFrame:
    return summarize_turns(conversation_turns(conversations), quantiles)


def conversation_turns(conversations: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """One row per conversation: source and its number of messages (what turn stats need,
    kept per drop so a refresh reads these instead of every conversation)."""
    return (
        conversations.lazy()
        .select("source", pl.col("messages").list.len().cast(pl.Int64).alias("turns"))
        .collect()
    )


def summarize_turns(turns: pl.DataFrame, quantiles: Sequence[float] = QUANTILES) -> pl.DataFrame:
    count = pl.col("turns")
    return (
        turns.lazy()
        .group_by("source")
        .agg(
            pl.len().alias("conversations"),
            count.mean().alias("mean_turns"),
            *(
                count.quantile(q, interpolation="lower").alias(f"p{round(q * 100)}")
                for q in quantiles
            ),
            count.max().alias("max_turns"),
        )
        .sort("source")
        .collect()
    )


def profile(
    conversations: pl.DataFrame | pl.LazyFrame,
    count_tokens: CountTokens | None = None,
    texts: pl.DataFrame | pl.LazyFrame | None = None,
    config: ProfileConfig = ProfileConfig(),
) -> LengthProfile:
    lengths = message_lengths(conversations, count_tokens)
    if texts is not None:
        lengths = pl.concat([lengths, text_lengths(texts, count_tokens)])
    return LengthProfile(
        lengths=lengths,
        stats=summarize(lengths, config.quantiles),
        turns=turn_stats(conversations, config.quantiles),
    )


# --- counts: what stats and histograms need, additive over drops ----------------------------

LENGTH_COUNTS = pl.Schema(
    {
        "source": pl.String,
        "role": pl.String,
        "measure": pl.String,
        "value": pl.Int64,
        "count": pl.Int64,
    }
)
TURN_COUNTS = pl.Schema({"source": pl.String, "turns": pl.Int64, "count": pl.Int64})


def length_counts(lengths: pl.DataFrame) -> pl.DataFrame:
    """Messages per source, role, measure and length value. Counts of two sets of messages
    add up to the counts of both, so a refresh keeps each drop's counts and adds them; they
    hold every order statistic of the lengths (a few thousand distinct values per source
    and role, not one row per message)."""
    return (
        lengths.unpivot(
            index=["source", "role"], on=list(MEASURES), variable_name="measure", value_name="value"
        )
        .drop_nulls("value")
        .group_by("source", "role", "measure", "value")
        .agg(pl.len().alias("count"))
        .select(LENGTH_COUNTS.names())
        .cast(LENGTH_COUNTS)
    )


def turn_counts(turns: pl.DataFrame) -> pl.DataFrame:
    """Conversations per source and number of messages (``conversation_turns`` counted)."""
    return (
        turns.group_by("source", "turns")
        .agg(pl.len().alias("count"))
        .select(TURN_COUNTS.names())
        .cast(TURN_COUNTS)
    )


def _from_counts(
    counts: pl.DataFrame, keys: list[str], quantiles: Sequence[float]
) -> tuple[pl.LazyFrame, list[pl.Expr]]:
    """Counts merged per group and value, sorted, with the aggregations ``summarize`` takes
    over the expanded values: the lower quantile q is the value at sorted position
    floor(q * (n - 1)), the first whose cumulative count passes that position."""
    merged = (
        counts.lazy()
        .group_by(*keys, "value")
        .agg(pl.col("count").sum())
        .sort(*keys, "value")
        .with_columns(
            cum=pl.col("count").cum_sum().over(keys),
            n=pl.col("count").sum().over(keys),
        )
    )
    position = (pl.col("n") - 1).cast(pl.Float64)
    aggregations = [
        pl.col("count").sum().cast(pl.UInt32).alias("count"),
        ((pl.col("value") * pl.col("count")).sum() / pl.col("count").sum()).alias("mean"),
        pl.col("value").min().alias("min"),
        *(
            pl.col("value")
            .filter(pl.col("cum") > (position * q).floor())
            .first()
            .cast(pl.Float64)
            .alias(f"p{round(q * 100)}")
            for q in quantiles
        ),
        pl.col("value").max().alias("max"),
    ]
    return merged, aggregations


def summarize_counts(counts: pl.DataFrame, quantiles: Sequence[float] = QUANTILES) -> pl.DataFrame:
    """``summarize`` of the messages ``counts`` counts (same columns, same values)."""
    keys = ["source", "role", "measure"]
    merged, aggregations = _from_counts(counts, keys, quantiles)
    return merged.group_by(keys).agg(aggregations).sort("measure", "role", "source").collect()


def summarize_turn_counts(
    counts: pl.DataFrame, quantiles: Sequence[float] = QUANTILES
) -> pl.DataFrame:
    """``summarize_turns`` of the conversations ``counts`` counts."""
    merged, aggregations = _from_counts(counts.rename({"turns": "value"}), ["source"], quantiles)
    by = {a.meta.output_name(): a for a in aggregations}
    return (
        merged.group_by("source")
        .agg(
            by["count"].alias("conversations"),
            by["mean"].alias("mean_turns"),
            *(by[f"p{round(q * 100)}"] for q in quantiles),
            by["max"].alias("max_turns"),
        )
        .sort("source")
        .collect()
    )


def _median(values: np.ndarray, counts: np.ndarray) -> float:  # noqa: F821
    """``np.median`` of ``values`` repeated ``counts`` times (values sorted)."""
    import numpy as np

    n = int(counts.sum())
    cum = np.cumsum(counts)
    low = values[np.searchsorted(cum, (n - 1) // 2, side="right")]
    high = values[np.searchsorted(cum, n // 2, side="right")]
    return (float(low) + float(high)) / 2


def plot_histograms(
    lengths: pl.DataFrame, out_dir: Path, bins: int = ProfileConfig.histogram_bins
) -> list[Path]:
    """``plot_counts`` of the messages' lengths."""
    measure = "tokens" if lengths["tokens"].null_count() < lengths.height else "words"
    return plot_counts(length_counts(lengths), out_dir, bins, measure)


def plot_counts(
    counts: pl.DataFrame,
    out_dir: Path,
    bins: int = ProfileConfig.histogram_bins,
    measure: str | None = None,
) -> list[Path]:
    """One PNG per role: the distribution of lengths for every source, on log-spaced bins
    (lengths span four orders of magnitude across sources; linear bins hide the short ones),
    drawn from ``length_counts`` (so a refresh draws from counts, never from every message).
    ``measure``: tokens when any message was tokenized, else words."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib import ticker

    if measure is None:
        measure = "tokens" if (counts["measure"] == "tokens").any() else "words"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    merged = (
        counts.filter(pl.col("measure") == measure)
        .group_by("role", "source", "value")
        .agg(pl.col("count").sum())
        .sort("role", "source", "value")
    )
    for role in sorted(merged["role"].unique().to_list()):
        of_role = merged.filter(pl.col("role") == role)
        top = max(int(of_role["value"].max() or 1), 2)
        edges = np.unique(np.geomspace(1, top + 1, bins + 1).round())
        figure, axis = plt.subplots(figsize=(8, 4.5), dpi=100)
        for (source,), group in sorted(of_role.group_by("source"), key=lambda kv: kv[0]):
            values = group["value"].to_numpy()
            weights = group["count"].to_numpy()
            n = int(weights.sum())
            # Share of messages per bin, not density: with log-spaced bins a density plot makes
            # the wide bins of long messages look empty. Counted here, drawn as one step line.
            hist, _ = np.histogram(np.maximum(values, 1), bins=edges, weights=weights)
            axis.stairs(
                hist / max(n, 1),
                edges,
                linewidth=1.6,
                label=f"{source} (n={n}, median={int(_median(values, weights))})",
            )
        axis.set_xscale("log")
        # Decades as plain numbers, no minor ticks: a log axis's default minor ticks and
        # mathtext labels were two thirds of the drawing time, paid again on every refresh.
        decades = [10**k for k in range(len(str(int(edges[-1]))) + 1)]
        axis.xaxis.set_major_locator(ticker.FixedLocator(decades))
        axis.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{int(x):,}"))
        axis.xaxis.set_minor_locator(ticker.NullLocator())
        axis.set_xlim(edges[0], edges[-1])
        axis.set_xlabel(f"{measure} per {role} message (log scale)")
        axis.set_ylabel("share of messages")
        axis.set_title(f"{role}: {measure} per message, by source")
        axis.legend(fontsize=8, loc="upper right")
        # Fixed margins: tight_layout measures every text and costs as much as the drawing.
        figure.subplots_adjust(left=0.08, right=0.98, top=0.92, bottom=0.12)
        path = out_dir / f"hist_{role}_{measure}.png"
        tmp = path.with_suffix(".png.tmp")
        figure.savefig(tmp, format="png")
        plt.close(figure)
        tmp.replace(path)
        paths.append(path)
    return paths


def write_profile(
    result: LengthProfile, out_dir: Path, bins: int = ProfileConfig.histogram_bins
) -> dict[str, Path]:
    """Tables as Parquet and CSV (for eyes), histograms as PNG."""
    from curation.storage import write_parquet

    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, table in (("length_stats", result.stats), ("turn_stats", result.turns)):
        written[name] = write_parquet(table, out_dir / f"{name}.parquet")
        csv = out_dir / f"{name}.csv"
        table.write_csv(csv)
        written[f"{name}_csv"] = csv
    if result.counts is not None:
        plots = plot_counts(result.counts, out_dir, bins)
    else:
        plots = plot_histograms(result.lengths, out_dir, bins)
    for path in plots:
        written[path.stem] = path
    return written
