"""Seeded synthetic tasks with answers a program can check.

The embedded default trains a tiny model for minutes, so open-ended quality judgements tell us
little about it. These tasks have one short right answer (a number or a word), which lets later
stages measure, without a judge, whether SFT, a reward model or DPO/PPO actually moved accuracy.

Everything here is stdlib only: ``data/make_samples.py`` imports it to write the committed sample
files, and it must reproduce them byte for byte on any machine.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


def _split(text: str) -> tuple[str, ...]:
    return tuple(text.split())


KINDS: tuple[str, ...] = (
    "add",
    "sub",
    "mul",
    "reverse",
    "uppercase",
    "count_letter",
    "sort_letters",
    "capital",
    "nth_item",
    "larger",
)

# Kinds whose answer is defined by its letter case: "garden" is a wrong answer to "write garden in
# capital letters", so the check must not fold case for them.
CASE_SENSITIVE_KINDS: frozenset[str] = frozenset({"uppercase"})

# Common, non-palindromic words whose letters are not already in order, so that reversing or
# sorting always changes them and a copied prompt word never passes as the answer.
WORDS: tuple[str, ...] = _split(
    """
    garden river planet window candle forest silver pocket bottle market dragon pencil summer
    winter basket castle button rocket island jacket ladder mirror orange pepper rabbit saddle
    tunnel violet wallet yellow bridge camera desert engine flower guitar hammer kitten lemon
    melon nickel parrot puzzle quiet ribbon salmon ticket velvet walrus zipper apple bread
    chair cloud dance eagle frost grape horse juice knife light mouse night ocean piano queen
    stone table uncle voice water zebra storm tiger spoon sheep plate honey field shell train
    wheel smile cat dog sun map cup hat pen bus jam owl web pig net kite lamp rose drum milk
    sand nest frog moon ship tree book duck fish gold hive king leaf road salt wolf yarn
    """
)

_SYLLABLES_COUNTRY: tuple[str, ...] = _split(
    """
    vel mor ra zan dor or rin ka lis tan bel qua ste mi no vis tor al ba cen di eth fa gul hes
    ix
    """
)
_SYLLABLES_CITY: tuple[str, ...] = _split(
    """
    tusk pell quill brom cass dun fen gor holt jar kel lom mab nor pim rook sel tam ulm vos
    wick yell zor arn
    """
)

ORDINALS: tuple[str, ...] = ("1st", "2nd", "3rd", "4th", "5th", "6th")
ORDINAL_WORDS: tuple[str, ...] = ("first", "second", "third", "fourth", "fifth", "sixth")


@dataclass(frozen=True)
class SyntheticTask:
    """One task. ``distractors`` are plausible wrong answers (a near-miss number, a neighbouring
    list item, another capital from the same fact table) used to build preference data."""

    id: str
    kind: str
    prompt: str
    answer: str
    distractors: tuple[str, ...] = ()


# --- generation -------------------------------------------------------------------------------


def _numbers_wrong(answer: int, candidates: Iterable[int], rng: random.Random) -> tuple[str, ...]:
    """Three distinct wrong, non-negative numbers: the given plausible mistakes first, then
    off-by-small amounts so that every task has exactly three."""
    out: list[int] = []
    for value in candidates:
        if value != answer and value >= 0 and value not in out:
            out.append(value)
    step = 1
    while len(out) < 3:
        for value in (answer + step, answer - step):
            if value != answer and value >= 0 and value not in out and len(out) < 3:
                out.append(value)
        step += rng.randint(1, 3)
    return tuple(str(v) for v in out[:3])


def _words_wrong(answer: str, candidates: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    # Truncations and a doubled last letter come last: always wrong, so every task has three.
    fallbacks = (answer[:-1], answer[1:], answer + answer[-1], answer[:-1] + answer[-1] * 2)
    for value in (*candidates, *fallbacks):
        if value and value != answer and value not in out:
            out.append(value)
    return tuple(out[:3])


def _swap_two(word: str, rng: random.Random) -> str:
    """The word with two different adjacent letters swapped: a typical near-miss."""
    positions = [i for i in range(len(word) - 1) if word[i] != word[i + 1]]
    if not positions:
        return word
    i = rng.choice(positions)
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def _arithmetic(kind: str, rng: random.Random) -> tuple[str, str, tuple[str, ...]]:
    if kind == "add":
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        value = a + b
        prompt = rng.choice(("What is {a} + {b}?", "Add {a} and {b}.", "Compute {a} plus {b}."))
        wrong = (value + 1, value - 10, abs(a - b))
    elif kind == "sub":
        a, b = rng.randint(10, 99), rng.randint(1, 60)
        if b > a:
            a, b = b, a
        value = a - b
        prompt = rng.choice(
            ("What is {a} - {b}?", "Subtract {b} from {a}.", "Compute {a} minus {b}.")
        )
        wrong = (value - 1, value + 10, a + b)
    else:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        value = a * b
        prompt = rng.choice(
            ("What is {a} * {b}?", "Multiply {a} by {b}.", "Compute {a} times {b}.")
        )
        wrong = (value + a, value - b, a + b)
    return prompt.format(a=a, b=b), str(value), _numbers_wrong(value, wrong, rng)


def _string_edit(kind: str, rng: random.Random) -> tuple[str, str, tuple[str, ...]]:
    word = rng.choice(WORDS)
    if kind == "reverse":
        answer = word[::-1]
        prompt = rng.choice(('Reverse the word "{w}".', 'Write "{w}" backwards.'))
        wrong = (word, _swap_two(answer, rng), answer[1:] + answer[0])
        return prompt.format(w=word), answer, _words_wrong(answer, wrong)
    if kind == "uppercase":
        answer = word.upper()
        prompt = rng.choice(('Write "{w}" in capital letters.', 'Convert "{w}" to uppercase.'))
        wrong = (word, word.capitalize(), answer[:-1])
        return prompt.format(w=word), answer, _words_wrong(answer, wrong)
    if kind == "count_letter":
        # Mostly a letter that occurs (often more than once); sometimes one that does not, so
        # "0" is a real answer and not a give-away.
        if rng.random() < 0.85:
            letter = rng.choice(word)
        else:
            letter = rng.choice([c for c in "abcdefghijklmnopqrstuvwxyz" if c not in word])
        value = word.count(letter)
        prompt = rng.choice(
            (
                'How many times does the letter "{c}" appear in "{w}"?',
                'Count the letter "{c}" in "{w}".',
            )
        )
        wrong = (value + 1, len(word), value - 1)
        return prompt.format(c=letter, w=word), str(value), _numbers_wrong(value, wrong, rng)
    # sort_letters
    answer = "".join(sorted(word))
    prompt = rng.choice(
        (
            'Sort the letters of "{w}" alphabetically.',
            'Put the letters of "{w}" in alphabetical order.',
        )
    )
    wrong = (word, answer[::-1], _swap_two(answer, rng))
    return prompt.format(w=word), answer, _words_wrong(answer, wrong)


def _made_up_name(rng: random.Random, syllables: Sequence[str], parts: int) -> str:
    return "".join(rng.choice(syllables) for _ in range(parts)).capitalize()


def _lookup(kind: str, rng: random.Random) -> tuple[str, str, tuple[str, ...]]:
    if kind == "capital":
        countries: list[str] = []
        cities: list[str] = []
        while len(countries) < 3:
            country = _made_up_name(rng, _SYLLABLES_COUNTRY, rng.randint(2, 3))
            city = _made_up_name(rng, _SYLLABLES_CITY, rng.randint(1, 2))
            # Distinct names keep the question unambiguous and the distractors really wrong.
            if country not in countries + cities and city not in cities + countries:
                countries.append(country)
                cities.append(city)
        target = rng.randrange(3)
        facts = " ".join(
            f"The capital of {c} is {k}." for c, k in zip(countries, cities, strict=True)
        )
        prompt = f"Facts: {facts} What is the capital of {countries[target]}?"
        wrong = [cities[i] for i in range(3) if i != target] + [countries[target]]
        return prompt, cities[target], _words_wrong(cities[target], wrong)
    # nth_item
    size = rng.randint(4, 6)
    items: list[str] = []
    while len(items) < size:
        word = rng.choice(WORDS)
        if word not in items:
            items.append(word)
    index = rng.randrange(size)
    if rng.random() < 0.5:
        prompt = f"List: {', '.join(items)}. What is the {ORDINALS[index]} item?"
    else:
        prompt = f"Here is a list: {', '.join(items)}. Which item is {ORDINAL_WORDS[index]}?"
    neighbours = [items[i] for i in (index + 1, index - 1, index + 2) if 0 <= i < size]
    return prompt, items[index], _words_wrong(items[index], neighbours + items)


def _comparison(rng: random.Random) -> tuple[str, str, tuple[str, ...]]:
    if rng.random() < 0.25:
        # Digit-swapped pairs (47 vs 74) test place value, not just the first digit.
        tens, ones = rng.sample(range(1, 10), 2)
        a, b = tens * 10 + ones, ones * 10 + tens
    else:
        a, b = rng.sample(range(1, 1000), 2)
    prompt = rng.choice(("Which is larger, {a} or {b}?", "Which number is bigger: {a} or {b}?"))
    value = max(a, b)
    return prompt.format(a=a, b=b), str(value), _numbers_wrong(value, (min(a, b), a + b), rng)


_GENERATORS: dict[str, Callable[[str, random.Random], tuple[str, str, tuple[str, ...]]]] = {
    "add": _arithmetic,
    "sub": _arithmetic,
    "mul": _arithmetic,
    "reverse": _string_edit,
    "uppercase": _string_edit,
    "count_letter": _string_edit,
    "sort_letters": _string_edit,
    "capital": _lookup,
    "nth_item": _lookup,
    "larger": lambda _kind, rng: _comparison(rng),
}


def generate_tasks(n: int, seed: int = 0) -> list[SyntheticTask]:
    """``n`` tasks, the same for the same seed on every machine.

    Kinds go round-robin so any prefix is balanced, and one generator stream is consumed in
    order, so ``generate_tasks(k, s)`` is a prefix of ``generate_tasks(n, s)`` for ``k <= n``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    tasks: list[SyntheticTask] = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        prompt, answer, distractors = _GENERATORS[kind](kind, rng)
        tasks.append(
            SyntheticTask(
                id=f"synthetic-{seed}-{i:05d}",
                kind=kind,
                prompt=prompt,
                answer=answer,
                distractors=distractors,
            )
        )
    return tasks


