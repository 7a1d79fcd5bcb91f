"""The candidates stage on tiny real checkpoints: N candidates per prompt with their origin, the
schema of the shared data model, reproducible under the seed, resumable after a crash."""

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from torchrun_support import torchrun

import training.candidates as candidates_stage
from assets.resources import SAMPLES
from curation.datasets import ExportConfig, export, prompt_rows
from curation.ingest import ingest
from curation.schema import stable_id
from training.candidates import (
    CANDIDATES_SCHEMA,
    CandidatesConfig,
    candidate_id,
    samples_per_checkpoint,
    weights_stamp,
)
from training.checkpoint import OPTIMIZER_TENSORS, CheckpointError, publish
from training.models import ModelConfig, build_causal_lm
from training.recipe import RecipeError, build
from training.tokenizer import TokenizerConfig, corpus_texts, to_transformers, train_tokenizer

PROMPTS = 6


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("candidates")
    chats = ingest("jsonl", [SAMPLES / "synthetic_chat.jsonl"]).conversations.head(40)
    export("prompt", prompt_rows(chats), root / "data", ExportConfig(eval_fraction=0.1))
    tokenizer = to_transformers(
        train_tokenizer(corpus_texts(SAMPLES / "pretrain.jsonl"), TokenizerConfig(vocab_size=384))
    )
    for name, seed in (("a", 0), ("b", 1)):
        model = build_causal_lm(
            ModelConfig(preset="tiny", max_position_embeddings=256, seed=seed), tokenizer
        )
        publish(model, tokenizer, root / name, {"stage": "test", "seed": seed})
    return root


def config(workspace: Path, out: str, **overrides) -> CandidatesConfig:
    values = dict(
        prompt_dataset=str(workspace / "data" / "prompt"),
        checkpoints=[str(workspace / "a"), str(workspace / "b")],
        output_dir=str(workspace / out),
        num_candidates=3,
        temperature=1.0,
        top_p=0.95,
        max_new_tokens=8,
        batch_size=4,
        max_prompts=PROMPTS,
        use_cpu=True,
    )
    values.update(overrides)
    return CandidatesConfig(**values)


def rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


@pytest.fixture(scope="module")
def first_run(workspace) -> Path:
    return candidates_stage.main(config(workspace, "run1"))


def test_every_prompt_gets_n_candidates_with_distinct_origins(workspace, first_run):
    table = pq.read_table(first_run)
    assert table.schema.equals(CANDIDATES_SCHEMA)
    data = table.to_pylist()
    assert len(data) == PROMPTS
    for row in data:
        assert row["prompt"][-1]["role"] == "user" and row["source"] == "synthetic_chat"
        assert row["reference"] is None and row["answer"] is None
        found = row["candidates"]
        assert len(found) == 3
        assert [c["model"] for c in found] == [str(workspace / "a")] * 2 + [str(workspace / "b")]
        origins = {(c["model"], c["sampling"]) for c in found}
        assert len(origins) == 3
        assert len({c["candidate_id"] for c in found}) == 3
        for c in found:
            sampling = json.loads(c["sampling"])
            assert sampling["temperature"] == 1.0 and sampling["top_p"] == 0.95
            assert sampling["seed"] == 0 and sampling["max_new_tokens"] == 8
            assert c["origin"] == "model"
            stamp = weights_stamp(c["model"])
            assert c["candidate_id"] == candidate_id("model", stamp, c["sampling"], c["text"])
            # the same hash the curation side computes for dataset candidates
            assert c["candidate_id"] == stable_id(
                "model", f"{stamp}\x1f{c['sampling']}\x1f{c['text']}"
            )
    texts = [c["text"] for row in data for c in row["candidates"]]
    assert len(set(texts)) > len(texts) // 2  # sampling, not one repeated answer


def test_same_seed_same_candidates_other_seed_different(workspace, first_run):
    again = candidates_stage.main(config(workspace, "run2"))
    assert rows(again) == rows(first_run)
    other = candidates_stage.main(config(workspace, "run3", seed=7))
    first_texts = [c["text"] for r in rows(first_run) for c in r["candidates"]]
    other_texts = [c["text"] for r in rows(other) for c in r["candidates"]]
    assert first_texts != other_texts


def test_ids_do_not_depend_on_where_the_checkpoints_lie(workspace, first_run):
    # pair ids, the preference split and the order pairs train in all follow candidate ids:
    # a checkout in another folder must get the same ones
    moved = workspace / "elsewhere"
    for name in ("a", "b"):
        shutil.copytree(workspace / name, moved / name)
    again = candidates_stage.main(
        config(
            workspace,
            "moved",
            checkpoints=[str(moved / "a"), str(moved / "b")],
        )
    )
    ids = [[c["candidate_id"] for c in r["candidates"]] for r in rows(first_run)]
    assert [[c["candidate_id"] for c in r["candidates"]] for r in rows(again)] == ids
    assert {c["model"] for r in rows(again) for c in r["candidates"]} == {
        str(moved / "a"),
        str(moved / "b"),
    }
    # other weights at the same path are another model: new ids
    assert weights_stamp(str(workspace / "a")) != weights_stamp(str(workspace / "b"))


