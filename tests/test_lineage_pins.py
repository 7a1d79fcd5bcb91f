"""The checkpoints a run reads besides its parent (PPO's reward model; DPO's reference is in
test_reward_dpo.py) are pinned by their lineage as the run starts: lineage.json records each pin
beside its path, and a run whose input was republished while it trained publishes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_rl_stages import build_workspace, ppo_config

from training.checkpoint import read_lineage
from training.runs import (
    InputChangedError,
    InputPin,
    ParentChangedError,
    lineage_sha256,
    pin_inputs,
    pinned_inputs,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """As in test_rl_stages: a tiny model's ops gain nothing from a second thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return build_workspace(tmp_path_factory.mktemp("pins"))


def test_a_pin_sits_beside_its_path_and_is_none_without_lineage(tmp_path):
    published, pretrained = tmp_path / "published", tmp_path / "pretrained"
    published.mkdir()
    pretrained.mkdir()
    (published / "lineage.json").write_text(json.dumps({"stage": "reward"}))
    pins = pin_inputs({"reward_model": published, "reference_checkpoint": pretrained})
    assert pins["reward_model"] == InputPin(str(published), lineage_sha256(published))
    assert pins["reference_checkpoint"] == InputPin(str(pretrained), None)
    inputs = pinned_inputs({"data": "d", "reward_model": str(published), "rows_used": 3}, pins)
    assert list(inputs) == [
        "data",
        "reward_model",
        "reward_model_lineage_sha256",
        "rows_used",
        "reference_checkpoint",
        "reference_checkpoint_lineage_sha256",
    ]
    assert inputs["reward_model_lineage_sha256"] == lineage_sha256(published) is not None
    assert inputs["reference_checkpoint_lineage_sha256"] is None


def test_a_reward_model_republished_while_ppo_trains_is_not_recorded_as_its_reward_model(
    workspace, monkeypatch
):
    """PPO's lineage named the reward model by path alone: one retrained at that path while
    (or after) PPO ran left the lineage pointing at a model the policy was never optimised
    against, with nothing to tell."""
    import training.ppo
    from training.ppo import main as ppo

    reward = workspace / "reward-republished"
    shutil.copytree(workspace / "reward", reward)
    at_start = lineage_sha256(reward)
    config = ppo_config(workspace, "ppo-reward-republished", reward_model=str(reward), max_steps=2)
    optimizer = training.ppo.OPTIMIZERS["trl"]

    class RepublishedWhileTraining:
        def __init__(self, setup):
            self.inner = optimizer(setup)

        @property
        def step(self):
            return self.inner.step

        def train(self):
            trained = self.inner.train()
            # another run of the reward stage publishes at the same path
            lineage = read_lineage(reward)
            publish_again = {**lineage, "finished_at": "2099-01-01T00:00:00Z"}
            (reward / "lineage.json").write_text(json.dumps(publish_again))
            return trained

    monkeypatch.setitem(training.ppo.OPTIMIZERS, "trl", RepublishedWhileTraining)
    with pytest.raises(InputChangedError, match=f"reward_model {reward}") as refused:
        ppo(config)
    assert isinstance(refused.value, ParentChangedError)
    assert not (workspace / "ppo-reward-republished" / "checkpoint").exists()

    monkeypatch.setitem(training.ppo.OPTIMIZERS, "trl", optimizer)
    lineage = read_lineage(ppo(config))  # trained again, against the reward model there now
    inputs = lineage["inputs"]
    assert inputs["reward_model"] == str(reward)
    assert inputs["reward_model_lineage_sha256"] == lineage_sha256(reward) != at_start
    keys = list(inputs)
    assert keys[keys.index("reward_model") + 1] == "reward_model_lineage_sha256"
    assert lineage["parent_lineage_sha256"] == lineage_sha256(workspace / "sft")
