"""What the preference and RL stages (reward, DPO, PPO, GRPO/RLOO) accept, and what they refuse
before any model is loaded: settings no run can use, malformed and empty rows, pairs TRL would
drop behind our back, a tokenizer rebuilt under a from-scratch reward model, and a run killed
after its last save (resumed there, it must publish that save, not train a step past it).

Real Parquet files in the exported formats, tiny models, one or two real steps."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from test_reward_dpo import synthetic_preferences

import training.__main__ as cli
from assets.resources import SAMPLES
from curation.datasets import (
    ExportConfig,
    export,
    preference_rows,
    pretrain_rows,
    prompt_rows,
    sft_rows,
)
from curation.ingest import ingest
from curation.readers.text import read_text_corpus
from training.checkpoint import publish, read_lineage
from training.models import ModelConfig, build_causal_lm, llama_config
from training.recipe import RecipeError
from training.reporting import read_metrics
from training.tokenizer import TokenizerConfig, save_tokenizer, to_transformers, train_tokenizer

TINY = ModelConfig(preset="tiny", max_position_embeddings=256)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: a second thread only adds contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A preference set and a prompt set in the export format, a tokenizer trained on them
    (saved, for stages that start from scratch), a tiny 'SFT' checkpoint and a random reward
    checkpoint, and a little pretraining text."""
    from transformers import LlamaForSequenceClassification

    root = tmp_path_factory.mktemp("preference-inputs")
    frame = synthetic_preferences(8)  # 24 pairs and 2 ties
    export("preference", preference_rows(frame), root / "data", ExportConfig(eval_fraction=0.25))
    chats = ingest("jsonl", [SAMPLES / "synthetic_chat.jsonl"]).conversations.head(24)
    export("prompt", prompt_rows(chats), root / "data", ExportConfig(eval_fraction=0.0))
    export("sft", sft_rows(chats), root / "data", ExportConfig(eval_fraction=0.0))
    texts = read_text_corpus([SAMPLES / "pretrain.jsonl"]).texts.head(60)
    export("pretrain", pretrain_rows(texts), root / "data", ExportConfig(eval_fraction=0.0))
    corpus = [m["content"] for c in ("prompt", "chosen", "rejected") for ms in frame[c] for m in ms]
    corpus += [m["content"] for ms in chats["messages"] for m in ms]
    raw = train_tokenizer(corpus * 2 + list(texts["text"]), TokenizerConfig(vocab_size=320))
    save_tokenizer(raw, root / "tokenizer")
    tokenizer = to_transformers(raw)
    publish(build_causal_lm(TINY, tokenizer), tokenizer, root / "sft", {"stage": "sft"})
    torch.manual_seed(0)
    reward = LlamaForSequenceClassification(llama_config(TINY, tokenizer, num_labels=1))
    publish(reward, tokenizer, root / "reward", {"stage": "reward"})
    return root


def rows_of(workspace: Path, name: str, split: str = "train") -> list[dict]:
    return pq.read_table(workspace / "data" / name / f"{split}.parquet").to_pylist()


def write_variant(folder: Path, train: list[dict], test: list[dict] | None = None, like=None):
    """A dataset folder holding ``train`` (and ``test``) as Parquet, in the schema of ``like``
    (a Parquet file) when given, so nulls and empty lists keep the exported types."""
    schema = pq.read_schema(like) if like is not None else None
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(train, schema=schema), folder / "train.parquet")
    if test is not None:
        pq.write_table(pa.Table.from_pylist(test, schema=schema), folder / "test.parquet")
    return folder


def preference_variant(workspace: Path, folder: Path, change, rows=None) -> Path:
    """The preference set with ``change(index, row)`` applied to each train row."""
    train = copy.deepcopy(rows if rows is not None else rows_of(workspace, "preference"))
    for index, row in enumerate(train):
        change(index, row)
    like = workspace / "data" / "preference" / "train.parquet"
    return write_variant(folder, train, rows_of(workspace, "preference", "test"), like)