# --- checking ---------------------------------------------------------------------------------

_QUOTES = "\"'`*“”‘’"
# "Answer: X", "The answer is X", "Final answer: X": the last one in the output wins, because a
# reasoning model may mention intermediate values first.
_ANSWER_AT = re.compile(
    r"\b(?:final\s+)?answer\s*(?::|is)\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE
)


def normalise_answer(text: str, case_sensitive: bool = False) -> str:
    """Collapse whitespace, drop a trailing period and wrapping quotes or markdown emphasis, and
    fold case unless asked not to. Nothing else is forgiven: "68 or 69" stays wrong."""
    text = " ".join(text.split())
    previous = None
    while text != previous:
        previous = text
        text = text.rstrip(".").strip()
        if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
            text = text[1:-1].strip()
    return text if case_sensitive else text.casefold()


def check_answer(task_or_answer: SyntheticTask | str, output: str) -> bool:
    """Whether ``output`` gives the answer: the whole output, its first non-empty line, or its
    final "Answer: X" / "the answer is X" must equal it after ``normalise_answer``."""
    if isinstance(task_or_answer, SyntheticTask):
        answer = task_or_answer.answer
        case_sensitive = task_or_answer.kind in CASE_SENSITIVE_KINDS
    else:
        answer = task_or_answer
        case_sensitive = False
    expected = normalise_answer(answer, case_sensitive)
    if not expected:
        return False
    candidates = [output]
    lines = [line for line in output.splitlines() if line.strip()]
    if lines:
        candidates.append(lines[0])
    stated = list(_ANSWER_AT.finditer(output))
    if stated:
        candidates.append(stated[-1].group(1))
    return any(normalise_answer(c, case_sensitive) == expected for c in candidates)


