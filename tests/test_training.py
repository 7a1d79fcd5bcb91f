"""Training stages on the tiny preset: real steps that change every parameter and lower the loss,
the WSD schedule's shape, resume, lineage, and bad recipes and checkpoints."""

import hashlib
import json
import re
import shutil
from pathlib import Path

import polars as pl
import pytest
import torch
from safetensors.torch import load_file
from torchrun_support import torchrun

from assets.resources import SAMPLES
from curation.datasets import ExportConfig, export, pretrain_rows, sft_rows
from curation.ingest import ingest
from curation.readers.text import read_text_corpus
from training.causal_lm import CausalLMConfig
from training.causal_lm import main as causal_lm
from training.checkpoint import CheckpointError, read_lineage, verify
from training.recipe import RecipeError, build, read_recipe
from training.reporting import read_metrics
from training.runs import last_run_checkpoint
from training.sft import SFTStageConfig
from training.sft import main as sft
from training.tokenizer import (
    TokenizerConfig,
    corpus_texts,
    load_tokenizer,
    save_tokenizer,
    to_transformers,
    train_tokenizer,
)

TINY = {"preset": "tiny", "max_position_embeddings": 256}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("training")
    texts = read_text_corpus([SAMPLES / "pretrain.jsonl"]).texts.head(600)
    export("pretrain", pretrain_rows(texts), root / "data", ExportConfig(eval_fraction=0.05))
    # The first 400 tasks (the file's size before it grew) keep tokenizing and loading quick.
    chats = ingest("jsonl", [SAMPLES / "synthetic_chat.jsonl"]).conversations.head(400)
    export("sft", sft_rows(chats), root / "data", ExportConfig(eval_fraction=0.1))
    tokenizer = train_tokenizer(
        corpus_texts(SAMPLES / "pretrain.jsonl"), TokenizerConfig(vocab_size=512)
    )
    save_tokenizer(tokenizer, root / "tokenizer")
    return root


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "model.safetensors"))


def losses(run_dir: Path) -> list[float]:
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def pretrain_config(workspace: Path, name: str, **overrides) -> CausalLMConfig:
    values = dict(
        output_dir=str(workspace / name),
        data=str(workspace / "data" / "pretrain"),
        tokenizer=str(workspace / "tokenizer"),
        model=build(__import__("training.models").models.ModelConfig, TINY, "model"),
        max_steps=16,
        per_device_train_batch_size=8,
        max_length=64,
        learning_rate=3e-3,
        warmup_steps=2,
        save_steps=8,
        logging_steps=2,
        use_cpu=True,
        inputs={"asset": "pretrain_mixture"},
    )
    values.update(overrides)
    return CausalLMConfig(**values)


@pytest.fixture(scope="module")
def stable(workspace) -> Path:
    return causal_lm(pretrain_config(workspace, "stable"))


def test_pretraining_lowers_the_loss_and_writes_a_complete_checkpoint(workspace, stable):
    from training.common import load_training_tokenizer
    from training.models import build_causal_lm

    verify(stable)
    curve = losses(workspace / "stable")
    assert curve[-1] < curve[0] - 0.5
    # Against the seeded initialisation the stage started from: every tensor moved.
    config = pretrain_config(workspace, "stable")
    initial = build_causal_lm(config.model, load_training_tokenizer(config.tokenizer))
    trained = weights(stable)
    start = initial.state_dict()  # the tied lm_head is saved once, as the embedding
    unchanged = [n for n, p in trained.items() if torch.equal(p, start[n])]
    assert len(trained) > 10 and unchanged == []
    lineage = read_lineage(stable)
    assert lineage["stage"] == "pretrain"
    assert lineage["inputs"]["asset"] == "pretrain_mixture"
    assert len(lineage["inputs"]["row_ids_sha256"]) == 64
    assert lineage["parent_checkpoint"] is None
    assert lineage["recipe"]["max_steps"] == 16
    # 16 steps of 8 blocks: the share of the train split's blocks the run went through
    metrics = lineage["metrics"]
    assert metrics["epochs"] == pytest.approx(16 * 8 / metrics["blocks"], abs=1e-3)
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", lineage["code_version"])  # tests run in git
    assert (stable / "optimizer.safetensors").exists()


def test_decay_phase_continues_weights_and_optimizer_and_changes_every_parameter(workspace, stable):
    config = pretrain_config(
        workspace,
        "decay",
        stage="midtrain",
        init_from=str(stable),
        tokenizer="",
        load_optimizer=True,
        max_steps=6,
        warmup_steps=0,
        stable_steps=0,
        decay_steps=6,
    )
    decayed = causal_lm(config)
    before, after = weights(stable), weights(decayed)
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert unchanged == []
    curve = losses(workspace / "decay")
    assert curve[-1] < curve[0]
    # The optimizer went on from the stable phase's state: AdamW's step count continues from
    # 16, it does not restart at 0.
    optimizer_before = load_file(str(stable / "optimizer.safetensors"))
    optimizer_after = load_file(str(decayed / "optimizer.safetensors"))
    assert float(optimizer_before["0.step"]) == 16
    assert float(optimizer_after["0.step"]) == 16 + 6
    lineage = read_lineage(decayed)
    assert lineage["parent_checkpoint"] == str(stable)
    records = [
        json.loads(x) for x in (workspace / "decay" / "metrics.jsonl").read_text().splitlines()
    ]
    rates = [r["learning_rate"] for r in records if "learning_rate" in r]
    assert rates == sorted(rates, reverse=True) and rates[-1] < 3e-3 * 0.5  # decays to the floor


