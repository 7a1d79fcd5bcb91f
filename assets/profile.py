"""The project's tokenizer and the length profile of every source."""

import base64
import contextlib
import hashlib
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from assets.io_manager import preview_markdown
from assets.resources import StorageResource, resolve
from curation.profile import (
    LENGTH_COUNTS,
    TURN_COUNTS,
    LengthProfile,
    ProfileConfig,
    conversation_turns,
    length_counts,
    message_lengths,
    summarize_counts,
    summarize_turn_counts,
    text_lengths,
    turn_counts,
    write_profile,
)
from curation.storage import Part, PartSet, PartUpdate, read_manifest, write_parquet, write_parts
from curation.tokens import TokenCounter
from training.tokenizer import TokenizerConfig, load_tokenizer, save_tokenizer, train_tokenizer

GROUP = "profile"


class TokenizerAssetConfig(dg.Config):
    path: str | None = Field(
        default=None,
        description=(
            "Existing tokenizer.json, its folder, or a hub id (org/name) already in the Hugging "
            "Face cache; trains one when empty."
        ),
    )
    vocab_size: int = Field(default=4096, description="Vocabulary when training a BPE.")


@dg.asset(group_name=GROUP, kinds={"tokenizers"})
def project_tokenizer(
    context: dg.AssetExecutionContext,
    config: TokenizerAssetConfig,
    storage: StorageResource,
    pretrain_corpus: pl.DataFrame,
) -> dg.MaterializeResult:
    """Byte-level BPE trained on the pretraining corpus (or the configured one), shared by
    profiling and every training stage."""
    source = None
    if config.path:
        # A relative path is the project's; a name that is no file here may be a hub id.
        local = resolve(config.path)
        source = str(local) if local.exists() else config.path
        tokenizer = load_tokenizer(source)
    else:
        tokenizer = train_tokenizer(
            pretrain_corpus["text"].to_list(), TokenizerConfig(vocab_size=config.vocab_size)
        )
    path = save_tokenizer(tokenizer, storage.path("project_tokenizer"))
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "vocab_size": tokenizer.get_vocab_size(),
            "source": source or "trained on pretrain_corpus",
        }
    )


class CachedTokenCounts:
    """Token counts of texts seen before, kept between runs (keyed by two 64-bit hashes of the
    text, in a file named after the tokenizer): a refresh after a new drop tokenizes the new
    texts only. Counting is most of the profile's time; the quantiles and histograms are still
    computed over every row, from the same counts a full run gets."""

    def __init__(self, count: Callable[[list[str]], list[int]], folder: Path, tokenizer_id: str):
        self.count, self.folder = count, folder
        self.path = folder / f"token_counts.{tokenizer_id[:16]}.parquet"
        self.used: list[pl.DataFrame] = []
        self.counted = 0

    @property
    def cache(self) -> pl.DataFrame:
        """Every kept count (read whole only by ``save`` when nothing was looked up)."""
        return self._lookup(None)

    def _lookup(self, keys: pl.DataFrame | None) -> pl.DataFrame:
        """The kept counts of ``keys`` (all of them for None). The file is scanned and joined
        with the keys, so a refresh that asks for a few thousand texts does not load a cache
        of millions."""
        empty = pl.DataFrame(schema=TOKEN_COUNTS)
        if not self.path.exists():
            return empty
        # An unreadable file only means counting everything again.
        with contextlib.suppress(OSError, pl.exceptions.PolarsError):
            scan = pl.scan_parquet(self.path).select(TOKEN_COUNTS.names())
            if keys is not None:
                scan = scan.join(keys.unique().lazy(), on=["h1", "h2"], how="semi")
            return scan.collect()
        return empty

    def __call__(self, texts: list[str]) -> list[int]:
        series = pl.Series("text", texts, dtype=pl.String)
        keys = pl.DataFrame({"h1": series.hash(11), "h2": series.hash(23)})
        known = self._lookup(keys)
        joined = keys.join(known, on=["h1", "h2"], how="left", maintain_order="left")
        missing = joined["tokens"].is_null()
        if missing.any():
            todo = series.filter(missing)
            counts = pl.Series("tokens", self.count(todo.to_list()), dtype=pl.Int64)
            at = missing.arg_true()
            joined = joined.with_columns(joined["tokens"].scatter(at, counts))
            self.counted += todo.len()
        self.used.append(joined)
        return joined["tokens"].to_list()

    def save(self) -> None:
        """Keep the counts this run used (texts gone from the data are forgotten)."""
        used = pl.concat(self.used).unique(["h1", "h2"]) if self.used else self.cache
        write_parquet(used.select(TOKEN_COUNTS.names()).cast(TOKEN_COUNTS), self.path)
        for other in self.folder.glob("token_counts.*.parquet"):
            if other != self.path:
                other.unlink(missing_ok=True)


TOKEN_COUNTS = pl.Schema({"h1": pl.UInt64, "h2": pl.UInt64, "tokens": pl.Int64})