# --- export formats ---------------------------------------------------------------------------


def to_flan_rows(tasks: Iterable[SyntheticTask]) -> list[dict]:
    """FLAN collection rows (zero-shot, no options)."""
    return [
        {
            "inputs": t.prompt,
            "targets": t.answer,
            "task_source": "Synthetic",
            "task_name": f"synthetic_{t.kind}",
            "template_type": "zs_noopt",
        }
        for t in tasks
    ]


def to_chat_rows(tasks: Iterable[SyntheticTask]) -> list[dict]:
    """Generic chat JSONL: one user turn, the answer as the assistant turn, the answer in meta so
    an evaluator can check generations without re-deriving it."""
    return [
        {
            "id": t.id,
            "messages": [
                {"role": "user", "content": t.prompt},
                {"role": "assistant", "content": t.answer},
            ],
            "meta": {"task": t.kind, "answer": t.answer},
        }
        for t in tasks
    ]


_MODELS = ("tutor-13b", "quill-7b", "sparrowlet-3b", "echo-base-1b")
_RIGHT_STYLES = ("{a}", "{a}", "The answer is {a}.", "Answer: {a}")
_WRONG_STYLES = ("{a}", "I think it is {a}.", "{a}.")


def _annotations(help_: str, honesty: str, follow: str, truth: str, why: str) -> dict:
    return {
        aspect: {"Rating": rating, "Rationale": why}
        for aspect, rating in (
            ("helpfulness", help_),
            ("honesty", honesty),
            ("instruction_following", follow),
            ("truthfulness", truth),
        )
    }