def message(role: str, content: str | None) -> list[dict]:
    return [{"role": role, "content": content}]


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test when a stage gets as far as loading or building a model."""
    import training.dpo
    import training.grpo
    import training.ppo
    import training.reward

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was found")

    monkeypatch.setattr(training.reward, "build_reward_model", refuse)
    monkeypatch.setattr(training.dpo, "build_causal_lm", refuse)
    monkeypatch.setattr(training.ppo, "load_reward_model", refuse)
    monkeypatch.setattr(training.ppo, "build_causal_lm", refuse)
    monkeypatch.setattr(training.grpo, "reward_functions", refuse)


def common(workspace: Path, name: str, **overrides) -> dict:
    values = dict(
        output_dir=str(workspace / "out" / name),
        init_from=str(workspace / "sft"),
        max_steps=1,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        max_length=64,
        save_steps=100,
        logging_steps=1,
        use_cpu=True,
    )
    return {**values, **overrides}


def reward_config(workspace: Path, name: str, **overrides):
    from training.reward import RewardStageConfig

    values = common(workspace, name, data=str(workspace / "data" / "preference"), warmup_steps=0)
    return RewardStageConfig(**{**values, **overrides})


def dpo_config(workspace: Path, name: str, **overrides):
    from training.dpo import DPOStageConfig

    values = common(workspace, name, data=str(workspace / "data" / "preference"), warmup_steps=0)
    return DPOStageConfig(**{**values, **overrides})


def ppo_config(workspace: Path, name: str, **overrides):
    from training.ppo import PPOStageConfig

    values = common(
        workspace,
        name,
        data=str(workspace / "data" / "prompt"),
        reward_model=str(workspace / "reward"),
        response_length=4,
        num_ppo_epochs=1,
    )
    return PPOStageConfig(**{**values, **overrides})


def grpo_config(workspace: Path, name: str, **overrides):
    from training.grpo import GRPOStageConfig

    values = common(
        workspace,
        name,
        data=str(workspace / "data" / "prompt"),
        reward_model=str(workspace / "reward"),
        reward_weights={"reward_model": 1.0},
        num_generations=2,
        max_completion_length=4,
    )
    return GRPOStageConfig(**{**values, **overrides})


# --- settings no run can use (D4) -----------------------------------------------------------

BAD_SETTINGS = [
    ("ppo", "kl_coef", -1, "kl_coef: must be >= 0, got -1"),
    ("ppo", "num_mini_batches", 0, "num_mini_batches: must be >= 1, got 0"),
    ("ppo", "temperature", 0, "temperature: must be > 0, got 0"),
    ("ppo", "response_length", 0, "response_length: must be >= 1, got 0"),
    ("ppo", "max_steps", 0, "max_steps: must be >= 1, got 0"),
    ("dpo", "beta", -0.5, "beta: must be > 0, got -0.5"),
    ("dpo", "beta", 0, "beta: must be > 0, got 0"),
    ("dpo", "max_steps", 0, "max_steps: must be >= 1, got 0"),
    ("dpo", "per_device_train_batch_size", 0, "per_device_train_batch_size: must be >= 1"),
    ("grpo", "beta", -0.5, "beta: must be >= 0, got -0.5"),
    ("grpo", "max_completion_length", 0, "max_completion_length: must be >= 1, got 0"),
    ("grpo", "temperature", 0, "temperature: must be > 0"),
    ("rloo", "beta", -0.5, "beta: must be >= 0, got -0.5"),
    ("rloo", "max_steps", 0, "max_steps: must be >= 1, got 0"),
    ("reward", "max_steps", 0, "max_steps: must be >= 1, got 0"),
    ("reward", "gradient_accumulation_steps", 0, "gradient_accumulation_steps: must be >= 1"),
    ("reward", "learning_rate", -0.001, "learning_rate: must be >= 0, got -0.001"),
    ("reward", "max_length", 0, "max_length: must be >= 1, got 0"),
    ("sft", "max_steps", 0, "max_steps: must be >= 1, got 0"),
    ("sft", "per_device_train_batch_size", 0, "per_device_train_batch_size: must be >= 1"),
    ("pretrain", "max_steps", 0, "max_steps: must be >= 1, got 0"),
    ("pretrain", "logging_steps", 0, "logging_steps: must be >= 1, got 0"),
]


@pytest.mark.parametrize(("stage", "key", "value", "message"), BAD_SETTINGS)
def test_a_setting_no_run_can_use_is_a_recipe_error_naming_the_file_section_and_key(
    tmp_path, stage, key, value, message
):
    """Each used to train (an inverted or flat objective, the SFT weights published as 'ppo'
    after max_steps: 0) or to fail in a library after the models loaded (ZeroDivisionError
    for num_mini_batches: 0). Refused where the recipe is read, before the stage's module runs
    anything."""
    section = {
        "data": "d",
        "init_from": "c",
        "tokenizer": "t",
        "reward_model": "rm",
        "output_dir": str(tmp_path / "out"),
        "max_steps": 4,
        "per_device_train_batch_size": 4,
        key: value,
    }
    if stage in ("reward", "dpo", "sft", "pretrain"):
        section.pop("reward_model")
    if stage in ("grpo", "rloo"):
        section["reward_weights"] = {"reward_model": 1.0}
        section["num_generations"] = 2
    if stage in ("dpo", "ppo", "grpo", "rloo"):
        section.pop("tokenizer")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({stage: section}))
    expected = rf"^{re.escape(str(recipe))}: {stage}: {re.escape(message)}"
    with pytest.raises(RecipeError, match=expected):
        cli.load_config(stage, str(recipe))
    assert not (tmp_path / "out").exists()


def test_a_config_built_in_code_is_checked_too(workspace):
    """The assets build the dataclasses directly: the same checks hold there."""
    with pytest.raises(ValueError, match=r"^num_mini_batches: must be >= 1, got 0$"):
        ppo_config(workspace, "unused", num_mini_batches=0)
    with pytest.raises(ValueError, match=r"^beta: must be > 0, got 0$"):
        dpo_config(workspace, "unused", beta=0, loss_type=["ipo"])
    with pytest.raises(ValueError, match=r"^learning_rate: must be >= 0, got nan$"):
        reward_config(workspace, "unused", learning_rate=float("nan"))
    assert grpo_config(workspace, "unused", beta=0.0).beta == 0.0  # no KL term is a choice


# --- malformed rows are refused, named; empty ones are left out and counted (D5) -------------


@pytest.mark.parametrize(
    ("stage", "change", "message"),
    [
        (
            "reward",
            lambda i, row: row.update(chosen=None) if i % 5 == 0 else None,
            r"5 of the 22 rows of the train split are malformed: row 0 \(id p0-0\): chosen: "
            r"null; row 5 \(id p1-2\): chosen: null; row 10 \(id p4-0\): chosen: null; and 2 "
            r"more; each of prompt, chosen, rejected must be a list of \{role, content\}",
        ),
        (
            "dpo",
            lambda i, row: row.update(prompt=None) if i == 3 else None,
            r"1 of the 22 rows of the train split are malformed: row 3 \(id p1-0\): prompt: "
            r"null; each of",
        ),
        (
            "dpo",
            lambda i, row: row.update(rejected=message("assistant", None)) if i == 7 else None,
            r"1 of the 22 rows of the train split are malformed: row 7 \(id p2-2\): rejected: "
            r"message 0 \(assistant\) has content None; each of",
        ),
    ],
)
def test_a_malformed_pair_is_named_by_file_split_row_id_and_field_before_a_model_loads(
    workspace, tmp_path, no_model, stage, change, message
):
    from training.dpo import main as dpo
    from training.reward import main as reward

    data = preference_variant(workspace, tmp_path / "bad", change)
    run, config = {
        "reward": (reward, reward_config),
        "dpo": (dpo, dpo_config),
    }[stage]
    with pytest.raises(ValueError, match=rf"^{re.escape(str(data))}: {message}"):
        run(config(workspace, f"malformed-{stage}", data=str(data)))
    assert not (workspace / "out" / f"malformed-{stage}" / "runs").exists()


def test_plain_text_pairs_are_refused_as_not_conversational(workspace, tmp_path, no_model):
    from training.reward import main as reward

    def plain(row):
        return {**row, **{c: row[c][0]["content"] for c in ("prompt", "chosen", "rejected")}}

    train = [plain(r) for r in rows_of(workspace, "preference")]
    data = write_variant(
        tmp_path / "plain", train, [plain(r) for r in rows_of(workspace, "preference", "test")]
    )
    with pytest.raises(
        ValueError,
        match=rf"^{re.escape(str(data))}: 22 of the 22 rows of the train split are malformed: "
        r"row 0 \(id p0-0\): prompt: plain text 'What is .*\(the conversational format\)$",
    ):
        reward(reward_config(workspace, "plain", data=str(data)))


def test_splits_of_different_schemas_are_named_both(workspace, tmp_path):
    """A conversational train split beside a plain-text test split: datasets said only 'An
    error occurred while generating the dataset'."""
    from training.common import load_splits

    test = [
        {**r, "prompt": r["prompt"][0]["content"]} for r in rows_of(workspace, "preference", "test")
    ]
    data = write_variant(tmp_path / "mixed", rows_of(workspace, "preference"), test)
    with pytest.raises(
        ValueError,
        match=rf"^{re.escape(str(data))}: {re.escape(str(data / 'train.parquet'))} and "
        rf"{re.escape(str(data / 'test.parquet'))} have different schemas \(prompt: "
        r"list<element: struct<.*>> vs string\); every split must have the same columns",
    ):
        load_splits(data)


