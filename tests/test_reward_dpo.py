"""Reward and DPO stages on the tiny preset: real steps on a small preference set exported in the
real format, with separable pairs (the chosen answer is right and phrased one way, the rejected
one wrong and phrased another), so a working stage must learn them and a broken one cannot."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest
import torch
from safetensors.torch import load_file

from curation.datasets import ExportConfig, export, preference_rows
from curation.synthetic import SyntheticTask
from training.checkpoint import publish, read_lineage, verify
from training.common import ids_digest, load_splits, load_training_tokenizer
from training.dpo import DPOStageConfig
from training.dpo import main as dpo
from training.models import ModelConfig, build_causal_lm
from training.recipe import RecipeError, build, read_recipe
from training.reward import (
    GroupedPreferenceCollator,
    GroupedRewardTrainer,
    RewardStageConfig,
    build_reward_model,
    group_pairs,
    load_preferences,
)
from training.reward import main as reward
from training.runs import InputChangedError, ParentChangedError, lineage_sha256
from training.tokenizer import TokenizerConfig, to_transformers, train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TINY = ModelConfig(preset="tiny", max_position_embeddings=256)


def synthetic_preferences(prompts: int, seed: int = 0) -> pl.DataFrame:
    """Per prompt three answers ranked right > hedged > wrong, and all C(3, 2) pairs of them;
    half the prompts are 'human', half 'ai'; two extra rows whose chosen equals rejected."""
    rng = random.Random(seed)
    rows = []
    for number in range(prompts):
        a, b = rng.randint(1, 40), rng.randint(1, 40)
        prompt = [{"role": "user", "content": f"What is {a} + {b}?"}]
        answers = [
            f"The answer is {a + b}.",
            f"Maybe {a + b}?",
            f"No clue, {a + b + rng.randint(1, 9)} or so",
        ]
        origin = "human" if number % 2 else "ai"
        for rank, (high, low) in enumerate(((0, 1), (0, 2), (1, 2))):
            rows.append(
                {
                    "id": f"p{number}-{rank}",
                    "source": "synthetic",
                    "origin": origin,
                    "prompt": prompt,
                    "chosen": [{"role": "assistant", "content": answers[high]}],
                    "rejected": [{"role": "assistant", "content": answers[low]}],
                    "margin": float(low - high),
                }
            )
    for number in range(2):
        same = [{"role": "assistant", "content": "Same answer."}]
        rows.append(
            {
                "id": f"tie{number}",
                "source": "synthetic",
                "origin": "ai",
                "prompt": [{"role": "user", "content": f"Tie {number}?"}],
                "chosen": same,
                "rejected": same,
                "margin": None,
            }
        )
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A preference folder in the export format and a tiny 'SFT' checkpoint to start from."""
    root = tmp_path_factory.mktemp("preference")
    frame = synthetic_preferences(48)
    export("preference", preference_rows(frame), root / "data", ExportConfig(eval_fraction=0.25))
    columns = ("prompt", "chosen", "rejected")
    texts = [m["content"] for column in columns for ms in frame[column] for m in ms]
    tokenizer = to_transformers(train_tokenizer(texts * 4, TokenizerConfig(vocab_size=320)))
    model = build_causal_lm(TINY, tokenizer)
    publish(model, tokenizer, root / "sft", {"stage": "sft"})
    return root


def losses(run_dir: Path, key: str = "loss") -> list[float]:
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in records if key in r and "train_loss" not in r]


def reward_config(workspace: Path, name: str, **overrides) -> RewardStageConfig:
    values = dict(
        output_dir=str(workspace / name),
        data=str(workspace / "data" / "preference"),
        init_from=str(workspace / "sft"),
        max_steps=15,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        max_length=64,
        warmup_steps=2,
        logging_steps=3,
        save_steps=1000,
        use_cpu=True,
        clear_pair_margin=2.0,
        inputs={"asset": "preference_dataset"},
    )
    values.update(overrides)
    return RewardStageConfig(**values)


