"""The synthetic task generator, and the embedded sample files that data/make_samples.py writes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from curation.synthetic import (
    KINDS,
    SyntheticTask,
    check_answer,
    generate_tasks,
    heldout_prompts,
    normalise_answer,
    to_chat_rows,
    to_flan_rows,
    to_preference_rows,
    training_tasks,
    write_samples,
)

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "data" / "samples"
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")
PHONE = re.compile(r"\b555-01\d\d\b|\(555\) 01\d-\d{4}")


def read_jsonl(name: str) -> list[dict]:
    lines = (SAMPLES / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


# --- generator ----------------------------------------------------------------------------------


def test_same_seed_same_tasks_and_different_seed_different_tasks() -> None:
    assert generate_tasks(60, seed=3) == generate_tasks(60, seed=3)
    assert generate_tasks(60, seed=3) != generate_tasks(60, seed=4)
    # A shorter run is a prefix of a longer one, so n can grow without reshuffling.
    assert generate_tasks(25, seed=3) == generate_tasks(60, seed=3)[:25]


def test_tasks_cover_every_kind_with_short_prompts_and_answers() -> None:
    tasks = generate_tasks(1000, seed=0)
    assert {t.kind for t in tasks} == set(KINDS)
    assert len({t.id for t in tasks}) == len(tasks)
    for task in tasks:
        assert len(task.prompt) < 200, task
        assert task.answer and " " not in task.answer and len(task.answer) <= 16, task
        assert len(task.distractors) == 3 and task.answer not in task.distractors, task


@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
def test_every_answer_checks_against_itself_and_no_distractor_does(seed: int) -> None:
    for task in generate_tasks(500, seed=seed):
        assert check_answer(task, task.answer), task
        assert check_answer(task.answer, task.answer), task
        for wrong in task.distractors:
            assert not check_answer(task, wrong), (task, wrong)


def test_answers_are_right() -> None:
    """Spot-check the generators' arithmetic and string logic from the prompt text alone."""
    for task in generate_tasks(400, seed=5):
        numbers = [int(n) for n in re.findall(r"\d+", task.prompt)]
        quoted = re.findall(r'"([^"]+)"', task.prompt)
        if task.kind == "add":
            assert int(task.answer) == numbers[0] + numbers[1]
        elif task.kind == "sub":
            big, small = (numbers[1], numbers[0]) if "from" in task.prompt else numbers
            assert int(task.answer) == big - small
        elif task.kind == "mul":
            assert int(task.answer) == numbers[0] * numbers[1]
        elif task.kind == "reverse":
            assert task.answer == quoted[0][::-1]
        elif task.kind == "uppercase":
            assert task.answer == quoted[0].upper()
        elif task.kind == "count_letter":
            assert int(task.answer) == quoted[1].count(quoted[0])
        elif task.kind == "sort_letters":
            assert task.answer == "".join(sorted(quoted[0]))
        elif task.kind == "larger":
            assert int(task.answer) == max(numbers)
        elif task.kind == "capital":
            country = task.prompt.rsplit("capital of ", 1)[1].rstrip("?")
            assert f"The capital of {country} is {task.answer}." in task.prompt


@pytest.mark.parametrize(
    "output",
    ["68", "68.", "  68 \n", "The answer is 68.", "Answer: 68", "**68**", '"68"',
     "68\nbecause 23 + 45 = 68", "23 + 45 = 68, so\nFinal answer: 68"],
)  # fmt: skip
def test_check_answer_accepts_right_answer_phrasings(output: str) -> None:
    task = SyntheticTask("t", "add", "What is 23 + 45?", "68")
    assert check_answer(task, output)


@pytest.mark.parametrize(
    "output",
    ["69", "6 8", "68 or 69", "680", "The answer is 69.", "Answer: 68\nAnswer: 69",
     "I think it is sixty-eight", "", "It could be 68 but I'm not sure"],
)  # fmt: skip
def test_check_answer_rejects_wrong_or_hedged_answers(output: str) -> None:
    task = SyntheticTask("t", "add", "What is 23 + 45?", "68")
    assert not check_answer(task, output)