def test_pairs_that_teach_nothing_are_left_out_and_counted(workspace, tmp_path):
    """An empty answer, no answer, a user turn as the answer, a prompt of a system turn alone
    or with an empty question, an empty prompt list: each trained silently (or, for DPO's empty
    prompt, failed inside TRL after both models loaded)."""
    from training.dpo import main as dpo
    from training.reward import main as reward

    emptied = {
        0: {"chosen": message("assistant", "")},
        1: {"chosen": []},
        2: {"rejected": message("user", "hi there")},
        3: {"prompt": message("system", "Be brief.")},
        4: {"prompt": message("user", "  ")},
        5: {"prompt": []},
    }
    data = preference_variant(
        workspace, tmp_path / "empty", lambda i, row: row.update(emptied.get(i, {}))
    )
    rows = rows_of(workspace, "preference")
    total = len(rows)
    for run, config in ((reward, reward_config), (dpo, dpo_config)):
        lineage = read_lineage(run(config(workspace, f"empty-{run.__module__}", data=str(data))))
        dropped = lineage["inputs"]["dropped"]
        assert dropped["answer_without_assistant_text"] == {"train": 3, "test": 0}
        assert dropped["prompt_without_user_text"] == {"train": 3, "test": 0}
        ties = dropped["chosen_equals_rejected"]["train"]
        assert lineage["inputs"]["rows_used"] == total - 6 - ties
        assert lineage["metrics"]["dropped_prompt_without_user_text"] == 3
        # named in lineage, so a forward trace does not claim the checkpoint learnt them
        left_out = set(lineage["inputs"]["row_ids_left_out"])
        assert {str(rows[i]["id"]) for i in emptied} <= left_out
        assert len(left_out) == 6 + ties


