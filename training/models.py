"""Model presets: named Llama-style shapes, or a pretrained model from a local path / hub id.

Random initialisation is seeded so two runs of a recipe start from the same weights. Weights are
only ever read as safetensors; ``trust_remote_code`` stays off unless a recipe turns it on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from training.checkpoint import CheckpointError

# (hidden, intermediate, layers, heads, kv_heads). 134M and 374M match the shapes of the plain-TRL
# baseline in shared/bench, so our GPU numbers compare like for like.
PRESETS: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (64, 176, 2, 4, 2),  # CPU demo: trains in seconds, still a real transformer
    "small": (256, 704, 4, 4, 4),
    "134M": (768, 2048, 12, 12, 12),
    "374M": (1024, 2816, 24, 16, 16),
}
# Small models spend a large share of their parameters on embeddings, so the CPU presets tie them.
TIED_PRESETS = frozenset({"tiny", "small"})


@dataclass(frozen=True)
class ModelConfig:
    """Which model a stage starts from.

    Attributes:
        preset: a key of ``PRESETS`` for a random-init Llama; ignored when ``path`` is set.
        path: a local checkpoint directory or a hub id of a pretrained model.
        max_position_embeddings: context length of a preset model.
        seed: seeds random initialisation.
        dtype: ``float32`` (CPU) or ``bfloat16``.
        attn_implementation: ``sdpa`` (default), ``eager``, ``flex_attention``, ...
            With packed sequences every implementation keeps attention inside each document
            (transformers reads the document boundaries from ``position_ids``); flex attention
            also skips the masked blocks, which is what makes packing pay on a GPU.
        tie_word_embeddings: share input and output embeddings; unset means the preset's choice
            (tied for the CPU presets, untied for 134M/374M, as in the plain-TRL baseline).
        trust_remote_code: run code shipped with a hub model; off unless a recipe needs it.
    """

    preset: str = "tiny"
    path: str | None = None
    max_position_embeddings: int = 1024
    seed: int = 0
    dtype: str = "float32"
    attn_implementation: str = "sdpa"
    tie_word_embeddings: bool | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.path is None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; expected one of {list(PRESETS)}")


def llama_config(config: ModelConfig, tokenizer: Any, **overrides: Any):
    from transformers import LlamaConfig

    hidden, intermediate, layers, heads, kv_heads = PRESETS[config.preset]
    tied = config.tie_word_embeddings
    if tied is None:
        tied = config.preset in TIED_PRESETS
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=config.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=tied,
        attn_implementation=config.attn_implementation,
        **overrides,
    )


def build_causal_lm(config: ModelConfig, tokenizer: Any, path: str | None = None):
    """A causal LM from ``path`` (or ``config.path``) when given, else a seeded preset."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    dtype = getattr(torch, config.dtype)
    source = path or config.path
    if source:
        require_causal_lm(source)
        try:
            return AutoModelForCausalLM.from_pretrained(
                source,
                dtype=dtype,
                use_safetensors=True,
                trust_remote_code=config.trust_remote_code,
                attn_implementation=config.attn_implementation,
            )
        except SafetensorError as error:
            # the library's reason ("incomplete metadata, file not fully covered") names no file
            raise CheckpointError(
                f"{weights_file(source)}: the weights cannot be read ({error}); the file is "
                "damaged or was cut short, so publish or fetch the checkpoint again"
            ) from None
    torch.manual_seed(config.seed)
    return LlamaForCausalLM(llama_config(config, tokenizer)).to(dtype)


def require_causal_lm(path: str | Path) -> None:
    """Refuse a checkpoint whose config.json names no causal-LM architecture, naming the path and
    what it found. A reward checkpoint (``*ForSequenceClassification``) would otherwise load as a
    policy or reference with its output head "newly initialized", a notice rather than an error,
    and train or be measured as noise. A folder whose config names no architecture (a preset's)
    passes, and so does a hub id not in the local cache: loading it says what is wrong."""
    found = _architectures(path)
    if not found or any(_is_causal_lm(name) for name in found):
        return
    raise CheckpointError(
        f"{path}: not a causal language model (config.json names {found}, expected a "
        "*ForCausalLM); a reward checkpoint cannot be a policy or reference: name the SFT "
        "checkpoint (or another policy) instead"
    )


def _architectures(path: str | Path) -> list[str]:
    config = Path(path) / "config.json"
    if not config.is_file():
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(str(path), "config.json")
        except ValueError:  # neither a folder nor a valid hub id
            return []
        if not isinstance(cached, str):
            return []
        config = Path(cached)
    try:
        record = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{config}: the model config cannot be read ({error})") from None
    names = record.get("architectures") if isinstance(record, dict) else None
    return [str(name) for name in names] if isinstance(names, list) else []


def _is_causal_lm(architecture: str) -> bool:
    # Older causal LMs keep other class names (GPT2LMHeadModel); transformers' own table of
    # what AutoModelForCausalLM loads names them.
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return architecture.endswith("ForCausalLM") or architecture in set(
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
    )


def weights_file(source: str) -> Path | str:
    """The single weights file of a local checkpoint, else what names its weights: its folder
    (sharded) or the hub id."""
    single = Path(source) / "model.safetensors"
    return single if single.exists() else source


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def check_context(max_length: int, model: Any, stage: str) -> None:
    """A max_length past the model's positions would train on positions it has no embedding
    for (or fail deep inside attention); say so before any step. ``model`` may also be its
    config alone (read before the weights are)."""
    context = getattr(getattr(model, "config", model), "max_position_embeddings", None)
    if context is not None and max_length > context:
        raise ValueError(
            f"{stage}: max_length {max_length} is longer than the model's context of {context} "
            "positions; lower max_length (or, for a preset, raise model.max_position_embeddings)"
        )