def test_a_killed_run_resumes_without_regenerating_finished_batches(
    workspace, first_run, monkeypatch
):
    real_sample = candidates_stage.sample
    calls: list[int] = []

    def dies_on_third_batch(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        calls.append(kwargs.get("seed", args[-1]))
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(candidates_stage, "sample", dies_on_third_batch)
    cfg = config(workspace, "killed")
    with pytest.raises(KeyboardInterrupt):
        candidates_stage.main(cfg)
    shards = Path(cfg.output_dir) / "shards"
    done = sorted(p.name for p in shards.glob("c*.parquet"))
    assert len(done) == 2 and all(name.startswith("c00-") for name in done)
    assert not (Path(cfg.output_dir) / "candidates.parquet").exists()
    before = {name: (shards / name).stat().st_mtime_ns for name in done}

    calls.clear()
    monkeypatch.setattr(
        candidates_stage, "sample", lambda *a, **k: (calls.append(1), real_sample(*a, **k))[1]
    )
    resumed = candidates_stage.main(cfg)
    assert len(calls) == 2  # only checkpoint b's two batches were generated
    assert {name: (shards / name).stat().st_mtime_ns for name in done} == before
    assert rows(resumed) == rows(first_run)
    metrics = [
        json.loads(x) for x in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()
    ]
    assert sorted((m["checkpoint"], m["batch"]) for m in metrics if "batch" in m) == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
    ]


def test_new_prompts_are_sampled_alone_and_an_edited_prompt_again(
    workspace, first_run, monkeypatch
):
    """A refresh that adds prompts pays for those alone: one digest over the whole list made
    every new prompt discard every shard, and the judge then paid again for every set."""
    grown = workspace / "grown"
    shutil.copytree(first_run.parent, grown)
    real_sample = candidates_stage.sample
    sampled: list[list[str]] = []

    def recording(model, tokenizer, texts, *args, **kwargs):
        sampled.append(texts)
        return real_sample(model, tokenizer, texts, *args, **kwargs)

    monkeypatch.setattr(candidates_stage, "sample", recording)
    more = candidates_stage.main(config(workspace, "grown", max_prompts=PROMPTS + 3))
    assert [len(texts) for texts in sampled] == [3, 3]  # the new prompts, once per checkpoint
    assert rows(more)[:PROMPTS] == rows(first_run)  # the earlier candidates, kept as they were
    assert len(rows(more)) == PROMPTS + 3
    before = rows(more)

    # An edited prompt under the same id is sampled again, and only it.
    edited = workspace / "edited-data" / "prompt"
    shutil.copytree(workspace / "data" / "prompt", edited)
    shutil.rmtree(edited / "hf")  # the Parquet files are then what the stage reads
    train = pq.read_table(edited / "train.parquet").to_pylist()
    train[1]["prompt"][-1]["content"] = "Say something else entirely."
    pq.write_table(
        pa.Table.from_pylist(train, schema=pq.read_schema(edited / "train.parquet")),
        edited / "train.parquet",
    )
    sampled.clear()
    again = candidates_stage.main(
        config(workspace, "grown", max_prompts=PROMPTS + 3, prompt_dataset=str(edited))
    )
    assert [len(texts) for texts in sampled] == [1, 1]
    assert "Say something else entirely." in sampled[0][0]
    after = rows(again)
    assert after[1]["candidates"] != before[1]["candidates"]
    assert [r for i, r in enumerate(after) if i != 1] == [r for i, r in enumerate(before) if i != 1]


def test_changed_settings_discard_old_shards(workspace, first_run):
    cfg = config(workspace, "run1", max_new_tokens=4)
    out = candidates_stage.main(cfg)
    assert all(
        json.loads(c["sampling"])["max_new_tokens"] == 4 for r in rows(out) for c in r["candidates"]
    )


def test_shards_with_path_hashed_ids_are_not_reused(workspace, capsys):
    """Shards written before ids hashed the weights have a manifest without ``candidate_ids``;
    resuming from them would mix the two id schemes in one table."""
    cfg = config(workspace, "legacy")
    candidates_stage.main(cfg)
    shards = Path(cfg.output_dir) / "shards"
    manifest = json.loads((shards / "manifest.json").read_text())
    del manifest["candidate_ids"]
    (shards / "manifest.json").write_text(json.dumps(manifest))
    for shard in shards.glob("c*.parquet"):
        table = pq.read_table(shard).to_pylist()
        for row in table:
            for c in row["candidates"]:
                c["candidate_id"] = candidate_id("model", c["model"], c["sampling"], c["text"])
        pq.write_table(pa.Table.from_pylist(table, schema=pq.read_schema(shard)), shard)
    capsys.readouterr()
    again = rows(candidates_stage.main(cfg))
    assert "discarding earlier shards" in capsys.readouterr().out
    found = [c for r in again for c in r["candidates"]]
    assert len(found) == PROMPTS * 3
    for c in found:
        stamp = weights_stamp(c["model"])
        assert c["candidate_id"] == candidate_id("model", stamp, c["sampling"], c["text"])