def test_check_answer_folds_case_except_where_case_is_the_task() -> None:
    capital = SyntheticTask("t", "capital", "...", "Pellholt")
    assert check_answer(capital, "pellholt") and check_answer(capital, "Answer: PELLHOLT")
    upper = SyntheticTask("t", "uppercase", 'Write "garden" in capital letters.', "GARDEN")
    assert check_answer(upper, "GARDEN.") and not check_answer(upper, "garden")
    assert normalise_answer("  The  Cat. ") == "the cat"


def test_flan_and_chat_rows_have_the_required_fields() -> None:
    tasks = generate_tasks(20, seed=1)
    for task, row in zip(tasks, to_flan_rows(tasks), strict=True):
        assert row == {
            "inputs": task.prompt,
            "targets": task.answer,
            "task_source": "Synthetic",
            "task_name": f"synthetic_{task.kind}",
            "template_type": "zs_noopt",
        }
    for task, row in zip(tasks, to_chat_rows(tasks), strict=True):
        assert row["id"] == task.id
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert row["messages"][1]["content"] == task.answer
        assert row["meta"] == {"task": task.kind, "answer": task.answer}


def test_preference_rows_rank_the_one_right_completion_highest() -> None:
    tasks = generate_tasks(200, seed=2)
    rows = to_preference_rows(tasks, seed=2)
    assert rows == to_preference_rows(tasks, seed=2)
    first_positions = set()
    for task, row in zip(tasks, rows, strict=True):
        assert row["instruction"] == task.prompt and row["correct_answers"] == [task.answer]
        completions = row["completions"]
        assert len(completions) == 4
        right = [c for c in completions if check_answer(task, c["response"])]
        assert len(right) == 1
        best = max(completions, key=lambda c: c["overall_score"])
        assert best is right[0]
        first_positions.add(completions.index(right[0]))
        for completion in completions:
            assert isinstance(completion["overall_score"], float)
            for aspect in ("helpfulness", "honesty", "instruction_following", "truthfulness"):
                assert completion["annotations"][aspect]["Rating"] in {"1", "2", "3", "4", "5"}
    assert len(first_positions) > 1  # the right answer is not always in the same slot


def test_write_samples_writes_three_files(tmp_path: Path) -> None:
    paths = write_samples(tmp_path / "out", n=30, seed=9, chat_n=50)
    assert sorted(p.name for p in paths.values()) == [
        "synthetic_chat.jsonl",
        "synthetic_flan.jsonl",
        "synthetic_ultrafeedback.jsonl",
    ]
    for name, path in paths.items():
        assert len(path.read_text(encoding="utf-8").splitlines()) == (50 if name == "chat" else 30)


# --- the embedded sample files ------------------------------------------------------------------


def test_make_samples_reproduces_the_committed_files_byte_for_byte(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "data" / "make_samples.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        cwd=tmp_path,  # the script must not depend on the working directory
    )
    committed = sorted(p.name for p in SAMPLES.glob("*.jsonl"))
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == committed
    for name in committed:
        assert (tmp_path / name).read_bytes() == (SAMPLES / name).read_bytes(), name


def test_samples_are_small_utf8_jsonl() -> None:
    total = sum(p.stat().st_size for p in SAMPLES.iterdir())
    # 8,000 synthetic chat rows (1.6 MiB) are most of it: the demo's SFT set needs them.
    assert total < 5 * 1024 * 1024
    for path in SAMPLES.glob("*.jsonl"):
        data = path.read_bytes()
        assert data.endswith(b"\n") and b"\r" not in data, path.name
        for line in data.decode("utf-8").splitlines():
            assert isinstance(json.loads(line), dict), path.name


def _walk(node: dict, depth: int = 1):
    yield node, depth
    for child in node["replies"]:
        yield from _walk(child, depth + 1)


NODE_KEYS = {
    "message_id", "parent_id", "text", "role", "lang", "review_result", "deleted",
    "synthetic", "rank", "labels", "detoxify", "replies",
}  # fmt: skip