def test_malformed_prompts_stop_ppo_and_grpo_before_a_model_loads(workspace, tmp_path, no_model):
    from training.grpo import main as grpo
    from training.ppo import main as ppo

    train = rows_of(workspace, "prompt")
    train[2]["prompt"] = None
    like = workspace / "data" / "prompt" / "train.parquet"
    data = write_variant(tmp_path / "null", train, like=like)
    named = rf"^{re.escape(str(data))}: 1 of the {len(train)} rows of the train split are "
    named += rf"malformed: row 2 \(id {train[2]['id']}\): prompt: null; prompt must be a list"
    with pytest.raises(ValueError, match=named):
        ppo(ppo_config(workspace, "ppo-null", data=str(data)))
    with pytest.raises(ValueError, match=named):
        grpo(grpo_config(workspace, "grpo-null", data=str(data)))
    texts = [
        {**row, "prompt": row["prompt"][-1]["content"]} for row in rows_of(workspace, "prompt")
    ]
    plain = write_variant(tmp_path / "plain", texts)
    quoted = re.escape(repr(texts[0]["prompt"])[:37])
    with pytest.raises(
        ValueError, match=rf"row 0 \(id {texts[0]['id']}\): prompt: plain text {quoted}"
    ):
        ppo(ppo_config(workspace, "ppo-plain", data=str(plain)))