def test_reward_model_learns_separable_pairs_and_reports_accuracy_per_origin(workspace):
    config = reward_config(workspace, "reward")
    tokenizer = load_training_tokenizer(config.init_from)
    initial = {
        n: p.detach().clone()
        for n, p in build_reward_model(config, tokenizer, config.init_from).named_parameters()
    }
    checkpoint = reward(config)
    verify(checkpoint)
    trained = load_file(str(checkpoint / "model.safetensors"))
    assert "score.weight" in trained and trained["score.weight"].shape[0] == 1
    unchanged = [n for n, p in initial.items() if torch.equal(p, trained[n])]
    assert unchanged == []
    curve = losses(workspace / "reward")
    assert curve[-1] < curve[0] - 0.2
    lineage = read_lineage(checkpoint)
    metrics = lineage["metrics"]
    assert metrics["heldout_accuracy"] >= 0.8
    for origin in ("human", "ai"):
        assert metrics[f"heldout_pairs_{origin}"] > 0
        assert 0.0 <= metrics[f"heldout_accuracy_{origin}"] <= 1.0
        assert f"heldout_margin_{origin}" in metrics
    assert metrics["heldout_margin"] > 0
    assert metrics["heldout_pairs_clear"] > 0  # right-vs-wrong pairs (margin 2)
    assert lineage["stage"] == "reward"
    assert lineage["parent_checkpoint"] == config.init_from
    assert lineage["inputs"]["asset"] == "preference_dataset"
    assert lineage["inputs"]["data"] == config.data
    # The published split's hash (what a trace re-computes), not that of the pairs left after
    # dropping ties, which would make the lineage look broken.
    published = load_splits(config.data)["train"]
    assert lineage["inputs"]["row_ids_sha256"] == ids_digest(published)
    assert len(lineage["inputs"]["tokenizer_sha256"]) == 64
    ties = lineage["inputs"]["dropped"]["chosen_equals_rejected"]
    assert sum(ties.values()) == 2
    assert lineage["inputs"]["rows_used"] == len(published) - ties["train"] < len(published)
    assert metrics["dropped_chosen_equals_rejected"] == ties["train"]


def test_grouped_by_prompt_trains_one_element_per_prompt(workspace):
    config = reward_config(workspace, "grouped", group_by_prompt=True, max_steps=8)
    checkpoint = reward(config)
    metrics = read_lineage(checkpoint)["metrics"]
    train = pl.read_parquet(workspace / "data" / "preference" / "train.parquet")
    pairs = train.filter(pl.col("chosen") != pl.col("rejected"))
    assert metrics["pairs"] == pairs.height
    assert metrics["prompts"] == pairs["prompt"].n_unique() < pairs.height
    log = (workspace / "grouped" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in log]
    assert all(r["pairs_per_prompt"] > 1.5 for r in records if "pairs_per_prompt" in r)
    curve = losses(workspace / "grouped")
    assert curve[-1] < curve[0]


