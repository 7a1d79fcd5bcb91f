"""Bad input to the training stages: each is refused with one sentence naming the file (and the
line, key or column where there is one), before the work it would spoil; never a library's bare
traceback."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import training.__main__ as cli
from training import evaluate
from training.causal_lm import CausalLMConfig
from training.recipe import RecipeError, read_recipe


def test_a_recipe_that_is_a_folder_or_not_utf8_is_named(tmp_path):
    folder = re.escape(str(tmp_path))
    with pytest.raises(RecipeError, match=rf"^{folder}: is a directory, not a recipe file$"):
        read_recipe(tmp_path)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"sft:\n  data: caf\xe9\n")
    with pytest.raises(RecipeError, match=r"latin\.yaml: not UTF-8 text \(byte 0xe9 at offset 16"):
        read_recipe(latin)


def test_a_key_repeated_in_a_recipe_is_named_with_both_lines(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("pretrain:\n  max_steps: 3\n  data: d\n  max_steps: 5000\n")
    with pytest.raises(
        RecipeError,
        match=r"r\.yaml: line 4: key 'max_steps' appears again in the same mapping "
        r"\(first on line 2\)",
    ):
        read_recipe(recipe)
    # the same key in two sections, and a merged anchor overridden on purpose, are not repeats
    recipe.write_text(
        "x-model: &model {preset: tiny, max_position_embeddings: 256}\n"
        "pretrain: {max_steps: 3, model: {<<: *model, preset: small}}\n"
        "sft: {max_steps: 3}\n"
    )
    loaded = read_recipe(recipe)
    assert loaded["pretrain"]["model"] == {"preset": "small", "max_position_embeddings": 256}


# --- the stage a causal-LM run records ------------------------------------------------------


@pytest.fixture
def causal_recipe(tmp_path) -> Path:
    """pretrain and midtrain sections without ``stage:``, as every shipped recipe has them."""
    path = tmp_path / "r.yaml"
    path.write_text(
        "pretrain: {data: d, tokenizer: tok, max_steps: 4}\n"
        "midtrain: {data: d, init_from: ckpt, max_steps: 4, warmup_steps: 0, decay_steps: 4}\n"
    )
    return path


def test_the_stage_a_causal_lm_run_records_is_the_one_the_cli_runs(causal_recipe):
    assert cli.load_config("midtrain", str(causal_recipe)).stage == "midtrain"
    assert cli.load_config("pretrain", str(causal_recipe)).stage == "pretrain"
    with pytest.raises(RecipeError, match=r"^--set stage=banana: midtrain\.stage: expected one"):
        cli.load_config("midtrain", str(causal_recipe), ["stage=banana"])
    with pytest.raises(
        RecipeError,
        match=r"r\.yaml: pretrain\.stage: 'midtrain' contradicts the stage being run, 'pretrain'",
    ):
        cli.load_config("pretrain", str(causal_recipe), ["stage=midtrain"])
    # built directly (the assets' tests, a notebook), an unknown stage is refused as well
    with pytest.raises(ValueError, match=r"stage: 'banana' is not one of \['pretrain', 'mid"):
        CausalLMConfig(stage="banana", data="d", tokenizer="tok")


# --- evaluate: the context, and the prompts file -----------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(sft_workspace, tmp_path_factory) -> Path:
    """A published tiny model with a 64-position context (untrained: only shapes matter)."""
    from training.checkpoint import publish
    from training.common import load_training_tokenizer
    from training.models import ModelConfig, build_causal_lm

    tokenizer = load_training_tokenizer(sft_workspace / "tokenizer")
    model = build_causal_lm(ModelConfig(max_position_embeddings=64), tokenizer)
    target = tmp_path_factory.mktemp("checkpoint") / "checkpoint"
    return publish(model, tokenizer, target, {"stage": "pretrain", "parent_checkpoint": None})


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if evaluate gets as far as loading the weights."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was found")

    monkeypatch.setattr(evaluate, "build_causal_lm", refuse)


def prompt_row(row_id: str, content: str) -> str:
    return json.dumps({"id": row_id, "prompt": [{"role": "user", "content": content}]})


def test_evaluate_refuses_a_max_length_past_the_context_before_loading_the_model(
    checkpoint, sft_workspace, tmp_path, no_model_load
):
    config = evaluate.EvaluateConfig(
        checkpoint=str(checkpoint),
        output=str(tmp_path / "eval"),
        heldout=str(sft_workspace / "data" / "sft"),
        max_length=128,
        use_cpu=True,
    )
    with pytest.raises(
        ValueError, match=r"checkpoint: max_length 128 is longer than the model's context of 64"
    ):
        evaluate.main(config)
    assert not (tmp_path / "eval" / "evaluation.json").exists()


def test_evaluate_skips_and_counts_prompts_that_leave_no_room_for_the_answer(
    checkpoint, sft_workspace, tmp_path
):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(prompt_row("short", "two plus two") + "\n" + prompt_row("long", "x " * 80))
    config = evaluate.EvaluateConfig(
        checkpoint=str(checkpoint),
        output=str(tmp_path / "eval"),
        heldout=str(sft_workspace / "data" / "sft"),
        prompts=str(prompts),
        max_new_tokens=4,
        max_length=64,
        use_cpu=True,
    )
    result = evaluate.main(config)
    assert result["generations"] == 1 and result["prompts_too_long"] == 1
    written = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert (
        written["prompts_too_long"] == 1 and written["rows_truncated"] == result["rows_truncated"]
    )
    lines = (tmp_path / "eval" / "generations.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["short"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (prompt_row("a", "hi") + '\n{"id": "b", "prompt": \n', r"prompts\.jsonl:2: not valid JSON"),
        ('{"id": "a", "question": "hi"}\n', r"prompts\.jsonl:1: no 'prompt' \(a list of chat"),
        ('\n{"id": "a", "prompt": "hi"}\n', r"prompts\.jsonl:2: 'prompt' is not a list of mess"),
        ('{"prompt": []}\n', r"prompts\.jsonl:1: no 'id'"),
    ],
)
def test_a_bad_prompts_file_is_named_by_line_before_the_model_is_loaded(
    checkpoint, tmp_path, no_model_load, content, message
):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(content)
    config = evaluate.EvaluateConfig(
        checkpoint=str(checkpoint), output=str(tmp_path / "eval"), prompts=str(prompts)
    )
    with pytest.raises(ValueError, match=message):
        evaluate.main(config)


def test_the_evaluation_summary_carries_what_the_scores_leave_out(tmp_path):
    from assets.training import evaluation_row
    from curation.synthetic import generate_tasks

    right, wrong, skipped = generate_tasks(3, seed=7)
    counts = {"rows_truncated": 2, "rows_without_scored_tokens": 1, "prompts_too_long": 1}
    result = {"heldout_loss": 3.0, "perplexity": 20.1, "generations": 2, **counts}
    (tmp_path / "evaluation.json").write_text(json.dumps(result))
    (tmp_path / "generations.jsonl").write_text(
        json.dumps({"id": right.id, "output": right.answer})
        + "\n"
        + json.dumps({"id": wrong.id, "output": wrong.distractors[0]})
        + "\n"
    )
    row = evaluation_row("sft", tmp_path, [right, wrong, skipped])
    # the skipped prompt has no answer: it counts as wrong, not out of the denominator
    expected = {"stage": "sft", "heldout_loss": 3.0, "perplexity": 20.1, "exact_match": 1 / 3}
    assert row == {**expected, **counts}


# --- dataset shapes -----------------------------------------------------------------------------


def write_split(folder: Path, split: str, rows: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), folder / f"{split}.parquet")
    return folder


def test_a_train_split_without_rows_is_named_by_its_folder(tmp_path):
    from training.common import load_splits

    empty = write_split(tmp_path / "empty", "train", {"text": pa.array([], pa.string())})
    with pytest.raises(
        ValueError, match=rf"^{re.escape(str(empty))}: the train split has no rows$"
    ):
        load_splits(empty)
    parts = tmp_path / "no-parts" / "parts"
    parts.mkdir(parents=True)
    (parts / "_manifest.json").write_text('{"parts": []}')
    with pytest.raises(ValueError, match=r"no-parts: the train split has no rows"):
        load_splits(parts.parent)
    # an empty test split is no error: it is left out, as a dataset without one
    folder = write_split(tmp_path / "ok", "train", {"text": ["a b c"]})
    write_split(folder, "test", {"text": pa.array([], pa.string())})
    assert list(load_splits(folder, required=("text",))) == ["train"]


def stage_config(kind: str, data: Path, sft_workspace: Path, tmp_path: Path):
    from training.sft import SFTStageConfig

    values = dict(
        output_dir=str(tmp_path / "out"),
        data=str(data),
        tokenizer=str(sft_workspace / "tokenizer"),
        max_steps=2,
        use_cpu=True,
    )
    return SFTStageConfig(**values) if kind == "sft" else CausalLMConfig(**values)


@pytest.mark.parametrize(
    ("kind", "rows", "message"),
    [
        (
            "sft",
            {"id": ["a"], "conversation": ["hi"]},
            r"the train split lacks column\(s\) \['messages'\] \(it has \['conversation', 'id'\]\)",
        ),
        (
            "pretrain",
            {"id": ["a"], "body": ["hi"]},
            r"the train split lacks column\(s\) \['text'\]",
        ),
        (
            "pretrain",
            {"id": ["a", "b", "c"], "text": ["one two", None, None]},
            r"2 of the 3 rows of the train split have a null 'text'",
        ),
    ],
)
def test_a_stage_names_the_dataset_and_the_column_it_lacks_before_building_a_model(
    sft_workspace, tmp_path, monkeypatch, kind, rows, message
):
    import training.causal_lm
    import training.sft

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the dataset was checked")

    for module in (training.causal_lm, training.sft):
        monkeypatch.setattr(module, "build_causal_lm", refuse)
    data = write_split(tmp_path / "data", "train", rows)
    run = training.sft.main if kind == "sft" else training.causal_lm.main
    with pytest.raises(ValueError, match=rf"^{re.escape(str(data))}: {message}"):
        run(stage_config(kind, data, sft_workspace, tmp_path))
    assert not (tmp_path / "out" / "runs").exists()


# --- damaged checkpoints and tokenizers ---------------------------------------------------------


def test_a_cut_short_weights_file_is_named_with_the_librarys_reason(checkpoint, tmp_path):
    from training.checkpoint import CheckpointError
    from training.models import ModelConfig, build_causal_lm

    damaged = tmp_path / "damaged"
    shutil.copytree(checkpoint, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:10_000])
    with pytest.raises(
        CheckpointError,
        match=rf"^{re.escape(str(weights))}: the weights cannot be read \(Error while "
        r"deserializing header: .*\); the file is damaged or was cut short",
    ):
        build_causal_lm(ModelConfig(), None, path=str(damaged))


def test_verify_names_a_file_given_as_a_checkpoint_and_a_lineage_that_is_no_object(
    checkpoint, tmp_path
):
    from training.checkpoint import CheckpointError, verify

    file = tmp_path / "model.safetensors"
    file.write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: is a file, not a checkpoint"):
        verify(file)
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    lineage = broken / "lineage.json"
    for content, message in (
        ("", r"lineage\.json: empty, so the checkpoint has no lineage"),
        ('{"stage": ', r"lineage\.json: not valid JSON \(Expecting value"),
        ("[]", r"lineage\.json: expected a JSON object \(the checkpoint's lineage\), got list"),
    ):
        lineage.write_text(content)
        with pytest.raises(CheckpointError, match=rf"^{re.escape(str(broken))}/{message}"):
            verify(broken)


def test_a_corrupt_tokenizer_file_and_an_impossible_vocabulary_are_named(sft_workspace, tmp_path):
    from training.tokenizer import TokenizerConfig, load_tokenizer

    corrupt = tmp_path / "tokenizer.json"
    text = (sft_workspace / "tokenizer" / "tokenizer.json").read_text()
    corrupt.write_text(text[:200] + "\x00" + text[200:])
    with pytest.raises(ValueError, match=r"tokenizer\.json: not a readable tokenizer file \(cont"):
        load_tokenizer(tmp_path)
    for size in (-1, 0, 259):
        with pytest.raises(ValueError, match=rf"vocab_size: {size} is below 260, the 256 byte"):
            TokenizerConfig(vocab_size=size)
    assert TokenizerConfig(vocab_size=260).vocab_size == 260


def test_a_corrupt_tokenizer_inside_a_checkpoint_is_named(checkpoint, tmp_path):
    from training.common import load_training_tokenizer

    damaged = tmp_path / "damaged"
    shutil.copytree(checkpoint, damaged)
    text = (damaged / "tokenizer.json").read_text()
    (damaged / "tokenizer.json").write_text(text[:200] + "\x00" + text[200:])
    with pytest.raises(ValueError, match=rf"^{re.escape(str(damaged))}: the tokenizer cannot be"):
        load_training_tokenizer(damaged)


# --- a disk that stops taking writes ------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "what", "reason"),
    [
        (errno.EROFS, "the file system turned read-only", "Read-only file system"),
        (errno.EACCES, "permission was denied", "Permission"),
    ],
)
def test_a_read_only_disk_mid_run_names_the_last_good_save(tmp_path, code, what, reason):
    from training.common import ResourceError, resource_errors

    save = tmp_path / "runs" / "checkpoint-4"
    save.mkdir(parents=True)
    (save / "trainer_state.json").write_text('{"global_step": 4}')
    (save / "model.safetensors").write_bytes(b"weights")
    metrics = tmp_path / "metrics.jsonl"
    with (
        pytest.raises(
            ResourceError,
            match=rf"pretrain: {what} writing under .* last good state: {re.escape(str(save))} "
            rf"\(\[Errno {code}\] {reason}",
        ),
        resource_errors("pretrain", tmp_path / "runs", lambda: 6),
    ):
        raise OSError(code, os.strerror(code), str(metrics))  # as open() on that disk raises
