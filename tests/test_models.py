"""Model presets: the GPU presets have the sizes their names promise (at the baseline's 32k
vocabulary), and random initialisation is a function of the seed."""

from __future__ import annotations

import pytest
import torch

from training.models import ModelConfig, build_causal_lm, count_parameters, llama_config


class Vocabulary:
    """What a preset reads from a tokenizer: its size and special token ids."""

    def __init__(self, size: int) -> None:
        self.size, self.pad_token_id, self.bos_token_id, self.eos_token_id = size, 0, 1, 2

    def __len__(self) -> int:
        return self.size


@pytest.mark.parametrize("preset, millions", [("134M", 134), ("374M", 374)])
def test_gpu_presets_have_the_size_of_their_name(preset, millions):
    from transformers import LlamaForCausalLM

    with torch.device("meta"):  # shapes only: no memory for the weights
        model = LlamaForCausalLM(llama_config(ModelConfig(preset=preset), Vocabulary(32_000)))
    assert count_parameters(model) / 1e6 == pytest.approx(millions, rel=0.02)


def test_initialisation_follows_the_seed():
    def weights(seed: int) -> dict[str, torch.Tensor]:
        return build_causal_lm(ModelConfig(preset="tiny", seed=seed), Vocabulary(300)).state_dict()

    first, again, other = weights(0), weights(0), weights(1)
    assert all(torch.equal(first[name], again[name]) for name in first)
    differing = [name for name in first if not torch.equal(first[name], other[name])]
    # every randomly initialised tensor differs (norm weights start at 1 whatever the seed)
    assert {n for n in first if "norm" not in n} <= set(differing)
