"""PPO, GRPO and RLOO on the tiny preset: real rollouts and updates against a reward model whose
optimum is known (it scores the share of "target" tokens in the sequence), lineage, and the bad
inputs that must fail before any training (no reward model, a reward model from another
tokenizer, a non-finite loss)."""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from assets.resources import SAMPLES
from curation.datasets import ExportConfig, export, prompt_rows
from curation.ingest import ingest
from curation.synthetic import generate_tasks
from training.checkpoint import publish, read_lineage
from training.models import ModelConfig, build_causal_lm, llama_config
from training.recipe import RecipeError, build, read_recipe
from training.rewards import (
    CheckableAnswerReward,
    RewardModelScorer,
    TokenizerMismatchError,
    check_same_tokenizer,
    synthetic_answer_key,
)
from training.tokenizer import TokenizerConfig, corpus_texts, to_transformers, train_tokenizer

TINY = ModelConfig(preset="tiny", max_position_embeddings=256)


@functools.cache
def _bpe(vocab_size: int) -> str:
    texts = corpus_texts(SAMPLES / "pretrain.jsonl")
    return train_tokenizer(texts, TokenizerConfig(vocab_size=vocab_size)).to_str()


def make_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer

    return to_transformers(Tokenizer.from_str(_bpe(vocab_size)))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """A tiny model's ops are too small to split: on a shared 2-core machine a second thread
    only adds contention (measured: 0.2 s vs 3-6 s per PPO update)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def token_share_reward_model(tokenizer, targets: list[int]):
    """A LlamaForSequenceClassification whose score grows with the share of ``targets`` among
    the sequence's tokens: embeddings mark target tokens in one dimension, layer 0 attends
    uniformly over the prefix (zero queries and keys) and writes the mean mark into another
    dimension, every other block adds nothing, and the score head reads that dimension."""
    from transformers import LlamaForSequenceClassification

    model = LlamaForSequenceClassification(llama_config(TINY, tokenizer, num_labels=1))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        embeddings = model.model.embed_tokens.weight
        embeddings[:, 0] = 4.0
        embeddings[list(targets), 1] = 4.0
        for layer in model.model.layers:
            layer.input_layernorm.weight.fill_(1.0)
            layer.post_attention_layernorm.weight.fill_(1.0)
        model.model.norm.weight.fill_(1.0)
        attention = model.model.layers[0].self_attn
        attention.v_proj.weight[0, 1] = 1.0
        attention.o_proj.weight[2, 0] = 1.0
        model.score.weight[0, 2] = 1.0
    return model


def unused_tokens(tokenizer, prompt_data: Path) -> list[int]:
    """Ordinary tokens no rendered prompt contains: paying for these rewards only what the
    policy writes, so the score does not swing with which prompts a batch drew."""
    from training.common import load_splits

    rows = load_splits(prompt_data)["train"]["prompt"]
    rendered = tokenizer.apply_chat_template(
        list(rows), add_generation_prompt=True, tokenize=True, return_dict=False
    )
    used = {token for ids in rendered for token in ids} | set(tokenizer.all_special_ids)
    return [token for token in range(len(tokenizer)) if token not in used]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return build_workspace(tmp_path_factory.mktemp("rl"))


def build_workspace(root: Path) -> Path:
    """Prompts from the embedded synthetic tasks, a tiny random policy as the "SFT" checkpoint
    and the token-share reward model, both published as the stages expect them."""
    # 400 prompts, as the sample file had before it grew: with all 8,000 nearly every token of
    # the test's 512-token vocabulary occurs in some prompt, and none is left to pay for.
    chats = ingest("jsonl", [SAMPLES / "synthetic_chat.jsonl"]).conversations.head(400)
    export("prompt", prompt_rows(chats), root / "data", ExportConfig(eval_fraction=0.1))
    tokenizer = make_tokenizer()
    policy = build_causal_lm(TINY, tokenizer)
    publish(policy, tokenizer, root / "sft", {"stage": "sft", "parent_checkpoint": None})
    targets = unused_tokens(tokenizer, root / "data" / "prompt")[::2]
    (root / "targets.json").write_text(json.dumps(targets))
    reward = token_share_reward_model(tokenizer, targets)
    publish(reward, tokenizer, root / "reward", {"stage": "reward", "parent_checkpoint": "sft"})
    return root


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "model.safetensors"))


def records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_the_toy_reward_model_pays_for_target_tokens(workspace):
    scorer = RewardModelScorer(workspace / "reward")
    tokenizer = scorer.tokenizer
    targets = json.loads((workspace / "targets.json").read_text())
    target_text = tokenizer.decode(targets[20:26])
    other_text = "Add 51 and 99."  # prompt text: none of its tokens is a target
    prompt = [{"role": "user", "content": "Say something."}]
    low, high = scorer([prompt, prompt], [other_text, target_text])
    assert high > low + 0.5


def test_checkable_answer_reward_grades_synthetic_answers():
    tasks = generate_tasks(10, seed=0)
    reward = CheckableAnswerReward(synthetic_answer_key(10, seed=0))
    prompts = [[{"role": "user", "content": t.prompt}] for t in tasks]
    right = [[{"role": "assistant", "content": t.answer}] for t in tasks]
    wrong = [[{"role": "assistant", "content": t.answer + "x"}] for t in tasks]
    assert reward(prompts, right) == [1.0] * 10
    assert reward(prompts, wrong) == [0.0] * 10
    unknown = [[{"role": "user", "content": "Write a poem."}]]
    assert reward(unknown, ["roses"]) == [None]
    upper = next(t for t in tasks if t.kind == "uppercase")
    assert reward([upper.prompt], [upper.answer.lower()]) == [0.0]  # case decides this kind
    # an answer column in the dataset wins over the key
    assert reward(unknown, ["roses"], answer=["Roses."], task_kind=[""]) == [1.0]


def test_a_reward_model_from_another_tokenizer_is_refused():
    ours, theirs = make_tokenizer(512), make_tokenizer(600)
    check_same_tokenizer(ours, make_tokenizer(512), "same")
    with pytest.raises(TokenizerMismatchError, match="rm-dir: .*vocabulary"):
        check_same_tokenizer(ours, theirs, "rm-dir")
    templated = make_tokenizer(512)
    templated.chat_template = "{{ messages }}"
    with pytest.raises(TokenizerMismatchError, match="chat template"):
        check_same_tokenizer(ours, templated, "rm-dir")


def target_share(checkpoint: Path, prompt_data: Path, targets: list[int], n: int = 64) -> float:
    """Share of target tokens in sampled responses to the first ``n`` prompts (seeded): the
    quantity the toy reward model pays for, measured outside the training loop."""
    from training.common import load_splits, load_training_tokenizer

    tokenizer = load_training_tokenizer(checkpoint)
    tokenizer.padding_side = "left"
    model = build_causal_lm(ModelConfig(), tokenizer, path=str(checkpoint)).eval()
    prompts = list(load_splits(prompt_data)["train"]["prompt"])[:n]
    texts = [
        tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(0)
    with torch.no_grad():
        output = model.generate(
            **encoded,
            max_new_tokens=8,
            do_sample=True,
            top_k=0,
            temperature=1.0,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=None,
        )
    new = output[:, encoded["input_ids"].shape[1] :]
    return torch.isin(new, torch.tensor(targets)).float().mean().item()


def stage_values(workspace: Path, name: str, **overrides) -> dict:
    values = dict(
        output_dir=str(workspace / name),
        data=str(workspace / "data" / "prompt"),
        init_from=str(workspace / "sft"),
        reward_model=str(workspace / "reward"),
        per_device_train_batch_size=16,
        learning_rate=1e-2,
        max_length=64,
        save_steps=100,
        logging_steps=1,
        use_cpu=True,
        inputs={"asset": "prompt_dataset"},
    )
    values.update(overrides)
    return values


def ppo_config(workspace: Path, name: str, **overrides):
    from training.ppo import PPOStageConfig

    values = dict(max_steps=12, response_length=8, kl_coef=0.01, num_ppo_epochs=4, temperature=1.0)
    return PPOStageConfig(**stage_values(workspace, name, **{**values, **overrides}))


def test_ppo_raises_the_reward_and_reports_kl_generation_share_and_lineage(workspace):
    from training.ppo import main as ppo

    checkpoint = ppo(ppo_config(workspace, "ppo"))
    rows = records(workspace / "ppo")
    assert len(rows) == 12
    scores = [r["objective/scores"] for r in rows]
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3 + 0.3, scores
    targets = json.loads((workspace / "targets.json").read_text())
    before = target_share(workspace / "sft", workspace / "data" / "prompt", targets)
    after = target_share(checkpoint, workspace / "data" / "prompt", targets)
    assert after > before + 0.15, (before, after)
    assert all("objective/kl" in r for r in rows) and rows[-1]["objective/kl"] > 0
    assert all(0 < r["generation_share"] < 1 and r["episodes_per_s"] > 0 for r in rows)
    old, new = weights(workspace / "sft"), weights(checkpoint)
    assert all(not torch.equal(old[n], new[n]) for n in old)
    lineage = read_lineage(checkpoint)
    assert lineage["stage"] == "ppo"
    assert lineage["parent_checkpoint"] == str(workspace / "sft")
    assert lineage["inputs"]["reward_model"] == str(workspace / "reward")
    assert lineage["inputs"]["asset"] == "prompt_dataset"
    assert lineage["metrics"]["score_last"] > lineage["metrics"]["score_first"]
    assert 0 < lineage["metrics"]["generation_share"] < 1


def adam_steps(save: Path) -> set[float]:
    state = torch.load(save / "optimizer.pt", weights_only=True)["state"]
    return {float(s["step"]) for s in state.values()}


def test_a_killed_ppo_run_continues_from_its_last_save(workspace, monkeypatch):
    """TRL's PPO loop cannot resume and saves the policy alone; the stage saves the value
    model beside it and continues: weights, optimizer, schedule and step count."""
    import training.ppo
    from training.ppo import main as ppo

    config = ppo_config(workspace, "ppo-resumed", max_steps=4, save_steps=2)
    out, runs = workspace / "ppo-resumed", workspace / "ppo-resumed" / "runs"
    first = ppo(config)
    unbroken = records(out)
    lineage = read_lineage(first)
    assert (runs / "checkpoint-2" / "value" / "model.safetensors").is_file()
    assert (runs / "fingerprint.txt").read_text().strip() == lineage["fingerprint"]
    unbroken_adam = adam_steps(runs / "checkpoint-4")

    # Killed between the save at update 2 and the one at update 4.
    for gone in (runs / "checkpoint-4", first):
        shutil.rmtree(gone)
    started = []

    def recording(setup):
        started.append(
            {
                "policy": {k: v.clone() for k, v in setup.policy.state_dict().items()},
                "value": {k: v.clone() for k, v in setup.value_model.state_dict().items()},
            }
        )
        return training.ppo.TRLPolicyOptimizer(setup)

    monkeypatch.setitem(training.ppo.OPTIMIZERS, "trl", recording)
    resumed = ppo(config)

    save = runs / "checkpoint-2"
    for name, saved in [("policy", weights(save)), ("value", weights(save / "value"))]:
        assert saved.keys() <= started[0][name].keys()
        assert all(torch.equal(started[0][name][k], saved[k]) for k in saved), name
    rows = records(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # two updates trained, numbered on
    assert rows[:2] == unbroken[:2]  # the records before the save are kept as they were
    # The schedule continues (a fresh one would start at update 1's rate again) and so does
    # AdamW: its step count is the unbroken run's, not the resumed process's alone.
    assert [r["lr"] for r in rows[2:]] == [r["lr"] for r in unbroken[2:]]
    assert rows[2]["lr"] != unbroken[0]["lr"]
    assert adam_steps(runs / "checkpoint-4") == unbroken_adam
    relineage = read_lineage(resumed)
    assert relineage["started_at"] == lineage["started_at"]
    assert relineage["metrics"]["updates"] == 4
    assert weights(resumed).keys() == weights(runs / "checkpoint-4").keys()

    # Killed after the last save, before publishing: that save is published, nothing trains.
    shutil.rmtree(resumed)
    last = weights(runs / "checkpoint-4")
    again = ppo(config)
    assert records(out) == rows
    published = weights(again)
    assert all(torch.equal(published[k], last[k]) for k in last)


@pytest.mark.parametrize("stage", ["grpo", "rloo"])
def test_group_stages_train_with_the_checkable_answer_and_reward_model(workspace, stage):
    from training.grpo import GRPOStageConfig
    from training.grpo import main as grpo
    from training.rloo import RLOOStageConfig
    from training.rloo import main as rloo

    config_class, run = {"grpo": (GRPOStageConfig, grpo), "rloo": (RLOOStageConfig, rloo)}[stage]
    config = config_class(
        **stage_values(
            workspace,
            stage,
            max_steps=4,
            num_generations=4,
            max_completion_length=8,
            reward_weights={"reward_model": 1.0, "checkable_answer": 1.0},
            answer_key_tasks=500,  # the first 400 rows span ~415 tasks (held-out ones skipped)
        )
    )
    checkpoint = run(config)
    rows = [r for r in records(workspace / stage) if "reward" in r]
    assert len(rows) == 4
    # the checkable reward reached TRL for every completion (0.0 or 1.0, never "not applicable")
    assert all(r["rewards/checkable_answer/mean"] >= 0 for r in rows)
    assert all(r["rewards/reward_model/std"] > 0 for r in rows)
    assert rows[-1]["kl"] > 0
    old, new = weights(workspace / "sft"), weights(checkpoint)
    assert all(not torch.equal(old[n], new[n]) for n in old)
    lineage = read_lineage(checkpoint)
    assert lineage["stage"] == stage
    assert lineage["parent_checkpoint"] == str(workspace / "sft")
    assert lineage["inputs"]["reward_model"] == str(workspace / "reward")
    # the reward model it scored with, pinned as the run started (a retrain at that path is
    # another model)
    from training.runs import lineage_sha256

    pin = lineage["inputs"]["reward_model_lineage_sha256"]
    assert pin == lineage_sha256(workspace / "reward") and pin is not None
    # every embedded synthetic prompt got its answer back from the answer key
    from training.common import load_splits

    assert lineage["metrics"]["prompts_with_answer"] == len(
        load_splits(workspace / "data" / "prompt")["train"]
    )


def test_ppo_without_a_reward_model_fails_before_any_work(workspace):
    from training.ppo import PPOStageConfig

    section = dict(read_recipe("recipes/test-cpu.yaml")["ppo"])
    section.update(data=str(workspace / "data" / "prompt"), init_from=str(workspace / "sft"))
    with pytest.raises(RecipeError, match="reward_model: PPO needs a reward checkpoint"):
        build(PPOStageConfig, section, "recipes/test-cpu.yaml: ppo")
    assert not (workspace / "ppo-none").exists()


def test_recipe_sections_build(workspace):
    from training.grpo import GRPOStageConfig
    from training.ppo import PPOStageConfig
    from training.rloo import RLOOStageConfig

    paths = {
        "data": str(workspace / "data" / "prompt"),
        "init_from": str(workspace / "sft"),
        "reward_model": str(workspace / "reward"),
    }
    for recipe in ("recipes/test-cpu.yaml", "recipes/tiny-cpu.yaml"):
        loaded = read_recipe(recipe)
        stages = {"ppo": PPOStageConfig, "grpo": GRPOStageConfig, "rloo": RLOOStageConfig}
        for stage, cls in stages.items():
            section = {**loaded[stage], **paths}
            if stage != "ppo" and "reward_model" not in section.get("reward_weights", {}):
                section.pop("reward_model")
            build(cls, section, f"{recipe}: {stage}")


@pytest.mark.parametrize("stage", ["ppo", "grpo"])
def test_a_reward_model_from_another_tokenizer_stops_the_stage_before_training(workspace, stage):
    other = make_tokenizer(600)
    foreign = workspace / "foreign-reward"
    if not foreign.exists():
        model = token_share_reward_model(other, [10, 11])
        publish(model, other, foreign, {"stage": "reward"})
    out = workspace / f"{stage}-foreign"
    if stage == "ppo":
        from training.ppo import main as run

        config = ppo_config(workspace, out.name, reward_model=str(foreign))
    else:
        from training.grpo import GRPOStageConfig
        from training.grpo import main as run

        config = GRPOStageConfig(
            **stage_values(
                workspace,
                out.name,
                reward_model=str(foreign),
                reward_weights={"reward_model": 1.0},
                max_steps=2,
            )
        )
    with pytest.raises(TokenizerMismatchError, match=f"{foreign}: .*different tokenizer"):
        run(config)
    assert not (out / "runs").exists() and not (out / "checkpoint").exists()


def test_a_non_finite_reward_stops_ppo_naming_the_step_and_publishes_nothing(workspace):
    from training.ppo import main as ppo

    broken = workspace / "nan-reward"
    if not broken.exists():
        tokenizer = make_tokenizer()
        model = token_share_reward_model(tokenizer, [10, 11])
        with torch.no_grad():
            model.score.weight.fill_(float("nan"))
        publish(model, tokenizer, broken, {"stage": "reward"})
    with pytest.raises(FloatingPointError, match="non-finite objective/scores.* at step 1"):
        ppo(ppo_config(workspace, "ppo-nan", reward_model=str(broken), max_steps=3))
    assert not (workspace / "ppo-nan" / "checkpoint").exists()
    assert len(records(workspace / "ppo-nan")) == 1


def test_ppo_ptx_adds_a_pretraining_loss(workspace):
    from curation.datasets import pretrain_rows
    from curation.readers.text import read_text_corpus
    from training.ppo import main as ppo

    texts = read_text_corpus([SAMPLES / "pretrain.jsonl"]).texts.head(100)
    export("pretrain", pretrain_rows(texts), workspace / "data", ExportConfig(eval_fraction=0.05))
    pretrain = str(workspace / "data" / "pretrain")
    config = ppo_config(workspace, "ppo-ptx", max_steps=2, ptx_coef=0.5, ptx_data=pretrain)
    checkpoint = ppo(config)
    rows = records(workspace / "ppo-ptx")
    assert all(r["loss/ptx_avg"] > 1.0 for r in rows)  # a random tiny LM: loss near log(512)
    assert read_lineage(checkpoint)["inputs"]["ptx_data"] == pretrain
    with pytest.raises(ValueError, match="ptx_data"):
        ppo_config(workspace, "ppo-ptx2", ptx_coef=0.5)


def test_each_rank_scores_with_the_reward_model_on_its_own_gpu(workspace, monkeypatch):
    """A callable reward's model is not moved by TRL: on rank 1 of a node it must go to
    cuda:1, not to the first GPU with every other rank's copy (checked without a GPU by
    recording where the scorer is asked to go)."""
    import training.grpo
    from training.grpo import GRPOStageConfig, reward_functions

    asked = []

    class Recorder:
        def __init__(self, path, max_length, device):
            asked.append(device)
            self.tokenizer = make_tokenizer()

    monkeypatch.setattr(training.grpo, "RewardModelScorer", Recorder)
    monkeypatch.setattr(training.grpo, "check_same_tokenizer", lambda *args: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    values = stage_values(
        workspace, "grpo-rank", reward_model="rm", reward_weights={"reward_model": 1.0}
    )
    reward_functions(GRPOStageConfig(**{**values, "use_cpu": False}), make_tokenizer())
    reward_functions(GRPOStageConfig(**{**values, "use_cpu": True}), make_tokenizer())
    assert asked == ["cuda:1", "cpu"]


@pytest.mark.parametrize("bf16", [True, False])
def test_ppo_trains_in_the_precision_the_recipe_asks(workspace, monkeypatch, bf16):
    """TRL's PPOTrainer builds its own Accelerator, which never saw the recipe's bf16."""
    import training.ppo
    from training.ppo import main as ppo

    built = []

    def recording(setup):
        built.append(training.ppo.TRLPolicyOptimizer(setup))
        return built[-1]

    monkeypatch.setitem(training.ppo.OPTIMIZERS, "trl", recording)
    ppo(ppo_config(workspace, f"ppo-bf16-{bf16}", bf16=bf16, max_steps=1, resume=False))
    assert built[0].trainer.accelerator.mixed_precision == ("bf16" if bf16 else "no")
    assert "ACCELERATE_MIXED_PRECISION" not in os.environ  # put back after


def test_ppo_timings_leave_out_each_processs_warm_up_update():
    from training.ppo import summarise

    records = [
        {"step": step, "objective/scores": 0.0, "objective/kl": 0.0, "episodes_per_s": eps}
        for step, eps in [(1, 1.0), (2, 10.0), (3, 2.0), (4, 10.0)]
    ]
    assert summarise(records)["episodes_per_s"] == pytest.approx(22 / 3)
    # resumed after update 2: update 3 loaded the models again
    assert summarise(records, resumed_at=2)["episodes_per_s"] == 10.0
    assert summarise(records, resumed_at=2)["updates"] == 4