def test_oasst_trees_format_and_special_cases() -> None:
    trees = read_jsonl("oasst_trees.jsonl")
    assert len(trees) >= 40
    langs, states, max_depth, deleted, texts = set(), [], 0, 0, []
    for tree in trees:
        assert set(tree) == {"message_tree_id", "tree_state", "prompt"}
        prompt = tree["prompt"]
        assert prompt["message_id"] == tree["message_tree_id"] and prompt["parent_id"] is None
        assert prompt["role"] == "prompter" and prompt["rank"] is None
        states.append(tree["tree_state"])
        langs.add(prompt["lang"])
        for node, depth in _walk(prompt):
            assert set(node) >= NODE_KEYS
            max_depth = max(max_depth, depth)
            deleted += node["deleted"]
            texts.append(node["text"])
            for name, label in node["labels"].items():
                assert set(label) == {"value", "count"} and 0 <= label["value"] <= 1, name
            for child in node["replies"]:
                assert child["parent_id"] == node["message_id"]
                assert child["role"] != node["role"]  # turns alternate
            ranks = sorted(c["rank"] for c in node["replies"] if c["rank"] is not None)
            assert ranks == list(range(len(ranks)))
    assert {"en", "de", "es", "fr"} <= langs
    assert max_depth >= 4  # prompter → assistant → prompter → assistant
    assert deleted >= 1
    assert states.count("ready_for_export") >= 2
    spam = [t for t in trees if t["tree_state"] == "aborted_low_grade"]
    assert len(spam) == 1
    assert spam[0]["prompt"]["review_result"] is False
    assert spam[0]["prompt"]["labels"]["spam"]["value"] == 1.0
    joined = "\n".join(texts)
    assert "References:\n[1]" in joined and "doi:10.1234/abcd" in joined
    assert EMAIL.search(joined) and PHONE.search(joined)
    assert "idiot" in joined  # the unsafe reply
    assert "What is the difference between weather and climate?" in joined
    assert "What's the difference between weather and climate?" in joined


def test_oasst_messages_flat_format() -> None:
    messages = read_jsonl("oasst_messages.jsonl")
    by_id = {m["message_id"]: m for m in messages}
    assert len(by_id) == len(messages)
    roots = [m for m in messages if m["parent_id"] is None]
    assert len(roots) >= 15
    for message in messages:
        assert message["role"] in ("prompter", "assistant")
        if message["parent_id"] is not None:
            parent = by_id[message["parent_id"]]
            assert parent["message_tree_id"] == message["message_tree_id"]
        labels = message["labels"]
        if labels is not None:
            assert len(labels["name"]) == len(labels["value"]) == len(labels["count"])
    assert any(m["deleted"] for m in messages)
    assert any(m["labels"] is None for m in messages)
    assert any(m["rank"] == 2 for m in messages)
    tree_ids = {t["message_tree_id"] for t in read_jsonl("oasst_trees.jsonl")}
    assert tree_ids.isdisjoint(m["message_tree_id"] for m in messages)


def test_flan_covers_sources_templates_options_and_filter_cases() -> None:
    rows = read_jsonl("flan.jsonl")
    assert len(rows) >= 150
    for row in rows:
        assert set(row) == {"inputs", "targets", "task_source", "task_name", "template_type"}
    assert {r["task_source"] for r in rows} == {"Flan2021", "P3", "NIv2", "CoT", "Dialog"}
    assert {r["template_type"] for r in rows} == {"zs_opt", "zs_noopt", "fs_opt", "fs_noopt"}
    inputs = [r["inputs"] for r in rows]
    assert any("OPTIONS:\n- " in i for i in inputs)
    assert any("OPTIONS:\n(A) " in i for i in inputs)
    assert any("So the answer is" in r["targets"] for r in rows if r["task_source"] == "CoT")
    assert any("References:\n[1]" in r["targets"] for r in rows)
    assert any(EMAIL.search(r["inputs"] + r["targets"]) for r in rows)
    as_text = [json.dumps(r, sort_keys=True) for r in rows]
    assert len(set(as_text)) == len(as_text) - 1  # exactly one exact duplicate