def test_grouped_loss_averages_pairs_within_each_prompt_first():
    """Prompt 0 has three pairs, prompt 1 one: each prompt weighs half of the loss."""
    records = [
        {"chosen_ids": [1, 2], "rejected_ids": [1, 3], "margin": 0.0, "prompt_key": "a"},
        {"chosen_ids": [1, 2], "rejected_ids": [1, 4], "margin": 0.0, "prompt_key": "a"},
        {"chosen_ids": [1, 3], "rejected_ids": [1, 4], "margin": 0.0, "prompt_key": "a"},
        {"chosen_ids": [5], "rejected_ids": [6, 6], "margin": 0.0, "prompt_key": "b"},
    ]
    groups = group_pairs(records)
    assert [len(g["sequences"]) for g in groups] == [3, 2]  # each completion scored once
    batch = GroupedPreferenceCollator(pad_token_id=0)(groups)
    assert batch["input_ids"].shape == (5, 2)
    rewards = torch.tensor([2.0, 0.5, -1.0, 0.0, 1.0])  # one score per distinct completion

    def model(input_ids, attention_mask, use_cache):
        return SimpleNamespace(logits=rewards[: len(input_ids)].unsqueeze(-1))

    host = SimpleNamespace(
        model=SimpleNamespace(training=True),
        args=SimpleNamespace(center_rewards_coefficient=None),
        _metrics={"train": defaultdict(list)},
    )
    loss = GroupedRewardTrainer.compute_loss(host, model, batch)

    def bt(good, bad):
        return -torch.nn.functional.logsigmoid(torch.tensor(good - bad))

    prompt_a = (bt(2.0, 0.5) + bt(2.0, -1.0) + bt(0.5, -1.0)) / 3
    prompt_b = bt(0.0, 1.0)
    assert torch.allclose(loss, (prompt_a + prompt_b) / 2)


def dpo_config(workspace: Path, name: str, **overrides) -> DPOStageConfig:
    values = dict(
        output_dir=str(workspace / name),
        data=str(workspace / "data" / "preference"),
        init_from=str(workspace / "sft"),
        max_steps=8,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        beta=0.1,
        max_length=64,
        warmup_steps=1,
        logging_steps=2,
        save_steps=1000,
        use_cpu=True,
        inputs={"asset": "preference_dataset"},
    )
    values.update(overrides)
    return DPOStageConfig(**values)