def test_prompts_without_a_question_are_left_out_of_ppo_and_grpo_and_counted(
    workspace, tmp_path, monkeypatch
):
    """An empty prompt list gave GRPO an IndexError mid-training; PPO sampled from it."""
    import training.ppo
    from training.grpo import training_prompts
    from training.ppo import main as ppo
    from training.tokenizer import load_tokenizer

    train = rows_of(workspace, "prompt")
    for index in range(0, len(train), 3):
        train[index]["prompt"] = [[], message("system", "Be brief."), message("user", "")][
            index % 9 // 3
        ]
    like = workspace / "data" / "prompt" / "train.parquet"
    data = write_variant(tmp_path / "empty", train, like=like)
    emptied = len(range(0, len(train), 3))

    tokenizer = to_transformers(load_tokenizer(workspace / "tokenizer"))
    kept, stats = training_prompts(
        grpo_config(workspace, "unused", data=str(data), max_length=128), tokenizer
    )
    assert stats["prompt_without_user_text"] == emptied and stats["prompts_too_long"] == 0
    assert len(kept) == stats["prompts"] == len(train) - emptied
    assert all(any(m["role"] == "user" and m["content"] for m in p) for p in kept["prompt"])

    class Stop(Exception):
        pass

    seen = []

    def recording(setup):
        seen.append(len(setup.prompts))
        raise Stop

    monkeypatch.setitem(training.ppo.OPTIMIZERS, "trl", recording)
    with pytest.raises(Stop):
        ppo(ppo_config(workspace, "ppo-empty", data=str(data), max_length=128))
    assert seen == [len(train) - emptied]


def test_ppo_lineage_names_the_prompts_it_left_out(workspace, tmp_path):
    """PPO's lineage hashed the whole prompt split as if it trained on every prompt; the
    prompts it skips (no user's text, longer than max_length) must be named, as SFT, reward,
    DPO and GRPO name theirs, so a forward trace does not claim the checkpoint learnt them."""
    from training.ppo import main as ppo

    train = rows_of(workspace, "prompt")
    train[0]["prompt"] = message("user", "")
    train[1]["prompt"] = message("user", " ".join(["word"] * 300))  # past max_length 128
    like = workspace / "data" / "prompt" / "train.parquet"
    data = write_variant(tmp_path / "skips", train, like=like)

    lineage = read_lineage(ppo(ppo_config(workspace, "ppo-skips", data=str(data), max_length=128)))
    inputs = lineage["inputs"]
    assert inputs["row_ids_left_out"] == sorted({str(train[0]["id"]), str(train[1]["id"])})
    assert inputs["rows_used"] == len(train) - 2 == lineage["metrics"]["prompts"]
    assert inputs["row_ids_used_sha256"] != inputs["row_ids_sha256"]
    assert lineage["metrics"]["prompts_too_long"] == 1


# --- DPO pairs whose prompt fills max_length (D3) ---------------------------------------------