def to_preference_rows(tasks: Iterable[SyntheticTask], seed: int = 0) -> list[dict]:
    """UltraFeedback rows: the prompt as ``instruction`` and four completions, one right (rated
    5, or 4 when it is wordy) and three plausible wrong ones (rated 1 or 2), in a seeded order so
    the right one is not always first. A preference pair built from these has a known winner.
    Rationales are one word on purpose: 400 rows stay small enough to embed in the repository."""
    rng = random.Random(seed)
    rows = []
    for task in tasks:
        wrong = list(task.distractors) or list(
            _numbers_wrong(int(task.answer), (), rng)
            if task.answer.isdigit()
            else _words_wrong(task.answer, (task.answer[::-1],))
        )
        models = list(_MODELS)
        rng.shuffle(models)
        right_style = rng.choice(_RIGHT_STYLES)
        rating = "5" if right_style == "{a}" else "4"
        completions = [
            {
                "model": models[0],
                "response": right_style.format(a=task.answer),
                "annotations": _annotations(rating, "5", rating, "5", "Correct."),
                "overall_score": 9.0 if rating == "5" else 8.0,
                "fine-grained_score": 5.0 if rating == "5" else 4.5,
            }
        ]
        for model, value in zip(models[1:], wrong[:3], strict=True):
            rating = rng.choice(("1", "2"))
            completions.append(
                {
                    "model": model,
                    "response": rng.choice(_WRONG_STYLES).format(a=value),
                    "annotations": _annotations(rating, "2", "3", "1", "Wrong."),
                    "overall_score": 2.0 if rating == "1" else 3.0,
                    "fine-grained_score": (int(rating) + 2 + 3 + 1) / 4,
                }
            )
        rng.shuffle(completions)
        rows.append(
            {
                "source": "synthetic",
                "instruction": task.prompt,
                "models": [c["model"] for c in completions],
                "completions": completions,
                "correct_answers": [task.answer],
                "incorrect_answers": wrong[:3],
            }
        )
    return rows


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """UTF-8, one compact object per line, "\\n" endings; written to a temp file and renamed so a
    reader never sees half a file."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(text.encode("utf-8"))
    os.replace(tmp, path)


# The evaluation stages grade models on ``generate_tasks(n, HELDOUT_SEED)`` (200 tasks in the
# demo). Small task spaces (121 products, ~130 words to reverse) make a training prompt repeat a
# held-out one by chance, so the sample files leave out every prompt of the first
# ``HELDOUT_TASKS`` held-out tasks: a score on them never rewards memorising a training row.
HELDOUT_SEED = 1234
HELDOUT_TASKS = 200


def heldout_prompts(n: int = HELDOUT_TASKS, seed: int = HELDOUT_SEED) -> frozenset[str]:
    """Prompts of the held-out evaluation tasks, which training data must not contain."""
    return frozenset(task.prompt for task in generate_tasks(n, seed))


def training_tasks(n: int, seed: int = 0) -> list[SyntheticTask]:
    """The first ``n`` tasks of the seeded stream whose prompt is not a held-out one; ids keep
    their place in the stream, so a skipped task leaves a gap rather than renumbering."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if seed == HELDOUT_SEED:
        raise ValueError(f"seed {seed} is the held-out evaluation seed; pick another")
    excluded = heldout_prompts()
    rng = random.Random(seed)
    tasks: list[SyntheticTask] = []
    i = 0
    while len(tasks) < n:
        kind = KINDS[i % len(KINDS)]
        prompt, answer, distractors = _GENERATORS[kind](kind, rng)
        if prompt not in excluded:
            tasks.append(
                SyntheticTask(f"synthetic-{seed}-{i:05d}", kind, prompt, answer, distractors)
            )
        i += 1
    return tasks


def write_samples(
    out_dir: Path, n: int = 400, seed: int = 0, chat_n: int | None = None
) -> dict[str, Path]:
    """Write ``synthetic_chat.jsonl`` (``chat_n`` tasks, ``n`` when unset),
    ``synthetic_flan.jsonl`` and ``synthetic_ultrafeedback.jsonl`` (``n`` tasks each); returns
    format name → path. No prompt of the held-out evaluation tasks is written (see
    ``training_tasks``).

    Each format gets its own slice of one seeded stream: the same task in two formats would be an
    exact cross-source duplicate, and deduplication would rightly remove most of the demo data.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chat_n = n if chat_n is None else chat_n
    stream = training_tasks(chat_n + 2 * n, seed)
    by_format = {
        "chat": stream[:chat_n],
        "flan": stream[chat_n : chat_n + n],
        "ultrafeedback": stream[chat_n + n :],
    }
    paths = {
        "chat": out_dir / "synthetic_chat.jsonl",
        "flan": out_dir / "synthetic_flan.jsonl",
        "ultrafeedback": out_dir / "synthetic_ultrafeedback.jsonl",
    }
    _write_jsonl(paths["chat"], to_chat_rows(by_format["chat"]))
    _write_jsonl(paths["flan"], to_flan_rows(by_format["flan"]))
    _write_jsonl(paths["ultrafeedback"], to_preference_rows(by_format["ultrafeedback"], seed))
    return paths