def test_the_stage_follows_warmup_stable_decay_as_configured(workspace):
    """The learning rates the stage really used, step by step (not transformers' scheduler on
    its own): 2 warmup steps up to the peak, a plateau, then 4 decay steps towards the floor."""
    config = pretrain_config(
        workspace, "wsd", max_steps=10, warmup_steps=2, decay_steps=4, logging_steps=1
    )
    causal_lm(config)
    records = map(json.loads, (workspace / "wsd" / "metrics.jsonl").read_text().splitlines())
    rates = [r["learning_rate"] for r in records if "learning_rate" in r]
    peak, floor = config.learning_rate, config.learning_rate * config.min_lr_ratio
    assert len(rates) == 10
    assert rates[0] < rates[1] < rates[2] == pytest.approx(peak)  # warmup
    plateau = [i for i, rate in enumerate(rates) if rate == pytest.approx(peak)]
    assert plateau == list(range(2, 7))  # stable: 10 - 2 - 4 steps, held from the warmup's end
    decay = rates[7:]
    assert all(a > b for a, b in zip(decay, decay[1:], strict=False))  # decay, falling
    assert decay[-1] > floor and decay[-1] < 0.3 * peak  # the last step is close to the floor


def test_a_schedule_that_does_not_fit_its_steps_is_refused(workspace):
    with pytest.raises(ValueError, match=r"warmup_steps, stable_steps, decay_steps: 6 \+ -4 \+ 6"):
        pretrain_config(workspace, "unfit", max_steps=8, warmup_steps=6, decay_steps=6)
    with pytest.raises(ValueError, match=r"2 \+ 9 \+ 4 steps do not fit in max_steps 12"):
        pretrain_config(workspace, "unfit", max_steps=12, stable_steps=9, decay_steps=4)


def test_an_interrupted_run_resumes_from_its_last_save(workspace):
    config = pretrain_config(workspace, "resumed", max_steps=8, save_steps=4)
    first = causal_lm(config)
    runs = workspace / "resumed" / "runs"
    assert (runs / "checkpoint-8").exists()
    before_the_kill = losses(workspace / "resumed")[:2]  # steps 2 and 4, kept in checkpoint-4
    shutil.rmtree(runs / "checkpoint-8")  # as if killed between step 4 and step 8
    shutil.rmtree(first)
    (runs / "started_at.txt").write_text("1700000000.0\n")  # the first process began long ago
    with (workspace / "resumed" / "metrics.jsonl").open("a") as killed_mid_write:
        killed_mid_write.write('{"time": 1.0, "step": 9, "lo')
    causal_lm(config)
    records = read_metrics(workspace / "resumed" / "metrics.jsonl")
    # The records of steps 6 and 8 from before the kill are retrained, so they were dropped:
    # each step once, and the half-written line gone.
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6, 8]
    assert [r["loss"] for r in records if "loss" in r][:2] == before_the_kill
    lineage = json.loads(
        verify(workspace / "resumed" / "checkpoint").joinpath("lineage.json").read_text()
    )
    # The lineage covers the whole run, not the resumed process alone: its start, and the mean
    # loss of all 8 steps (every logged loss covers 2 steps).
    assert lineage["started_at"] == "2023-11-14T22:13:20Z"
    after_the_resume = [r["loss"] for r in records if "loss" in r and r["step"] > 4]
    whole = (sum(before_the_kill) + sum(after_the_resume)) / 4
    assert lineage["metrics"]["train_loss"] == pytest.approx(whole, rel=1e-3)
    assert lineage["metrics"]["train_loss"] != pytest.approx(sum(after_the_resume) / 2, rel=1e-3)


def test_a_save_cut_off_mid_write_is_skipped_and_the_run_resumes_from_the_one_before(
    workspace, caplog
):
    config = pretrain_config(workspace, "cut-off", max_steps=8, save_steps=4)
    first = causal_lm(config)
    runs = workspace / "cut-off" / "runs"
    # As a kill or a full disk leaves it: the weights and optimizer half written, and no
    # trainer_state.json (transformers writes it last).
    newest = runs / "checkpoint-8"
    (newest / "trainer_state.json").unlink()
    optimizer = newest / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    assert last_run_checkpoint(runs) == str(runs / "checkpoint-4")
    assert "cut off before trainer_state.json" in caplog.text

    shutil.rmtree(first)
    (workspace / "cut-off" / "metrics.jsonl").unlink()
    causal_lm(config)
    steps = [
        json.loads(x)["step"]
        for x in (workspace / "cut-off" / "metrics.jsonl").read_text().splitlines()
    ]
    assert min(steps) > 4  # resumed from step 4, not from scratch, and finished
    verify(workspace / "cut-off" / "checkpoint")
    assert last_run_checkpoint(runs) == str(newest)  # written again, whole this time

    (newest / "trainer_state.json").write_text('{"global_st')
    assert last_run_checkpoint(runs) == str(runs / "checkpoint-4")  # truncated: no better