def prompt_lengths(workspace: Path, rows: list[dict]) -> list[int]:
    from training.common import load_training_tokenizer

    tokenizer = load_training_tokenizer(workspace / "sft")
    rendered = tokenizer.apply_chat_template(
        [r["prompt"] for r in rows], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return [len(ids) for ids in rendered["input_ids"]]


def test_dpo_drops_and_counts_pairs_whose_prompt_fills_max_length(workspace, tmp_path, monkeypatch):
    """TRL drops them inside the trainer (keep_start truncation would leave no answer token):
    the log said they were truncated and lineage counted them among the rows used."""
    import training.dpo
    from training.dpo import main as dpo

    long = "word " * 80
    data = preference_variant(
        workspace,
        tmp_path / "long",
        lambda i, row: row.update(prompt=message("user", long)) if i % 3 == 0 else None,
    )
    original = rows_of(workspace, "preference")
    pairs = [i for i, r in enumerate(original) if r["chosen"] != r["rejected"]]
    assert max(prompt_lengths(workspace, original)) < 64  # the unchanged prompts fit
    changed_rows = pq.read_table(data / "train.parquet").to_pylist()[::3]
    assert min(prompt_lengths(workspace, changed_rows)) >= 64  # and the changed ones fill it
    trainers = []

    class Recording(training.dpo.DPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            trainers.append(self)

    monkeypatch.setattr(training.dpo, "DPOTrainer", Recording)
    lineage = read_lineage(dpo(dpo_config(workspace, "dpo-long", data=str(data))))
    changed = sum(1 for i in pairs if i % 3 == 0)  # ties are dropped first, as before
    assert lineage["inputs"]["dropped"]["prompt_fills_max_length"] == {"train": changed, "test": 0}
    assert lineage["inputs"]["rows_used"] == len(pairs) - changed
    assert lineage["metrics"]["pairs"] == len(trainers[0].train_dataset)  # what TRL trained on


def test_dpo_with_every_prompt_filling_max_length_is_refused_before_a_model_loads(
    workspace, tmp_path, no_model
):
    from training.dpo import main as dpo

    data = preference_variant(
        workspace,
        tmp_path / "all-long",
        lambda i, row: row.update(prompt=message("user", "w " * 80)),
    )
    with pytest.raises(
        ValueError,
        match=rf"^{re.escape(str(data))}: no usable preference pairs left in the train split "
        r"\(dropped: 2 chosen equals rejected, 20 prompt fills max length\); the prompts "
        r"left all fill max_length=64",
    ):
        dpo(dpo_config(workspace, "dpo-all-long", data=str(data)))


# --- a reward model from scratch fingerprints its tokenizer (D7) ------------------------------


def test_a_reward_model_from_scratch_trains_again_when_its_tokenizer_is_rebuilt(
    workspace, tmp_path
):
    from training.reward import main as reward
    from training.tokenizer import load_tokenizer

    tokenizer_dir = tmp_path / "tokenizer"
    shutil.copytree(workspace / "tokenizer", tokenizer_dir)
    config = reward_config(
        workspace, "reward-scratch", init_from=None, tokenizer=str(tokenizer_dir), model=TINY
    )
    first = read_lineage(reward(config))
    assert read_lineage(reward(config)) == first  # unchanged: nothing to train
    rebuilt = train_tokenizer(["other words entirely"] * 50, TokenizerConfig(vocab_size=300))
    save_tokenizer(rebuilt, tokenizer_dir)
    assert len(to_transformers(load_tokenizer(tokenizer_dir))) != len(
        to_transformers(load_tokenizer(workspace / "tokenizer"))
    )
    again = read_lineage(reward(config))
    assert again["fingerprint"] != first["fingerprint"]
    assert again["inputs"]["tokenizer_sha256"] != first["inputs"]["tokenizer_sha256"]


# --- a run killed after its last save resumes to publish it, not to train past it (D8) ---------


def resumable(workspace: Path, stage: str):
    """The stage's entry point and a config that saves at its last step (2) and would log
    only every 5 steps: the last step is logged anyway, so the restored run's loss is known."""
    from training.causal_lm import CausalLMConfig
    from training.causal_lm import main as causal_lm
    from training.dpo import main as dpo
    from training.grpo import main as grpo
    from training.reward import main as reward
    from training.sft import SFTStageConfig
    from training.sft import main as sft

    name = f"resume-{stage}"
    steps = dict(max_steps=2, save_steps=2, logging_steps=5)
    if stage == "pretrain":
        values = {**common(workspace, name, **steps), "init_from": None}
        data, tokenizer = workspace / "data" / "pretrain", workspace / "tokenizer"
        config = CausalLMConfig(
            **values, data=str(data), tokenizer=str(tokenizer), model=TINY, warmup_steps=0
        )
        return causal_lm, config
    if stage == "sft":
        values = {**common(workspace, name, **steps), "init_from": None}
        config = SFTStageConfig(
            **values,
            data=str(workspace / "data" / "sft"),
            tokenizer=str(workspace / "tokenizer"),
            model=TINY,
            warmup_steps=0,
        )
        return sft, config
    if stage == "reward":
        return reward, reward_config(workspace, name, **steps)
    if stage == "dpo":
        return dpo, dpo_config(workspace, name, **steps)
    return grpo, grpo_config(workspace, name, **steps)


@pytest.mark.parametrize("stage", ["pretrain", "sft", "reward", "dpo", "grpo"])
def test_a_run_killed_after_its_last_save_publishes_that_save_without_training_on(
    workspace, monkeypatch, stage
):
    """transformers checks max_steps only after a step: resumed from checkpoint-2 of a 2-step
    run it trained step 3, changing the weights, the loss in lineage and the curve."""
    import training.causal_lm
    import training.dpo
    import training.grpo
    import training.reward
    import training.sft

    run, config = resumable(workspace, stage)
    out = Path(config.output_dir)
    first = run(config)
    trained = read_lineage(first)
    curve = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    saved = load_file(str(out / "runs" / "checkpoint-2" / "model.safetensors"))
    optimizer = first / "optimizer.safetensors"
    moments = load_file(str(optimizer)) if optimizer.exists() else None
    shutil.rmtree(first)  # killed after the save of step 2, before publishing

    again = run(config)
    lineage = read_lineage(again)
    assert (
        [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
        == [r["step"] for r in curve]
        == [2]
    )
    assert lineage["metrics"]["train_loss"] == pytest.approx(trained["metrics"]["train_loss"])
    published = load_file(str(again / "model.safetensors"))
    assert all(torch.equal(saved[name], published[name]) for name in saved)
    if stage == "pretrain":  # the decay phase continues this optimizer: it is published too
        restored = load_file(str(again / "optimizer.safetensors"))
        assert moments and all(torch.equal(moments[k], restored[k]) for k in moments)
    state = json.loads((out / "runs" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and not (out / "runs" / "checkpoint-3").exists()

    # published now: an unchanged re-run loads no model at all
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for a run with nothing to train")

    for module, name in (
        (training.causal_lm, "build_causal_lm"),
        (training.sft, "build_causal_lm"),
        (training.reward, "build_reward_model"),
        (training.dpo, "build_causal_lm"),
        (training.grpo, "reward_functions"),
        (training.grpo, "load_training_tokenizer"),
    ):
        monkeypatch.setattr(module, name, refuse)
    assert run(config) == again and read_lineage(again) == lineage


@pytest.mark.parametrize("stage", ["grpo", "rloo"])
def test_a_reward_checkpoint_as_the_group_stages_policy_is_refused_before_any_work(
    workspace, no_model, stage
):
    """TRL loads the policy from the path itself, so it failed mid-run: 'LlamaForSequence
    Classification' object has no attribute 'generate'."""
    from training.checkpoint import CheckpointError
    from training.grpo import main as grpo
    from training.rloo import RLOOStageConfig
    from training.rloo import main as rloo

    reward = workspace / "reward"
    config = grpo_config(workspace, f"{stage}-reward-policy", init_from=str(reward))
    if stage == "rloo":
        config = RLOOStageConfig(**vars(config))
    with pytest.raises(
        CheckpointError,
        match=rf"^{re.escape(str(reward))}: not a causal language model \(config.json names "
        r"\['LlamaForSequenceClassification'\]",
    ):
        (grpo if stage == "grpo" else rloo)(config)
    assert not Path(config.output_dir).exists()