def test_hh_pairs_share_the_prefix_and_differ_in_the_last_turn() -> None:
    rows = read_jsonl("hh_rlhf.jsonl")
    assert len(rows) >= 60
    multi_turn = 0
    for row in rows:
        chosen, rejected = row["chosen"], row["rejected"]
        assert chosen.startswith("\n\nHuman: ") and rejected.startswith("\n\nHuman: ")
        cut = chosen.rindex("\n\nAssistant:") + len("\n\nAssistant:")
        assert rejected[:cut] == chosen[:cut]
        assert "\n\nHuman:" not in chosen[cut:] and "\n\nHuman:" not in rejected[cut:]
        assert chosen[cut:] != rejected[cut:]
        multi_turn += chosen.count("\n\nHuman:") > 1
    assert multi_turn >= 5


@pytest.mark.parametrize("name", ["ultrafeedback.jsonl", "synthetic_ultrafeedback.jsonl"])
def test_ultrafeedback_format(name: str) -> None:
    rows = read_jsonl(name)
    assert len(rows) >= 40
    ratings = set()
    for row in rows:
        assert row["instruction"] and len(row["completions"]) == 4
        for completion in row["completions"]:
            assert completion["model"] and completion["response"]
            assert isinstance(completion["overall_score"], float)
            for aspect in ("helpfulness", "honesty", "instruction_following", "truthfulness"):
                rating = completion["annotations"][aspect]["Rating"]
                assert rating in {"1", "2", "3", "4", "5", "N/A"}
                ratings.add(rating)
    if name == "ultrafeedback.jsonl":
        assert "N/A" in ratings


def test_pretrain_corpus_size_and_shape() -> None:
    rows = read_jsonl("pretrain.jsonl")
    assert all(set(r) == {"id", "text"} and r["text"] for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)
    size = sum(len(r["text"].encode("utf-8")) for r in rows)
    assert 1_000_000 <= size <= 1_500_000
    assert any("7 plus 5 is 12" in r["text"] or " plus " in r["text"] for r in rows)


def test_synthetic_samples_match_the_generator() -> None:
    chat = read_jsonl("synthetic_chat.jsonl")
    flan = read_jsonl("synthetic_flan.jsonl")
    n_chat, n = len(chat), len(flan)
    assert n_chat > n  # the SFT set's tasks come from the chat file
    stream = training_tasks(n_chat + 2 * n, seed=0)  # one stream, one slice per format
    assert chat == to_chat_rows(stream[:n_chat])
    assert flan == to_flan_rows(stream[n_chat : n_chat + n])


def test_no_sample_file_holds_a_heldout_prompt() -> None:
    """The evaluation tasks (seed 1234) stay out of every training file, even where a small
    task space makes the same prompt come up in both streams."""
    heldout = heldout_prompts()
    assert len(heldout) > 150
    prompts = [row["messages"][0]["content"] for row in read_jsonl("synthetic_chat.jsonl")]
    prompts += [row["inputs"] for row in read_jsonl("synthetic_flan.jsonl")]
    prompts += [row["instruction"] for row in read_jsonl("synthetic_ultrafeedback.jsonl")]
    assert len(prompts) > 8000
    assert not heldout & set(prompts)
    # The unfiltered stream does collide: the filter is what keeps them apart.
    assert heldout & {task.prompt for task in generate_tasks(len(prompts), seed=0)}


def test_training_tasks_skip_heldout_prompts_and_keep_stream_ids() -> None:
    tasks = training_tasks(300, seed=0)
    stream = generate_tasks(400, seed=0)
    heldout = heldout_prompts()
    skipped = [t for t in stream[: int(tasks[-1].id.rsplit("-", 1)[1]) + 1] if t.prompt in heldout]
    assert skipped  # some of the first 300 came up in the held-out set
    assert tasks == [t for t in stream if t.prompt not in heldout][:300]
    with pytest.raises(ValueError, match="held-out evaluation seed"):
        training_tasks(5, seed=1234)


def test_readme_ids_exist_in_the_oasst_files() -> None:
    """The README's table of special rows names real ids, so filter tests can rely on it."""
    readme = (SAMPLES / "README.md").read_text(encoding="utf-8")
    listed = set(
        re.findall(r"`([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})`", readme)
    )
    text = (SAMPLES / "oasst_trees.jsonl").read_text(encoding="utf-8")
    text += (SAMPLES / "oasst_messages.jsonl").read_text(encoding="utf-8")
    assert len(listed) >= 12
    assert all(f'"{uid}"' in text for uid in listed)