def test_a_finished_stage_trains_again_only_for_another_recipe(workspace):
    config = pretrain_config(workspace, "again", max_steps=4, save_steps=2)
    first = causal_lm(config)
    runs, lineage = workspace / "again" / "runs", read_lineage(first)
    trained = losses(workspace / "again")

    # The same recipe, data and parent: the published checkpoint is the answer, untouched
    # (resuming would train a step past max_steps and rewrite it).
    assert causal_lm(config) == first
    assert read_lineage(first) == lineage
    assert losses(workspace / "again") == trained
    assert sorted(p.name for p in runs.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]

    # Another learning rate: the old saves must not be continued under the new lineage.
    changed = pretrain_config(workspace, "again", max_steps=4, save_steps=2, learning_rate=1e-3)
    metrics_file = workspace / "again" / "metrics.jsonl"
    earlier = len(metrics_file.read_text().splitlines())
    causal_lm(changed)
    assert (workspace / "again" / "runs.superseded" / "checkpoint-4").is_dir()
    relineage = read_lineage(first)
    assert relineage["recipe"]["learning_rate"] == 1e-3
    assert relineage["fingerprint"] != lineage["fingerprint"]
    records = [json.loads(x) for x in metrics_file.read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps[0] <= config.logging_steps  # trained from step 1, not resumed at 4
    assert steps == sorted(set(steps))  # the curve is the new run's alone
    assert earlier > 0


def test_resume_off_moves_the_earlier_attempts_saves_aside(workspace):
    config = pretrain_config(workspace, "fresh", max_steps=4, save_steps=2)
    causal_lm(config)
    causal_lm(pretrain_config(workspace, "fresh", max_steps=4, save_steps=2, resume=False))
    # Left in runs/, the first attempt's saves would be resumed from by a later run whenever
    # they had the higher step.
    assert (workspace / "fresh" / "runs.superseded" / "checkpoint-4").is_dir()
    steps = [r["step"] for r in read_metrics(workspace / "fresh" / "metrics.jsonl") if "loss" in r]
    assert steps == [2, 4]


def test_sft_trains_on_assistant_tokens_and_records_lineage(workspace, stable):
    config = SFTStageConfig(
        output_dir=str(workspace / "sft"),
        data=str(workspace / "data" / "sft"),
        init_from=str(stable),
        max_steps=12,
        per_device_train_batch_size=8,
        max_length=48,
        learning_rate=3e-3,
        logging_steps=2,
        save_steps=100,
        use_cpu=True,
    )
    checkpoint = sft(config)
    curve = losses(workspace / "sft")
    assert curve[-1] < curve[0]
    before, after = weights(stable), weights(checkpoint)
    assert all(not torch.equal(before[n], after[n]) for n in before)
    lineage = read_lineage(checkpoint)
    assert lineage["stage"] == "sft"
    # Truncation is counted, never silent: the count matches an independent tokenization.
    tokenizer = to_transformers(load_tokenizer(workspace / "tokenizer"))
    train = pl.read_parquet(workspace / "data" / "sft" / "train.parquet")
    lengths = [
        len(tokenizer.apply_chat_template(m, return_dict=True)["input_ids"])
        for m in train["messages"].to_list()
    ]
    expected = sum(n > 48 for n in lengths)
    assert expected > 0
    assert lineage["metrics"]["truncated"] == expected


def test_an_interrupted_sft_run_resumes_from_its_last_save(workspace, stable):
    config = SFTStageConfig(
        output_dir=str(workspace / "sft-resumed"),
        data=str(workspace / "data" / "sft"),
        init_from=str(stable),
        max_steps=4,
        per_device_train_batch_size=4,
        max_length=48,
        logging_steps=1,
        save_steps=2,
        use_cpu=True,
    )
    first = sft(config)
    runs = workspace / "sft-resumed" / "runs"
    metrics = workspace / "sft-resumed" / "metrics.jsonl"
    before_the_kill = [r for r in read_metrics(metrics) if "loss" in r and r["step"] <= 2]
    shutil.rmtree(runs / "checkpoint-4")  # as if killed between step 2 and step 4
    shutil.rmtree(first)
    sft(config)
    records = [r for r in read_metrics(metrics) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[:2] == before_the_kill  # steps 1 and 2 were not trained again
    lineage = read_lineage(verify(workspace / "sft-resumed" / "checkpoint"))
    assert lineage["recipe"]["max_steps"] == 4
    state = json.loads((runs / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4


def test_a_parent_republished_while_its_child_trains_is_not_recorded_as_its_parent(
    workspace, stable, monkeypatch
):
    import training.sft
    from training.runs import ParentChangedError, lineage_sha256

    parent = workspace / "parent-republished"
    shutil.copytree(stable, parent)
    at_start = lineage_sha256(parent)
    config = SFTStageConfig(
        output_dir=str(workspace / "sft-parent-republished"),
        data=str(workspace / "data" / "sft"),
        init_from=str(parent),
        max_steps=2,
        per_device_train_batch_size=4,
        max_length=48,
        use_cpu=True,
    )
    train = training.sft.train_or_restore

    def train_while_the_parent_is_republished(*args, **kwargs):
        trained = train(*args, **kwargs)
        lineage = read_lineage(parent)
        lineage["finished_at"] = "2099-01-01T00:00:00Z"  # another run of the parent stage
        (parent / "lineage.json").write_text(json.dumps(lineage))
        return trained

    monkeypatch.setattr(training.sft, "train_or_restore", train_while_the_parent_is_republished)
    with pytest.raises(ParentChangedError, match=str(parent)):
        sft(config)
    assert not (workspace / "sft-parent-republished" / "checkpoint").exists()

    monkeypatch.setattr(training.sft, "train_or_restore", train)
    lineage = read_lineage(sft(config))  # starts over from the checkpoint there now
    assert lineage["parent_lineage_sha256"] == lineage_sha256(parent) != at_start


def test_sft_from_a_local_pretrained_model_names_it_as_the_parent(workspace, stable):
    from training.models import ModelConfig

    config = SFTStageConfig(
        output_dir=str(workspace / "sft-from-model"),
        data=str(workspace / "data" / "sft"),
        tokenizer=str(workspace / "tokenizer"),
        model=ModelConfig(path=str(stable)),  # a model folder, not init_from
        max_steps=2,
        per_device_train_batch_size=4,
        max_length=128,
        use_cpu=True,
    )
    lineage = read_lineage(sft(config))
    assert lineage["parent_checkpoint"] == str(stable)


def test_golden_hash_of_a_tokenized_sft_batch(workspace):
    """Pins the chat template and tokenizer: silent drift in either changes this hash."""
    tokenizer = to_transformers(
        train_tokenizer(corpus_texts(SAMPLES / "pretrain.jsonl"), TokenizerConfig(vocab_size=512))
    )
    chats = ingest("jsonl", [SAMPLES / "synthetic_chat.jsonl"]).conversations.head(8)
    encoded = [
        tokenizer.apply_chat_template(
            m, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        for m in chats["messages"].to_list()
    ]
    payload = json.dumps([[e["input_ids"], e["assistant_masks"]] for e in encoded]).encode()
    assert sum(sum(e["assistant_masks"]) for e in encoded) > 0
    assert hashlib.sha256(payload).hexdigest() == GOLDEN_SFT_BATCH


def test_golden_hash_of_the_batch_the_sft_trainer_collates(sft_workspace):
    """Pins what the trainer really sees, after TRL's tokenization, truncation and collation,
    packed and not: a change in TRL, the template or our settings changes these hashes."""
    from training.models import ModelConfig
    from training.sft import build_trainer

    digests = {}
    for packing in (False, True):
        config = SFTStageConfig(
            output_dir=str(sft_workspace / f"golden-{packing}"),
            data=str(sft_workspace / "data" / "sft"),
            tokenizer=str(sft_workspace / "tokenizer"),
            model=ModelConfig(preset="tiny", max_position_embeddings=256),
            per_device_train_batch_size=4,
            max_length=96,
            packing=packing,
            use_cpu=True,
        )
        trainer, _ = build_trainer(config)
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
        assert int((batch["labels"] != -100).sum()) > 0
        payload = json.dumps({k: batch[k].tolist() for k in sorted(batch)}).encode()
        digests[packing] = hashlib.sha256(payload).hexdigest()
    assert digests == GOLDEN_COLLATED_SFT_BATCH


GOLDEN_COLLATED_SFT_BATCH = {
    False: "185acb408cb0757301a1adc56fe5267219b9a948ee26193e1f04dc1ee612250a",
    True: "c7a41891301f19b35ce6255d573c0a1ae4ae350fe41f8460ac4cf9c1afd78dc6",
}
GOLDEN_SFT_BATCH = "62c3056e675642bc309c1b12c540fd84754a044ad453e4d05906c6dc620a14ab"


def test_bad_recipes_fail_before_any_work(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("sft:\n  lerning_rate: 0.1\n")
    with pytest.raises(RecipeError, match=r"r.yaml: sft.lerning_rate: unknown key"):
        build(SFTStageConfig, read_recipe(recipe)["sft"], f"{recipe}: sft")
    with pytest.raises(RecipeError, match=r"sft.max_steps: expected int, got str"):
        build(SFTStageConfig, {"data": "d", "tokenizer": "t", "max_steps": "ten"}, "sft")
    with pytest.raises(RecipeError, match="data"):
        build(SFTStageConfig, {}, "sft")


def test_incomplete_checkpoint_is_named(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    with pytest.raises(
        CheckpointError, match="missing tokenizer.json, lineage.json, model.safetensors"
    ):
        verify(tmp_path / "ckpt")


def test_sft_without_assistant_turns_is_refused(workspace, tmp_path):
    rows = pl.DataFrame(
        {
            "id": ["a", "b"],
            "source": ["s", "s"],
            "messages": [[{"role": "user", "content": "hi"}]] * 2,
        }
    )
    export("nothing", rows, tmp_path, ExportConfig(eval_fraction=0.0))
    config = SFTStageConfig(
        output_dir=str(tmp_path / "out"),
        data=str(tmp_path / "nothing"),
        tokenizer=str(workspace / "tokenizer"),
        use_cpu=True,
    )
    with pytest.raises(ValueError, match="no conversation has an assistant turn"):
        sft(config)


def test_rows_that_cannot_teach_are_left_out_counted_and_kept_out_of_the_hash(workspace, tmp_path):
    from training.common import ids_digest
    from training.sft import build_trainer

    answer = [{"role": "assistant", "content": "four"}]
    rows = pl.DataFrame(
        {
            "id": ["ok", "late", "silent"],
            "source": ["s"] * 3,
            "messages": [
                [{"role": "user", "content": "two plus two"}, *answer],
                [{"role": "user", "content": "word " * 80}, *answer],  # answer past max_length
                [{"role": "user", "content": "no answer here"}],  # TRL would refuse the set
            ],
        }
    )
    export("mixed", rows, tmp_path, ExportConfig(eval_fraction=0.0))
    config = SFTStageConfig(
        output_dir=str(tmp_path / "out"),
        data=str(tmp_path / "mixed"),
        tokenizer=str(workspace / "tokenizer"),
        model=build(__import__("training.models").models.ModelConfig, TINY, "model"),
        max_length=48,
        max_steps=2,
        per_device_train_batch_size=1,
        save_steps=100,
        use_cpu=True,
    )
    trainer, counts = build_trainer(config)
    assert len(trainer.train_dataset) == counts["rows_used"] == 1
    assert counts["without_answer_within_max_length"] == 2 and counts["truncated"] == 1
    lineage = read_lineage(sft(config))
    assert lineage["metrics"]["without_answer_within_max_length"] == 2
    assert lineage["inputs"]["rows_used"] == 1
    kept = __import__("datasets").Dataset.from_dict({"id": ["ok"]})
    assert lineage["inputs"]["row_ids_used_sha256"] == ids_digest(kept)
    # named, so a forward trace does not claim the checkpoint learnt from them
    assert lineage["inputs"]["row_ids_left_out"] == ["late", "silent"]


def test_a_max_length_past_the_model_context_is_refused_before_training(workspace):
    config = pretrain_config(workspace, "too-long", max_length=512)  # TINY has 256 positions
    with pytest.raises(
        ValueError,
        match=r"pretrain: max_length 512 is longer than the model's "
        r"context of 256 positions",
    ):
        causal_lm(config)
    assert not (workspace / "too-long" / "runs").exists()


def test_a_decay_phase_asked_to_continue_an_optimizer_its_parent_lacks_is_refused(
    workspace, stable
):
    bare = workspace / "no-optimizer"
    shutil.copytree(stable, bare, dirs_exist_ok=True)
    for name in ("optimizer.safetensors", "optimizer.json"):
        (bare / name).unlink(missing_ok=True)
    config = pretrain_config(workspace, "orphan", init_from=str(bare), load_optimizer=True)
    with pytest.raises(ValueError, match=r"load_optimizer is on but .*no-optimizer holds no opt"):
        causal_lm(config)


def test_held_out_loss_counts_rows_it_cut_or_could_not_score(stable):
    from transformers import AutoModelForCausalLM

    from training.common import load_training_tokenizer
    from training.evaluate import heldout_loss

    model = AutoModelForCausalLM.from_pretrained(str(stable))
    tokenizer = load_training_tokenizer(stable)
    answer = {"role": "assistant", "content": "four"}
    rows = [
        {"messages": [{"role": "user", "content": "two plus two"}, answer]},
        {"messages": [{"role": "user", "content": "word " * 80}, answer]},  # answer cut off
        {"messages": [{"role": "user", "content": "a question"}]},  # nothing to score
    ]
    result = heldout_loss(model, tokenizer, rows, max_length=32)
    assert result["rows_truncated"] == 1 and result["rows_without_scored_tokens"] == 2
    assert result["tokens"] > 0 and result["heldout_loss"] > 0


def test_out_of_disk_while_publishing_names_the_place_and_keeps_the_old_checkpoint(
    workspace, stable, monkeypatch
):
    import errno

    from training import checkpoint as checkpoint_module
    from training.common import ResourceError, resource_errors

    before = weights(stable)
    model = __import__("transformers").AutoModelForCausalLM.from_pretrained(str(stable))

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(model, "save_pretrained", full_disk)
    tokenizer = to_transformers(train_tokenizer(["a b c"] * 10, TokenizerConfig(vocab_size=300)))
    with (
        pytest.raises(ResourceError, match=r"out of disk space writing under .*stable"),
        resource_errors("pretrain", workspace / "stable" / "runs"),
    ):
        checkpoint_module.publish(model, tokenizer, stable, {"stage": "x"})
    verify(stable)  # the published checkpoint is untouched and complete
    assert all(torch.equal(before[k], v) for k, v in weights(stable).items())
    assert not [p for p in stable.parent.iterdir() if p.name.startswith(".checkpoint.tmp")]


def test_publishing_sweeps_what_a_killed_publish_left(stable, tmp_path):
    from training.checkpoint import publish

    target = tmp_path / "checkpoint"
    partial = tmp_path / ".checkpoint.tmp-4242"  # killed while writing
    replaced = tmp_path / ".checkpoint.old-1700000000"  # killed before removing the old one
    for leftover in (partial, replaced):
        leftover.mkdir()
        (leftover / "model.safetensors").write_bytes(b"partial")
    unrelated = tmp_path / ".checkpoint-notes"
    unrelated.mkdir()

    model = __import__("transformers").AutoModelForCausalLM.from_pretrained(str(stable))
    tokenizer = to_transformers(train_tokenizer(["a b c"] * 10, TokenizerConfig(vocab_size=300)))
    publish(model, tokenizer, target, {"stage": "x"})
    verify(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".checkpoint-notes", "checkpoint"]


def test_a_publish_killed_between_its_renames_gets_its_checkpoint_back(stable, tmp_path):
    from training.checkpoint import sweep_killed_publish

    target = tmp_path / "checkpoint"
    shutil.copytree(stable, tmp_path / ".checkpoint.old-1700000000")  # the published one
    (tmp_path / ".checkpoint.tmp-4242").mkdir()  # the new one, never renamed into place
    sweep_killed_publish(target)
    verify(target)
    assert read_lineage(target) == read_lineage(stable)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_out_of_resources_as_the_libraries_really_report_it(tmp_path):
    """torch's CPU allocator, torch.save on a full disk and safetensors raise neither
    MemoryError nor OSError; each must still become one sentence naming the resource."""
    import errno
    import io

    from safetensors import SafetensorError

    from training.common import ResourceError, resource_errors

    runs = tmp_path / "runs"
    with (
        pytest.raises(ResourceError, match=r"sft: out of host memory at step 3; last good"),
        resource_errors("sft", runs, lambda: 3),
    ):
        torch.empty(2**50, dtype=torch.uint8)  # a real DefaultCPUAllocator failure

    class FullDisk(io.BytesIO):
        def write(self, data):
            if self.tell() > 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    with (
        pytest.raises(ResourceError, match=r"pretrain: out of disk space writing under "),
        resource_errors("pretrain", runs),
    ):
        torch.save({"weights": torch.zeros(100_000)}, FullDisk())  # "unexpected pos ..."
    with (
        pytest.raises(ResourceError, match=r"dpo: out of disk space .* \(Error while seri"),
        resource_errors("dpo", runs),
    ):
        raise SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        )
    # a GPU out of memory outside torch's allocator: cuBLAS, a kernel launch, or re-raised
    # by torch.compile with the original as its cause
    for message in (
        "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported",
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    ):
        quoted = re.escape(message.splitlines()[0])
        with (
            pytest.raises(ResourceError, match=rf"sft: out of .* memory at step 5; .*{quoted}"),
            resource_errors("sft", runs, lambda: 5),
        ):
            try:
                raise RuntimeError(message)
            except RuntimeError as cause:
                raise RuntimeError("backend='inductor' raised: see the cause") from cause
    # an error of its own, raised while handling an out-of-memory error, is not one
    with pytest.raises(ValueError, match="batch size 0"), resource_errors("sft", runs):
        try:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        except torch.OutOfMemoryError:
            raise ValueError("batch size 0 is not valid") from None
    with pytest.raises(RuntimeError, match="^shape mismatch$"), resource_errors("sft", runs):
        raise RuntimeError("shape mismatch")  # anything else passes through untouched


def test_out_of_memory_names_the_step_and_the_resume_point(tmp_path):
    from training.common import ResourceError, resource_errors

    with (
        pytest.raises(
            ResourceError, match=r"sft: out of CPU memory at step 7; resume from scratch"
        ),
        resource_errors("sft", tmp_path / "runs", lambda: 7),
    ):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")


def test_mfu_is_recorded_against_the_gpu_peak_and_never_guessed(tmp_path):
    from types import SimpleNamespace

    from training.common import MetricsCallback, peak_flops
    from training.reporting import Reporter, read_metrics

    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12  # the baseline's figure
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA L40S") == 362e12
    assert peak_flops("Tesla T4") is None and peak_flops("cpu") is None

    reporter = Reporter(tmp_path / "metrics.jsonl")
    callback = MetricsCallback(reporter)
    args, control = SimpleNamespace(use_cpu=True), SimpleNamespace()
    model = torch.nn.Linear(10, 10)
    callback.on_train_begin(args, SimpleNamespace(num_input_tokens_seen=0), control, model=model)
    assert callback.peak is None  # the CPU: no MFU rather than a made-up one
    state = SimpleNamespace(global_step=1, num_input_tokens_seen=1000)
    callback.on_log(args, state, control, logs={"loss": 1.0})
    callback.parameters, callback.peak = 110, 1e9  # as on_train_begin sets them on a GPU
    state = SimpleNamespace(global_step=2, num_input_tokens_seen=2000)
    callback.on_log(args, state, control, logs={"loss": 0.5})
    # two GPUs: the token count is both processes' (transformers gathers it), so is the peak
    state = SimpleNamespace(global_step=3, num_input_tokens_seen=3000)
    callback.on_log(SimpleNamespace(use_cpu=False, world_size=2), state, control, {"loss": 0.4})
    cpu, gpu, two_gpus = read_metrics(tmp_path / "metrics.jsonl")
    assert "mfu" not in cpu
    assert gpu["mfu"] == pytest.approx(6 * 110 * gpu["tokens_per_s"] / 1e9)
    assert two_gpus["mfu"] == pytest.approx(6 * 110 * two_gpus["tokens_per_s"] / 2e9)


def test_a_pipes_channel_that_cannot_close_keeps_the_stages_own_error(tmp_path, capsys):
    from training import reporting

    class Unwritable:
        def __exit__(self, *raised):
            raise IsADirectoryError("the Pipes message file")  # as on a full or broken disk

    reporter = reporting.Reporter(tmp_path / "metrics.jsonl")
    reporter.pipes, reporter._pipes_cm = object(), Unwritable()
    reporting._OPEN.append(reporter)
    reporting.close_all(RuntimeError("pretrain: out of disk"))  # must not raise its own error
    assert reporting._OPEN == [] and reporter.pipes is None
    assert "could not close the Dagster Pipes channel" in capsys.readouterr().err


def test_tokens_per_second_after_a_resume_count_this_process_alone(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from training import common
    from training.reporting import Reporter, read_metrics

    # built, train begins, three logs; then a second run: built, train begins, its summary
    clock = iter([0.0, 100.0, 102.0, 103.0, 104.0, 200.0, 210.0, 212.0])
    monkeypatch.setattr(common.time, "perf_counter", lambda: next(clock))
    callback = common.MetricsCallback(Reporter(tmp_path / "metrics.jsonl"))
    args, control = SimpleNamespace(use_cpu=True), SimpleNamespace()
    # transformers restores the tokens seen before the save it resumes from
    callback.on_train_begin(args, SimpleNamespace(num_input_tokens_seen=1_000_000), control)
    state = SimpleNamespace(global_step=21, num_input_tokens_seen=1_001_000)
    callback.on_log(args, state, control, logs={"loss": 1.0})
    # an evaluation and the end-of-training summary train nothing: no rate of their own
    callback.on_log(args, state, control, logs={"eval_loss": 1.2})
    callback.on_log(args, state, control, logs={"train_loss": 1.1, "train_runtime": 9.0})
    record, evaluation, summary = read_metrics(tmp_path / "metrics.jsonl")
    assert record["tokens_per_s"] == pytest.approx(500.0)  # 1,000 tokens in 2 s
    assert "tokens_per_s" not in evaluation and "tokens_per_s" not in summary
    # a run that ends before its first training log: the summary carries the whole run's rate
    short = common.MetricsCallback(Reporter(tmp_path / "short.jsonl"))
    short.on_train_begin(args, SimpleNamespace(num_input_tokens_seen=0), control)
    state = SimpleNamespace(global_step=3, num_input_tokens_seen=600)
    short.on_log(args, state, control, logs={"train_loss": 1.1, "train_runtime": 3.0})
    (only,) = read_metrics(tmp_path / "short.jsonl")
    assert only["tokens_per_s"] == pytest.approx(300.0)  # 600 tokens in 2 s


def test_pretraining_steps_that_do_not_log_read_nothing_back_from_the_device(
    workspace, monkeypatch
):
    """``Tensor.item`` is a host-device synchronisation on a GPU: transformers' token count made
    one every step. Now only logging steps read anything back, and the count is still exact."""
    from training import causal_lm as stage

    calls, per_step = [0], []
    item = torch.Tensor.item

    def counted(tensor):
        calls[0] += 1
        return item(tensor)

    class PerStep(stage.MetricsCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.at_begin = calls[0]

        def on_step_end(self, args, state, control, **kwargs):
            per_step.append(calls[0] - self.at_begin)

    monkeypatch.setattr(stage, "MetricsCallback", PerStep)
    monkeypatch.setattr(torch.Tensor, "item", counted)
    config = pretrain_config(
        workspace, "no-syncs", max_steps=6, logging_steps=3, save_steps=100, resume=False
    )
    checkpoint = causal_lm(config)
    monkeypatch.undo()
    assert len(per_step) == 6 and [per_step[i] for i in (0, 1, 3, 4)] == [0, 0, 0, 0]
    records = read_metrics(Path(config.output_dir) / "metrics.jsonl")
    seen = [r["tokens_seen"] for r in records if "loss" in r]
    batch = config.per_device_train_batch_size * config.max_length
    assert seen == [3 * batch, 6 * batch]
    assert read_lineage(checkpoint)["stage"] == "pretrain"


def test_a_run_fingerprint_covers_what_is_trained_not_how_it_is_carried_out(workspace, stable):
    from training.runs import run_fingerprint

    config = pretrain_config(workspace, "fingerprint")
    same = run_fingerprint(config, "rows", [str(stable)])
    # where it runs, how often it saves and logs, and whether it may resume: not what it trains
    moved = pretrain_config(workspace, "elsewhere", save_steps=3, logging_steps=1, resume=False)
    assert run_fingerprint(moved, "rows", [str(stable)]) == same
    # what the caller says of the data (a data version that moves with every materialization)
    described = pretrain_config(workspace, "fingerprint", inputs={"data_version": "run 2"})
    assert run_fingerprint(described, "rows", [str(stable)]) == same
    assert run_fingerprint(pretrain_config(workspace, "f", seed=1), "rows", [str(stable)]) != same
    assert run_fingerprint(config, "other rows", [str(stable)]) != same
    assert run_fingerprint(config, "rows", [None]) != same


def test_two_processes_train_one_run_and_publish_it_once(workspace, tmp_path):
    """torchrun (what accelerate launch uses) with two CPU processes: both train, the main one
    alone writes metrics and publishes, and the other neither fails nor duplicates records."""
    section = {
        "output_dir": str(tmp_path / "ddp"),
        "data": str(workspace / "data" / "pretrain"),
        "tokenizer": str(workspace / "tokenizer"),
        "model": TINY,
        "max_steps": 4,
        "per_device_train_batch_size": 4,
        "max_length": 64,
        "warmup_steps": 1,
        "save_steps": 2,
        "logging_steps": 1,
        "use_cpu": True,
    }

    def launch():
        return torchrun("pretrain", section, tmp_path)

    first = launch()
    assert first.returncode == 0, first.stderr[-3000:]
    verify(tmp_path / "ddp" / "checkpoint")
    steps = [
        r["step"]
        for r in map(json.loads, (tmp_path / "ddp" / "metrics.jsonl").open())
        if "loss" in r
    ]
    assert steps == [1, 2, 3, 4]  # once each, not once per process
    assert not list((tmp_path / "ddp").glob(".checkpoint.tmp-*"))
    recorded = (tmp_path / "ddp" / "metrics.jsonl").read_text()
    again = launch()  # unchanged: both processes find the published checkpoint
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "ddp" / "metrics.jsonl").read_text() == recorded


def test_a_stage_trains_again_when_its_rows_change_under_the_same_ids_and_not_when_rewritten(
    workspace, tmp_path
):
    """The fingerprint follows the data's content: a repaired answer keeps its row's id, and a
    dataset exported again with the same rows (every Dagster materialization) is not new."""
    chats = ingest("jsonl", [SAMPLES / "synthetic_chat.jsonl"]).conversations.head(40)
    rows = sft_rows(chats)
    tokenizer = tmp_path / "tokenizer"
    shutil.copytree(workspace / "tokenizer", tokenizer)
    export("sft", rows, tmp_path / "data", ExportConfig(eval_fraction=0.0))
    config = SFTStageConfig(
        output_dir=str(tmp_path / "out"),
        data=str(tmp_path / "data" / "sft"),
        tokenizer=str(tokenizer),
        model=build(__import__("training.models").models.ModelConfig, TINY, "model"),
        max_length=64,
        max_steps=2,
        per_device_train_batch_size=2,
        save_steps=100,
        use_cpu=True,
    )
    checkpoint = sft(config)
    first = (checkpoint / "lineage.json").read_bytes()
    assert read_lineage(checkpoint)["inputs"]["data_sha256"]
    # the run's records travel with the checkpoint they made
    assert [r["step"] for r in read_metrics(checkpoint / "metrics.jsonl") if "loss" in r]

    export("sft", rows, tmp_path / "data", ExportConfig(eval_fraction=0.0))
    sft(config)
    assert (checkpoint / "lineage.json").read_bytes() == first  # nothing trained

    repaired = rows.with_columns(
        pl.col("messages").list.eval(
            pl.struct(
                role=pl.element().struct.field("role"),
                content=pl.element().struct.field("content") + " (repaired)",
            )
        )
    )
    export("sft", repaired, tmp_path / "data", ExportConfig(eval_fraction=0.0))
    sft(config)
    retrained = read_lineage(checkpoint)
    assert retrained["inputs"]["row_ids_sha256"] == json.loads(first)["inputs"]["row_ids_sha256"]
    assert retrained["fingerprint"] != json.loads(first)["fingerprint"]

    # A model from scratch also learns from its tokenizer: one rebuilt in place is new input.
    save_tokenizer(
        train_tokenizer(corpus_texts(SAMPLES / "pretrain.jsonl"), TokenizerConfig(vocab_size=384)),
        tokenizer,
    )
    sft(config)
    assert read_lineage(checkpoint)["fingerprint"] != retrained["fingerprint"]