class LengthProfileConfig(dg.Config):
    histogram_bins: int = Field(default=40, description="Log-spaced bins per histogram.")


@dg.asset(group_name=GROUP, deps=[project_tokenizer], kinds={"polars", "matplotlib"})
def length_profile(
    context: dg.AssetExecutionContext,
    config: LengthProfileConfig,
    storage: StorageResource,
    conversations: PartSet,
    pretrain_corpus: pl.DataFrame,
) -> pl.DataFrame:
    """Characters, words and tokens per source and role (quantiles), turns per conversation,
    and histograms shown right here in the UI. Each conversations part's length counts
    (messages per source, role, measure and value) and turn counts are kept (one part per
    drop, for this tokenizer), so a refresh measures the new drop only; quantiles and
    histograms are then taken from the summed counts, equal to a full run's over every
    message. Token counts of texts seen before are reused (``CachedTokenCounts``)."""
    tokenizer = load_tokenizer(storage.path("project_tokenizer"))
    tokenizer_id = hashlib.sha256(tokenizer.to_str().encode()).hexdigest()
    state = storage.path("profile_state", "length_profile")
    counts = CachedTokenCounts(TokenCounter(tokenizer), state, tokenizer_id)
    kept = read_manifest(state / "parts")
    if kept is not None and kept.members != PROFILE_MEMBERS:
        kept = None  # kept in another layout: measure every part again
    reusable = {(p.name, p.tag) for p in kept.parts} if kept is not None else set()
    parts, new = [], {}
    for part in conversations.parts:
        tag = f"{part.tag}|{tokenizer_id[:16]}"
        parts.append(Part(part.name, tag, rows=part.rows))
        if (part.name, tag) not in reusable:
            frame = pl.read_parquet(conversations.path(part))
            new[part.name] = {
                "counts": length_counts(message_lengths(frame, counts)),
                "turns": turn_counts(conversation_turns(frame)),
            }
    table = write_parts(state / "parts", PartUpdate(parts, new, kept, PROFILE_MEMBERS))
    measured = [table.read("counts")] if table.parts else []
    texts = _text_counts(pretrain_corpus, counts, state, tokenizer_id, every=len(new) == len(parts))
    all_counts = pl.concat([*measured, texts]).cast(LENGTH_COUNTS)
    quantiles = ProfileConfig().quantiles
    turns = table.read("turns") if table.parts else TURN_COUNTS.to_frame()
    result = LengthProfile(
        lengths=pl.DataFrame(),
        stats=summarize_counts(all_counts, quantiles),
        turns=summarize_turn_counts(turns.cast(TURN_COUNTS), quantiles),
        counts=all_counts,
    )
    if len(new) == len(parts):
        # Every part measured: keep the counts of exactly these texts. A refresh that measured
        # one new drop leaves the cache alone (rewriting it costs O(all texts)); its lengths are
        # kept with its part, so the cache only matters when parts are measured again.
        counts.save()
    written = write_profile(result, storage.path("length_profile"), config.histogram_bins)
    metadata: dict = {
        "tokens_by_source_and_role": dg.MetadataValue.md(
            preview_markdown(result.table("tokens"), 100)
        ),
        "turns_by_source": dg.MetadataValue.md(preview_markdown(result.turns, 100)),
        "folder": dg.MetadataValue.path(str(storage.path("length_profile"))),
        "texts_tokenized": counts.counted,
        "parts_measured": list(new),
    }
    for name, path in written.items():
        if path.suffix == ".png":
            encoded = base64.b64encode(path.read_bytes()).decode()
            metadata[name] = dg.MetadataValue.md(f"![{name}](data:image/png;base64,{encoded})")
    context.add_output_metadata(metadata)
    return result.stats


PROFILE_MEMBERS = ("counts", "turns")


def _text_counts(
    corpus: pl.DataFrame, counts: CachedTokenCounts, state: Path, tokenizer_id: str, every: bool
) -> pl.DataFrame:
    """The pretraining corpus' length counts, kept beside the parts under a digest of its
    texts and the tokenizer: a refresh whose corpus is unchanged reads them back instead of
    looking every document up in the token-count cache (a scan of the whole cache, which
    holds every message seen). A run that measures every part counts them through the cache,
    so the cache it saves keeps them."""
    digest = hashlib.sha256(tokenizer_id.encode())
    digest.update(corpus.select(pl.col("source"), pl.col("text")).hash_rows(seed=0).to_numpy())
    path = state / f"text_counts.{digest.hexdigest()[:16]}.parquet"
    if not every and path.exists():
        with contextlib.suppress(OSError, pl.exceptions.PolarsError):
            return pl.read_parquet(path)
    texts = length_counts(text_lengths(corpus, counts))
    write_parquet(texts, path)
    for other in state.glob("text_counts.*.parquet"):
        if other != path:
            other.unlink(missing_ok=True)
    return texts