def test_the_weights_stamp_leaves_optimizer_state_out(workspace, tmp_path):
    copy = shutil.copytree(workspace / "a", tmp_path / "a")
    (copy / OPTIMIZER_TENSORS).write_bytes(b"not the model")
    assert weights_stamp(str(copy)) == weights_stamp(str(workspace / "a"))
    (copy / "model.safetensors").write_bytes(b"other weights")
    assert weights_stamp(str(copy)) != weights_stamp(str(workspace / "a"))


def test_prompts_longer_than_the_limit_are_skipped_and_counted(workspace):
    out = candidates_stage.main(config(workspace, "short", max_prompt_length=3))
    assert rows(out) == []


def test_split_of_candidates_over_checkpoints():
    assert samples_per_checkpoint(5, 2) == [3, 2]
    assert samples_per_checkpoint(9, 3) == [3, 3, 3]
    assert samples_per_checkpoint(2, 1) == [2]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"num_candidates": 1}, "num_candidates: expected 2..9, got 1"),
        ({"num_candidates": 10}, "num_candidates: expected 2..9, got 10"),
        ({"temperature": 0.0}, "temperature: expected > 0"),
        ({"top_p": 1.5}, "top_p"),
        ({"checkpoints": []}, "checkpoints: name at least one"),
        ({"checkpoints": ["a", "b", "c"], "num_candidates": 2}, "3 checkpoints"),
        ({"splits": ["validation"]}, "splits"),
        ({"num_candidates": "4"}, "num_candidates: expected int"),
    ],
)
def test_bad_configs_fail_naming_the_key(values, message):
    with pytest.raises(RecipeError, match=message):
        build(
            CandidatesConfig, {"prompt_dataset": "x", "checkpoints": ["a"], **values}, "candidates"
        )


def test_a_missing_checkpoint_fails_before_any_work(workspace, tmp_path):
    cfg = config(workspace, "missing", checkpoints=[str(tmp_path / "nope")])
    with pytest.raises(CheckpointError, match="does not exist"):
        candidates_stage.main(cfg)
    assert not Path(cfg.output_dir, "shards").exists()


def test_the_stage_runs_from_a_recipe(workspace, tmp_path):
    from training.__main__ import main as cli

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "candidates:\n"
        f"  prompt_dataset: {workspace / 'data' / 'prompt'}\n"
        f"  checkpoints: [{workspace / 'a'}]\n"
        f"  output_dir: {tmp_path / 'out'}\n"
        "  num_candidates: 2\n"
        "  max_new_tokens: 4\n"
        "  max_prompts: 2\n"
        "  use_cpu: true\n"
    )
    assert cli(["candidates", "--config", str(recipe), "--set", "seed=3"]) == 0
    found = rows(tmp_path / "out" / "candidates.parquet")
    assert [len(r["candidates"]) for r in found] == [2, 2]
    assert {json.loads(c["sampling"])["seed"] for r in found for c in r["candidates"]} == {3}
    recipe.write_text(recipe.read_text() + "  num_candidates_typo: 3\n")
    assert cli(["candidates", "--config", str(recipe)]) == 2


def test_two_processes_split_the_batches_and_write_what_one_process_writes(workspace, tmp_path):
    """Under torchrun each rank samples its own batches (batch b is rank b % 2's) and the main
    one assembles; per-batch seeds make the result independent of the process count."""
    single = candidates_stage.main(config(workspace, "one-process", batch_size=2))
    section = {
        "prompt_dataset": str(workspace / "data" / "prompt"),
        "checkpoints": [str(workspace / "a"), str(workspace / "b")],
        "output_dir": str(tmp_path / "two"),
        "num_candidates": 3,
        "temperature": 1.0,
        "max_new_tokens": 8,
        "batch_size": 2,
        "max_prompts": PROMPTS,
        "use_cpu": True,
    }
    launched = torchrun("candidates", section, tmp_path)
    assert launched.returncode == 0, launched.stderr[-3000:]
    # 3 batches x 2 checkpoints, counted over both ranks, reported once
    assert launched.stdout.count("candidates: wrote") == 1
    assert "'batches_generated': 6" in launched.stdout
    assert rows(tmp_path / "two" / "candidates.parquet") == rows(single)


def test_evaluation_is_left_to_the_main_process(workspace, tmp_path, monkeypatch):
    from training.evaluate import EvaluateConfig
    from training.evaluate import main as evaluate

    monkeypatch.setenv("RANK", "1")
    result = evaluate(
        EvaluateConfig(checkpoint=str(workspace / "a"), output=str(tmp_path / "rank1"))
    )
    assert result["evaluated_by"] == "the main process"
    assert not (tmp_path / "rank1" / "evaluation.json").exists()