def test_dpo_moves_the_policy_raises_the_implicit_margin_and_leaves_the_reference(
    workspace, monkeypatch
):
    import training.dpo as stage

    trainers = []

    class Recording(stage.DPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            trainers.append(self)

    monkeypatch.setattr(stage, "DPOTrainer", Recording)
    config = dpo_config(workspace, "dpo")
    checkpoint = dpo(config)
    before = load_file(str(workspace / "sft" / "model.safetensors"))
    after = load_file(str(checkpoint / "model.safetensors"))
    assert [n for n in before if torch.equal(before[n], after[n])] == []
    reference = trainers[0].ref_model
    assert all(not p.requires_grad for p in reference.parameters())
    assert not stage.shares_storage(trainers[0].model, reference)
    assert all(torch.equal(before[n], p) for n, p in reference.state_dict().items() if n in before)
    margins = losses(workspace / "dpo", "rewards/margins")
    assert len(margins) >= 3
    assert sum(margins[-2:]) / 2 > sum(margins[:2]) / 2 and margins[-1] > 0
    lineage = read_lineage(checkpoint)
    metrics = lineage["metrics"]
    assert metrics["reward_margin_last"] > metrics["reward_margin_first"]
    assert metrics["eval_rewards_margins"] > 0
    assert 0.0 <= metrics["eval_rewards_accuracies"] <= 1.0
    assert lineage["stage"] == "dpo"
    assert lineage["parent_checkpoint"] == config.init_from
    assert lineage["inputs"]["reference_checkpoint"] == config.init_from
    # the reference is the parent: pinned by the same lineage, right beside its path
    pin = lineage["inputs"]["reference_checkpoint_lineage_sha256"]
    assert pin is not None
    assert pin == lineage["parent_lineage_sha256"] == lineage_sha256(config.init_from)
    keys = list(lineage["inputs"])
    assert keys[keys.index("reference_checkpoint") + 1] == "reference_checkpoint_lineage_sha256"
    assert lineage["inputs"]["data"] == config.data
    assert sum(lineage["inputs"]["dropped"]["chosen_equals_rejected"].values()) == 2
    assert lineage["recipe"]["beta"] == 0.1


def test_dpo_with_precomputed_reference_log_probs(workspace):
    checkpoint = dpo(dpo_config(workspace, "dpo_pre", max_steps=4, precompute_ref_log_probs=True))
    metrics = read_lineage(checkpoint)["metrics"]
    assert metrics["reward_margin_last"] > 0
    assert read_lineage(checkpoint)["recipe"]["precompute_ref_log_probs"] is True
    assert not list((workspace / "data" / "preference").rglob("cache-*.arrow"))  # input untouched


def test_two_processes_share_the_precomputed_reference_log_probs(workspace, tmp_path):
    """torchrun with two CPU processes: the main rank alone writes TRL's cache of reference
    log-probs, so every rank must read the datasets from one folder on disk."""
    from torchrun_support import torchrun

    values = dpo_config(workspace, "unused").__dict__
    section = {
        key: values[key]
        for key in ("data", "init_from", "max_length", "beta", "learning_rate", "use_cpu")
    }
    section |= {
        "output_dir": str(tmp_path / "dpo"),
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "warmup_steps": 1,
        "logging_steps": 1,
        "save_steps": 1000,
        "precompute_ref_log_probs": True,
    }
    launched = torchrun("dpo", section, tmp_path)
    assert launched.returncode == 0, launched.stderr[-3000:]
    checkpoint = verify(tmp_path / "dpo" / "checkpoint")
    assert read_lineage(checkpoint)["recipe"]["precompute_ref_log_probs"] is True
    assert list((tmp_path / "dpo" / "pairs" / "train").glob("cache-*.arrow"))
    assert not list((workspace / "data" / "preference").rglob("cache-*.arrow"))  # input untouched


def test_nan_loss_stops_and_names_the_step_and_the_last_good_state(workspace, monkeypatch):
    from trl import RewardTrainer

    original = RewardTrainer.compute_loss

    def poisoned(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = original(self, model, inputs, return_outputs, num_items_in_batch)
        return loss * float("nan") if self.state.global_step >= 3 else loss

    monkeypatch.setattr(RewardTrainer, "compute_loss", poisoned)
    config = reward_config(workspace, "nan", max_steps=8, save_steps=2, logging_steps=1)
    stopped = r"reward: non-finite loss at step 4; the last good state is .*checkpoint-2"
    with pytest.raises(FloatingPointError, match=stopped):
        reward(config)
    assert not (workspace / "nan" / "checkpoint").exists()


def test_a_dataset_left_empty_after_dropping_names_the_folder(workspace, tmp_path):
    ties = synthetic_preferences(0)  # only the two chosen == rejected rows
    export("ties", preference_rows(ties), tmp_path, ExportConfig(eval_fraction=0.0))
    folder = tmp_path / "ties"
    empty = rf"{folder}: no usable preference pairs left in the train split \(dropped: 2 chosen"
    with pytest.raises(ValueError, match=empty):
        reward(reward_config(workspace, "empty", data=str(folder)))
    with pytest.raises(ValueError, match=rf"{folder}: no usable preference pairs"):
        dpo(dpo_config(workspace, "empty_dpo", data=str(folder)))


@pytest.mark.parametrize("recipe", ["recipes/test-cpu.yaml", "recipes/tiny-cpu.yaml"])
def test_recipes_have_valid_reward_and_dpo_sections(recipe):
    sections = read_recipe(ROOT / recipe)
    filled = {"data": "d", "init_from": "c"}
    assert build(RewardStageConfig, {**sections["reward"], **filled}, f"{recipe}: reward")
    assert build(DPOStageConfig, {**sections["dpo"], **filled}, f"{recipe}: dpo")
    with pytest.raises(RecipeError, match=r"dpo.bta: unknown key"):
        build(DPOStageConfig, {**sections["dpo"], **filled, "bta": 0.1}, f"{recipe}: dpo")


def test_a_reference_with_another_tokenizer_is_refused_before_training(workspace, tmp_path):
    words = ["entirely different words"] * 50
    other = to_transformers(train_tokenizer(words, TokenizerConfig(vocab_size=300)))
    publish(build_causal_lm(TINY, other), other, tmp_path / "other", {"stage": "sft"})
    config = dpo_config(workspace, "mismatch", reference=str(tmp_path / "other"))
    with pytest.raises(ValueError, match=r"other: its tokenizer differs from the policy's"):
        dpo(config)
    assert not (workspace / "mismatch" / "runs").exists()


def test_checkable_pairs_keep_right_over_wrong_whatever_the_margin(tmp_path):
    """With an answer key, a synthetic prompt's pair survives exactly when it puts the right
    answer first (a judge's rank gap of 1 is enough); other prompts still face the margin."""
    key = {"What is 2 + 3?": SyntheticTask("t", "add", "What is 2 + 3?", "5")}
    prompt = [{"role": "user", "content": "What is 2 + 3?"}]
    other = [{"role": "user", "content": "Tell me a story."}]

    def pair(pair_id, prompt, chosen, rejected, margin):
        return {
            "id": pair_id,
            "source": "synthetic",
            "origin": "ai",
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "margin": margin,
        }

    frame = pl.DataFrame(
        [
            pair("right-wrong", prompt, "5", "6", 1.0),  # sampled answers ranked by a judge
            pair("wrong-wrong", prompt, "6", "7", 1.0),
            pair("wrong-right", prompt, "4", "The answer is 5.", 6.0),  # a judge's mistake
            pair("story-close", other, "Once upon a time.", "No.", 1.0),
            pair("story-clear", other, "Once upon a time, a fox.", "No.", 5.0),
        ]
    )
    export("pairs", preference_rows(frame), tmp_path, ExportConfig(eval_fraction=0.0))
    folder = tmp_path / "pairs"

    splits, dropped = load_preferences(folder, min_pair_margin=4.0, answer_key=key)
    kept = {row["chosen"][0]["content"] for row in splits["train"]}
    assert kept == {"5", "Once upon a time, a fox."}
    assert dropped["not_right_vs_wrong"] == {"train": 2}
    assert dropped["below_min_pair_margin"] == {"train": 1}

    # Without the key only the margin decides: the judge's mistake passes, the right answer at
    # a rank gap of 1 does not.
    splits, _ = load_preferences(folder, min_pair_margin=4.0)
    kept = {row["chosen"][0]["content"] for row in splits["train"]}
    assert kept == {"4", "Once upon a time, a fox."}


def test_dpo_trains_again_only_when_its_reference_or_recipe_changed(workspace, monkeypatch):
    import shutil

    import training.dpo

    reference = workspace / "reference-again"
    shutil.copytree(workspace / "sft", reference)
    config = dpo_config(workspace, "dpo_again", max_steps=2, save_steps=1, reference=str(reference))
    first = dpo(config)
    metrics_file = workspace / "dpo_again" / "metrics.jsonl"
    trained = metrics_file.read_text()
    with monkeypatch.context() as patch:
        # not even the trainer: with precomputed log-probs, building it runs the reference
        patch.setattr(training.dpo, "DPOTrainer", None)
        assert dpo(config) == first and metrics_file.read_text() == trained  # nothing to train

    # The same path, a republished reference: the old saves must not be continued.
    lineage = json.loads((reference / "lineage.json").read_text())
    (reference / "lineage.json").write_text(json.dumps({**lineage, "note": "republished"}))
    dpo(config)
    # Trained again (no record is older than the retraining), and the curve is the new run's alone.
    before = [json.loads(line)["time"] for line in trained.splitlines()]
    again = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    assert min(r["time"] for r in again) > max(before)
    assert [r["step"] for r in again if "loss" in r] == [2]  # logged every 2 steps
    assert (workspace / "dpo_again" / "runs.superseded" / "checkpoint-2").is_dir()
    retrained, fingerprint = metrics_file.read_text(), read_lineage(first)["fingerprint"]
    assert dpo(config) == first and metrics_file.read_text() == retrained
    assert read_lineage(first)["fingerprint"] == fingerprint


def test_reward_lineage_leaves_out_the_pairs_too_long_to_train_on(workspace, tmp_path):
    """A pair longer than max_length is dropped before training (its reward would be read
    short of its end); lineage hashed and counted the split before that drop, so a trace
    listed the reward model as trained on pairs it never saw."""
    frame = synthetic_preferences(48)
    rambling = [{"role": "assistant", "content": "The answer is 12. " * 30}]
    long_ids = {f"p{n}-0" for n in range(0, 48, 4)}
    frame = frame.with_columns(
        chosen=pl.when(pl.col("id").is_in(list(long_ids)))
        .then(pl.lit(rambling))
        .otherwise(pl.col("chosen"))
    )
    export("long", preference_rows(frame), tmp_path, ExportConfig(eval_fraction=0.25))
    data = tmp_path / "long"
    published = load_splits(data)["train"]
    long_in_train = sorted(long_ids & set(published["id"]))
    ties_in_train = sorted(i for i in published["id"] if i.startswith("tie"))
    assert long_in_train  # some long pairs are for training, not only held out

    config = reward_config(workspace, "reward-long", data=str(data), max_steps=2)
    lineage = read_lineage(reward(config))
    inputs = lineage["inputs"]
    assert lineage["metrics"]["dropped_too_long"] == len(long_in_train)
    assert inputs["row_ids_left_out"] == sorted(long_in_train + ties_in_train)
    trained = published.filter(lambda row: row["id"] not in inputs["row_ids_left_out"])
    assert inputs["rows_used"] == len(trained) == lineage["metrics"]["pairs"]
    assert inputs["row_ids_used_sha256"] == ids_digest(trained) != inputs["row_ids_sha256"]

    # Grouped by prompt, the pairs used are the same ones.
    grouped = reward_config(
        workspace, "reward-long-grouped", data=str(data), max_steps=2, group_by_prompt=True
    )
    grouped_inputs = read_lineage(reward(grouped))["inputs"]
    assert grouped_inputs["row_ids_left_out"] == inputs["row_ids_left_out"]
    assert grouped_inputs["row_ids_used_sha256"] == inputs["row_ids_used_sha256"]


def test_a_reference_republished_while_dpo_trains_is_not_recorded_as_its_reference(
    workspace, monkeypatch
):
    """The lineage named the reference by path alone: one retrained at that path during (or
    after) the run left the lineage pointing at a model the policy was never compared with."""
    import shutil

    import training.dpo

    reference = workspace / "reference-republished"
    shutil.copytree(workspace / "sft", reference)
    at_start = lineage_sha256(reference)
    out = "dpo-reference-republished"
    config = dpo_config(workspace, out, max_steps=1, reference=str(reference))
    train = training.dpo.train_or_restore

    def train_while_the_reference_is_republished(*args, **kwargs):
        trained = train(*args, **kwargs)
        lineage = read_lineage(reference)
        lineage["finished_at"] = "2099-01-01T00:00:00Z"  # another run of the reference's stage
        (reference / "lineage.json").write_text(json.dumps(lineage))
        return trained

    monkeypatch.setattr(training.dpo, "train_or_restore", train_while_the_reference_is_republished)
    with pytest.raises(InputChangedError, match=f"reference_checkpoint {reference}") as refused:
        dpo(config)
    assert isinstance(refused.value, ParentChangedError)  # callers that handle one handle both
    assert not (workspace / out / "checkpoint").exists()

    monkeypatch.setattr(training.dpo, "train_or_restore", train)
    lineage = read_lineage(dpo(config))  # trained again, against the reference there now
    inputs = lineage["inputs"]
    assert inputs["reference_checkpoint"] == str(reference)
    assert inputs["reference_checkpoint_lineage_sha256"] == lineage_sha256(reference) != at_start
    assert lineage["parent_lineage_sha256"] == lineage_sha256(workspace / "sft")
