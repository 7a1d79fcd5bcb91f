"""The project's tokenizer and the length profile of every source."""

import base64

import dagster as dg
import polars as pl
from pydantic import Field

from assets.io_manager import preview_markdown
from assets.resources import StorageResource, resolve
from curation.profile import ProfileConfig, profile, write_profile
from curation.tokens import TokenCounter
from training.tokenizer import TokenizerConfig, load_tokenizer, save_tokenizer, train_tokenizer

GROUP = "profile"


class TokenizerAssetConfig(dg.Config):
    path: str | None = Field(
        default=None, description="Existing tokenizer.json or its folder; trains one when empty."
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
    if config.path:
        tokenizer = load_tokenizer(resolve(config.path))
    else:
        tokenizer = train_tokenizer(
            pretrain_corpus["text"].to_list(), TokenizerConfig(vocab_size=config.vocab_size)
        )
    path = save_tokenizer(tokenizer, storage.path("project_tokenizer"))
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "vocab_size": tokenizer.get_vocab_size(),
        }
    )


class LengthProfileConfig(dg.Config):
    histogram_bins: int = Field(default=40, description="Log-spaced bins per histogram.")


@dg.asset(group_name=GROUP, deps=[project_tokenizer], kinds={"polars", "matplotlib"})
def length_profile(
    context: dg.AssetExecutionContext,
    config: LengthProfileConfig,
    storage: StorageResource,
    conversations: pl.DataFrame,
    pretrain_corpus: pl.DataFrame,
) -> pl.DataFrame:
    """Characters, words and tokens per source and role (quantiles), turns per conversation,
    and histograms shown right here in the UI."""
    tokenizer = load_tokenizer(storage.path("project_tokenizer"))
    result = profile(
        conversations,
        TokenCounter(tokenizer),
        texts=pretrain_corpus,
        config=ProfileConfig(histogram_bins=config.histogram_bins),
    )
    written = write_profile(result, storage.path("length_profile"), config.histogram_bins)
    metadata: dict = {
        "tokens_by_source_and_role": dg.MetadataValue.md(
            preview_markdown(result.table("tokens"), 100)
        ),
        "turns_by_source": dg.MetadataValue.md(preview_markdown(result.turns, 100)),
        "folder": dg.MetadataValue.path(str(storage.path("length_profile"))),
    }
    for name, path in written.items():
        if path.suffix == ".png":
            encoded = base64.b64encode(path.read_bytes()).decode()
            metadata[name] = dg.MetadataValue.md(f"![{name}](data:image/png;base64,{encoded})")
    context.add_output_metadata(metadata)
    return result.stats
