"""A recipe may name its tokenizer by hub id. Nothing here reaches the hub: the tests lay out a
real Hugging Face cache (``models--org--name/snapshots/<commit>``, ``refs/main``) and read it
with ``HF_HUB_OFFLINE=1``, which is exactly how a machine that fetched the repo once reads it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from training.models import ModelConfig
from training.sft import SFTStageConfig, build_trainer
from training.tokenizer import (
    SPECIAL_TOKENS,
    TOKENIZER_FILE,
    load_tokenizer,
    resolve_tokenizer_source,
    to_transformers,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cached_repo(cache: Path, repo_id: str) -> Path:
    """The snapshot folder of ``repo_id`` in a hub cache, with ``refs/main`` pointing at it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_a_hub_id_is_read_from_the_cache_and_given_the_chat_tokens(sft_workspace, hub_cache):
    plain = Tokenizer.from_file(str(sft_workspace / "tokenizer" / TOKENIZER_FILE))
    # A hub tokenizer without our chat tokens, as most are.
    bare = Tokenizer.from_str(plain.to_str())
    snapshot = cached_repo(hub_cache, "acme/plain-bpe")
    stripped = plain.to_str().replace("<|im_start|>", "<|xa|>").replace("<|im_end|>", "<|xb|>")
    (snapshot / TOKENIZER_FILE).write_text(stripped)

    assert resolve_tokenizer_source("acme/plain-bpe") == snapshot
    loaded = load_tokenizer("acme/plain-bpe")
    assert all(loaded.token_to_id(token) is not None for token in SPECIAL_TOKENS)
    # Added at the end: every id the hub tokenizer had keeps its meaning.
    assert loaded.token_to_id("<|im_start|>") >= bare.get_vocab_size()
    text = "the model answers 42"
    assert loaded.encode(text).ids == bare.encode(text).ids

    chat = to_transformers(loaded)
    rendered = chat.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    assert 1 in rendered["assistant_masks"]


def test_an_uncached_hub_id_or_a_missing_path_is_named(hub_cache):
    with pytest.raises(FileNotFoundError, match=r"'acme/absent'.*HF_HUB_OFFLINE"):
        load_tokenizer("acme/absent")
    with pytest.raises(FileNotFoundError, match=r"nowhere/tok\.json: no such tokenizer"):
        load_tokenizer("./nowhere/tok.json")
    for local in ("nowhere/tok.json", "./nowhere", "a..b"):  # paths, or no valid repo id
        with pytest.raises(FileNotFoundError, match="no such tokenizer file or folder"):
            load_tokenizer(local)


def hub_sft_config(workspace: Path, tokenizer: str, **overrides) -> SFTStageConfig:
    return SFTStageConfig(
        output_dir=str(workspace / tokenizer.replace("/", "--")),
        data=str(workspace / "data" / "sft"),
        tokenizer=tokenizer,
        model=ModelConfig(preset="tiny", max_position_embeddings=256),
        max_length=192,
        use_cpu=True,
        resume=False,
        **overrides,
    )


def test_sft_trains_with_a_transformers_tokenizer_named_by_hub_id(sft_workspace, hub_cache):
    snapshot = cached_repo(hub_cache, "acme/chat-bpe")
    project = to_transformers(load_tokenizer(sft_workspace / "tokenizer"))
    project.save_pretrained(snapshot)
    assert (snapshot / "tokenizer_config.json").exists()

    config = hub_sft_config(
        sft_workspace, "acme/chat-bpe", max_steps=3, logging_steps=1, per_device_train_batch_size=4
    )
    trainer, counts = build_trainer(config)
    assert trainer.processing_class.chat_template == project.chat_template
    assert len(trainer.processing_class) == len(project)
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert counts["rows_used"] == 24


def test_a_hub_tokenizer_without_generation_markers_is_refused_by_name(sft_workspace, hub_cache):
    snapshot = cached_repo(hub_cache, "acme/no-markers")
    project = to_transformers(load_tokenizer(sft_workspace / "tokenizer"))
    project.chat_template = project.chat_template.replace("{% generation %}", "").replace(
        "{% endgeneration %}", ""
    )
    project.save_pretrained(snapshot)
    config = hub_sft_config(sft_workspace, "acme/no-markers")
    with pytest.raises(ValueError, match=r"assistant_only_loss: .*acme/no-markers.*generation"):
        build_trainer(config)


def test_the_project_tokenizer_asset_takes_a_hub_id_from_the_launch_form(
    sft_workspace, hub_cache, tmp_path, instance
):
    import dagster as dg
    import polars as pl

    from assets.io_manager import PolarsParquetIOManager
    from assets.profile import project_tokenizer
    from assets.resources import StorageResource
    from curation.storage import write_parquet

    snapshot = cached_repo(hub_cache, "acme/plain-bpe")
    shutil.copy(sft_workspace / "tokenizer" / TOKENIZER_FILE, snapshot / TOKENIZER_FILE)
    out = tmp_path / "out"
    write_parquet(
        pl.DataFrame({"text": ["unused when a tokenizer is named"]}),
        out / "pretrain_corpus.parquet",
    )
    result = dg.materialize(
        [project_tokenizer, dg.AssetSpec("pretrain_corpus")],
        selection=["project_tokenizer"],
        instance=instance,
        resources={
            "io_manager": PolarsParquetIOManager(base_dir=str(out)),
            "storage": StorageResource(base_dir=str(out)),
        },
        run_config={"ops": {"project_tokenizer": {"config": {"path": "acme/plain-bpe"}}}},
    )
    assert result.success
    metadata = result.asset_materializations_for_node("project_tokenizer")[0].metadata
    assert metadata["source"].value == "acme/plain-bpe"
    written = Tokenizer.from_file(str(out / "project_tokenizer" / TOKENIZER_FILE))
    assert written.to_str() == load_tokenizer("acme/plain-bpe").to_str()
