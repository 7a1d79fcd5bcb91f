"""OptionsFilter on real frames: detection and near misses, the rewrite into a plain question,
letter answers mapped to their option (or dropped), keep_fraction, per-source policies, the
embedded FLAN sample, and odd input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest

from curation.filters import options
from curation.filters.base import FINDINGS, REWRITES, Batch, Findings, Policy
from curation.filters.options import (
    BLOCKS,
    KEPT_REASON,
    OPTIONS_PATTERN,
    RULES,
    OptionsFilter,
    has_options,
    kept_by_fraction,
    resolve,
    strip_options,
)
from curation.ingest import ingest
from curation.schema import CONVERSATIONS, frame

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


def conversation(row_id: str, *turns: str, source: str = "flan") -> dict:
    """Turns alternate user, assistant, user, ..."""
    roles = ("user", "assistant")
    return {
        "id": row_id,
        "source": source,
        "source_id": row_id,
        "lang": "en",
        "messages": [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)],
        "meta": "{}",
        "provenance": None,
    }


def batch(*rows: dict) -> Batch:
    return Batch.from_conversations(frame(list(rows), CONVERSATIONS))


def run(prompt: str, answer: str | None = None, f: OptionsFilter | None = None) -> Findings:
    turns = (prompt,) if answer is None else (prompt, answer)
    return (f or OptionsFilter())(batch(conversation("r0", *turns)))


def contents(findings: Findings, row_id: str = "r0") -> dict[int, str]:
    rows = findings.rewrites.filter(pl.col("row_id") == row_id)
    return dict(zip(rows["turn"], rows["content"], strict=True))


# ---- detection -------------------------------------------------------------------------------

DETECTED = [
    "Is it?\n\nOPTIONS:\n- yes\n- no",
    "Which one?\nOPTIONS:\n(A) red\n(B) blue",
    "Which one? Options: (a) red (b) blue",
    "Choose from:\n- cats\n- dogs",
    "Choose your answer from:\n * one\n * two",
    "Select from the following.\n- a\n- b",
    "Select from:\n- a\n- b",
    "Pick the answer from:\n• a\n• b",
    "Possible answers:\n1) a\n2) b",
    "Available choices:\n[a] x\n[b] y",
    "Answer choices: (A) 4 (B) 5",
    "Q: which planet?\n(A) Mars\n(B) Venus\nA:",
    "Q: which planet?\n(A) Mars\nnot this one\n(B) Venus",
    # Header-less lettered lists: three in a row in one style, or two after a question mark.
    "Which planet is largest? A. Mars B. Jupiter C. Venus D. Earth",
    "Which river is longest?\nA. Nile\nB. Danube\nC. Thames\nAnswer:",
    "The opposite of hot is ___. a) cold b) warm c) red",
    "Water freezes at ___ (a) 0 °C (b) 10 °C (c) 100 °C",
    "Pick a metal: [A] iron [B] wood [C] glass",
    "Is the moon a planet? (A) yes (B) no",
    "Is the moon a planet?\nA) yes\nB) no",
    # Non-English headers.
    "Quelle est la capitale du Pérou ? Choisissez parmi : (A) Lima (B) Quito",
    "Quelle couleur ? Réponses possibles :\n- rouge\n- vert",
    "¿Es el sol una estrella? Opciones: - sí - no",
    "¿Cuál es más grande? Elige entre: a) el sol b) la luna",
    "Ist der Mond ein Planet?\nOptionen:\n- ja\n- nein",
    "Welche Farbe hat Gras? Antwortmöglichkeiten: (A) grün (B) blau",
    "La luna è un pianeta? Opzioni: - sì - no",
    "A lua é um planeta? Opções: - sim - não",
    "Is de maan een planeet?\nOpties:\n- ja\n- nee",
    # FLAN v2 headers with its many markers, inline or one per line.
    "Is the review positive? Choices: [+] yes [+] no",
    "Is the review positive?\nChoices:\n[+] yes\n[+] no",
    "Does it follow? Possible answers: (I) yes (II) no",
    "Does it follow?\nPick your answer from:\n(I) yes\n(II) it is not possible to tell\n(III) no",
    "Continue the story. Pick from: a). he ran home b). he sat down",
    "Multi-choice problem: Is the sky green? 1). yes 2). no",
    "Multi-choice problem: Does the premise entail it?\nA). yes\nB). no",
    "Is it raining?\nChoose your answer from:\n + yes;\n + no;",
    "Is it raining? Available choices: [a]. yes [b]. no",
    "Select your answer from the options. Is this tweet positive?\n[-] yes\n[-] no",
    "Is it a fish?\nPossible answers:\n1). yes\n2). no",
    "Is it a fish? Options are: (1). yes (2). no",
    "Which colour is a ripe banana? Choose one of the following options: red, yellow, blue",
    "Answer with one of the following options: true, false",
    "Is it a fish?\nOPT:\n[a]. yes\n[b]. no",
    "Is it a fish? OPT: (A). yes (B). no",
    "Select the correct answer: Which city is in Italy? A) Rome B) Lyon",
    "Which city is in Italy? Options: [1] Rome [2] Lyon",
    "Is it a fish? Choose from: i. yes ii. no",
    "Is it a fish? Available options: A). yes B). no",
    "Is it a fish?\nSelect from the following:\n * yes\n * no",
    "Is it? Select one:\n- yes\n- no",
    "Is it? Choose the best answer from the choices below.\n(a) yes\n(b) no",
    "Choose the best answer. The cat ___ on the mat.\n(A) sat\n(B) sits",
    # Plain numbers: on the header's line, under a FLAN-only header, after "Multi-choice problem".
    "Multi-choice problem: Is the sky green? 1. yes 2. no",
    "Multi-choice problem: Is the sky green?\n1: yes\n2: no",
    "Is it a fish?\nOPT:\n1. yes\n2. no",
    "Is it a fish? Options: 1. yes 2. no",
    "Is it a fish?\nPossible answers:\n1. yes\n2. no",
]
NOT_DETECTED = [
    "Translate to French: What are my options?",
    "I have two choices - stay or go. What should I do?",
    "Summarise: the committee (a) met and (b) voted.",
    "Write a poem about options trading.",
    "Pet adoptions:\n- cats\n- dogs",
    "My options are limited.\n- I can stay\n- I can go",
    "Step (A) first, then (B).",
    "",
    # "options" and "choose" in prose.
    "You have several options: you could walk or take the bus.",
    "You have several options: you could walk, take the bus, or ride a bike.",
    "Which should I choose? I like both.",
    "I can't choose between them - the red one is cheaper.",
    "Write a multiple choice question about Paris.",
    "Pick the answer that best fits the blank: The sky is ___.",
    # CLI help: flags are no choices.
    "What does this mean?\n\nUsage: tool [OPTIONS] FILE\n\nOptions:\n  -h, --help     Show this "
    "message and exit.\n  -v, --verbose  Print more.\n  --version      Show the version.",
    "OPTIONS\n       -a, --all\n              do not ignore entries starting with .",
    "Explain these:\n## Options\n- `--verbose`: print more\n- `--quiet`: print less",
    # Homework sub-questions are tasks, not choices.
    "Let f(x) = x^2 + 1.\n(a) Prove that f is even.\n(b) Show that f has no real roots.\n"
    "(c) Find the minimum of f.",
    "Homework: (a) prove that 7 is prime (b) show that 9 is not (c) find the next prime",
    "Answer all parts: (a) What is 2+2? (b) What is 3*3? (c) What is 10/2?",
    "(a) Compute 2+2. (b) Calculate 3*3. (c) Determine 10/2.",
    "(A) Explain why the sky is blue.\n(B) Describe a sunset.",
    # A user's own numbered shortlist; letters after a word are prose.
    "I'm choosing between three laptops:\n1. MacBook Air\n2. Dell XPS\n3. ThinkPad\n"
    "Which is best for programming?",
    "Here are my options:\n1. Buy a used car\n2. Lease a new one\n3. Keep taking the bus",
    "My options are:\n1. Buy a used car\n2. Lease a new one",
    "Plan A. We go to the beach. Plan B. We stay home. Plan C. We visit grandma.",
    "I take vitamin A. Also vitamin B. And vitamin C. Which is healthiest?",
    "The paper by A. Smith, B. Jones and C. Lee is good. Summarise it.",
    "The committee (a) met, (b) voted and (c) adjourned. Summarise.",
    "Docker says:\n[+] Running 2/2\n ✔ Container web  Started",
]


@pytest.mark.parametrize("prompt", DETECTED)
def test_detected(prompt: str) -> None:
    assert options.OPTIONS_RE.search(prompt)
    assert run(prompt, "x").ledger["rule"].to_list()[0] == "options.explicit"


@pytest.mark.parametrize("prompt", NOT_DETECTED)
def test_not_detected(prompt: str) -> None:
    assert not has_options(prompt)
    findings = run(prompt, "x")
    assert findings.ledger.height == 0 and findings.rewrites.height == 0


def test_assistant_turns_are_not_checked() -> None:
    assert run("Tell me.", "OPTIONS:\n- yes\n- no").ledger.height == 0


def test_reader_uses_the_same_pattern() -> None:
    from curation.readers import flan

    assert flan.OPTIONS_PATTERN is OPTIONS_PATTERN
    assert RULES == [("options.explicit", OPTIONS_PATTERN)]
    assert flan.has_options("x\nOPTIONS:\n- a\n- b") and not flan.has_options("no options here")


# ---- rewrite ---------------------------------------------------------------------------------


def test_rewrite_removes_block_and_keeps_question() -> None:
    findings = run(
        "Premise: A dog runs.\nHypothesis: An animal moves.\nDoes the premise entail it?\n\n"
        "OPTIONS:\n- yes\n- it is not possible to tell\n- no",
        "yes",
    )
    assert findings.ledger.schema == FINDINGS and findings.rewrites.schema == REWRITES
    (row,) = findings.ledger.iter_rows(named=True)
    assert row["verdict"] == "rewrite" and row["score"] == 1.0
    assert row["reason"] == (
        "removed options: 'OPTIONS:\\n- yes\\n- it is not possible to tell\\n- no'"
    )
    # The answer is one of the options' texts already: only the prompt changes.
    assert contents(findings) == {
        0: "Premise: A dog runs.\nHypothesis: An animal moves.\nDoes the premise entail it?"
    }


@pytest.mark.parametrize(
    ("prompt", "answer", "new_prompt", "new_answer"),
    [
        (
            "Where do fish live?\nOPTIONS:\n(A) trees\n(B) water\nAnswer:",
            "(B)",
            "Where do fish live?\nAnswer:",
            "water",
        ),
        (
            "Where do fish live?\nOPTIONS:\n(A) trees\n(B) water",
            "B",
            "Where do fish live?",
            "water",
        ),
        (
            "Where do fish live?\nOPTIONS:\n(A) trees\n(B) water",
            "b.",
            "Where do fish live?",
            "water",
        ),
        (
            "It becomes ...\nOPTIONS:\n(A) higher\n(B) lower",
            "(A) higher",
            "It becomes ...",
            "higher",
        ),
        (
            "Which is a mammal?\nOPTIONS:\n(A) shark\n(B) dolphin",
            "(B) dolphin. Dolphins breathe air.",
            "Which is a mammal?",
            "dolphin. Dolphins breathe air.",
        ),
        ("Which one? Options: (a) red (b) blue", "b", "Which one?", "blue"),
        ("Which one?\nAvailable choices:\n[a] red\n[b] blue", "[B]", "Which one?", "blue"),
        ("Which one?\nPossible answers:\n1) a cat\n2) a dog", "2", "Which one?", "a dog"),
        ("Q: which planet?\n(A) Mars\n(B) Venus\nA:", "B", "Q: which planet?\nA:", "Venus"),
        (
            "What do you write on a whiteboard with?\nOPTIONS:\n(A) crayon\n(B) marker\n"
            "Let's reason step by step:",
            "Whiteboards take markers. So the answer is (B).",
            "What do you write on a whiteboard with?\nLet's reason step by step:",
            "Whiteboards take markers. So the answer is marker.",
        ),
    ],
)
def test_letter_answers_become_the_option_text(
    prompt: str, answer: str, new_prompt: str, new_answer: str
) -> None:
    findings = run(prompt, answer)
    assert findings.ledger["verdict"].to_list() == ["rewrite"]
    assert contents(findings) == {0: new_prompt, 1: new_answer}
    assert f"answer '{answer}' → '{new_answer}'" in findings.ledger["reason"].item()
    # The Python mirror agrees.
    resolution = resolve(prompt, answer)
    assert (strip_options(resolution.prompt), resolution.answer) == (new_prompt, new_answer)


@pytest.mark.parametrize(
    ("prompt", "answer", "new_prompt", "new_answer"),
    [
        ("Which planet is largest? A. Mars B. Jupiter C. Venus D. Earth", "B", None, "Jupiter"),
        (
            "Which river is longest?\nA. Nile\nB. Danube\nC. Thames\nAnswer:",
            "A. Nile",
            None,
            "Nile",
        ),
        (
            "The opposite of hot is ___. a) cold b) warm c) red",
            "a",
            "The opposite of hot is ___.",
            "cold",
        ),
        (
            "Quelle est la capitale du Pérou ? Choisissez parmi : (A) Lima (B) Quito",
            "A",
            None,
            "Lima",
        ),
        ("Does it follow? Possible answers: (I) yes (II) no", "(II)", "Does it follow?", "no"),
        (
            "Does it follow?\nPick your answer from:\n(I) yes\n(II) no",
            "II",
            "Does it follow?",
            "no",
        ),
        (
            "Multi-choice problem: Is the sky green? 1). yes 2). no",
            "2).",
            "Is the sky green?",
            "no",
        ),
        ("Is it raining? Available choices: [a]. yes [b]. no", "[b].", "Is it raining?", "no"),
        ("Is it a fish? Options are: (1). yes (2). no", "(1).", "Is it a fish?", "yes"),
        ("Is it a fish?\nOPT:\n[a]. yes\n[b]. no", "a", "Is it a fish?", "yes"),
        (
            "Select the correct answer: Which city is in Italy? A) Rome B) Lyon",
            "A",
            "Which city is in Italy?",
            "Rome",
        ),
        ("Which city is in Italy? Options: [1] Rome [2] Lyon", "[1]", None, "Rome"),
        ("Is it a fish? Choose from: i. yes ii. no", "ii", "Is it a fish?", "no"),
        ("Multi-choice problem: Is the sky green? 1. yes 2. no", "2", "Is the sky green?", "no"),
        ("Is it a fish?\nOPT:\n1. yes\n2. no", "1.", "Is it a fish?", "yes"),
    ],
)
def test_new_styles_rewrite_and_resolve(
    prompt: str, answer: str, new_prompt: str | None, new_answer: str
) -> None:
    """The rewrite of the newer styles: the options go (the question before them stays), and a
    label answer becomes its option's text, in polars and in the Python mirror."""
    new_prompt = new_prompt or prompt.split("?")[0] + "?"
    if "Answer:" in prompt:
        new_prompt += "\nAnswer:"
    findings = run(prompt, answer)
    assert findings.ledger["verdict"].to_list() == ["rewrite"]
    assert contents(findings) == {0: new_prompt, 1: new_answer}
    resolution = resolve(prompt, answer)
    assert (strip_options(resolution.prompt), resolution.answer) == (new_prompt, new_answer)


@pytest.mark.parametrize(
    ("prompt", "answer", "new_prompt"),
    [
        ("Is it raining?\nChoose your answer from:\n + yes;\n + no;", "no", "Is it raining?"),
        (
            "Select your answer from the options. Is this tweet positive?\n[-] yes\n[-] no",
            "yes",
            "Is this tweet positive?",
        ),
        (
            "Which colour is a ripe banana? Choose one of the following options: red, yellow, blue",
            "yellow",
            "Which colour is a ripe banana?",
        ),
        ("¿Es el sol una estrella? Opciones: - sí - no", "sí", "¿Es el sol una estrella?"),
        ("Ist der Mond ein Planet?\nOptionen:\n- ja\n- nein", "nein", "Ist der Mond ein Planet?"),
        # "Pick from:" with generated text as the answer: only the prompt changes.
        (
            "Continue the story. Pick from: a). he ran home b). he sat down",
            "He ran all the way home.",
            "Continue the story.",
        ),
    ],
)
def test_new_styles_rewrite_the_prompt_only(prompt: str, answer: str, new_prompt: str) -> None:
    findings = run(prompt, answer)
    assert findings.ledger["verdict"].to_list() == ["rewrite"]
    assert contents(findings) == {0: new_prompt}
    assert strip_options(resolve(prompt, answer).prompt) == new_prompt


@pytest.mark.parametrize(
    ("prompt", "answer", "letter"),
    [
        # Choices without labels (a comma list, "+" bullets): a letter answer names nothing.
        ("Which colour? Choose one of the following options: red, yellow, blue", "C", "C"),
        ("Is it raining?\nChoose your answer from:\n + yes;\n + no;", "(B)", "B"),
        ("Which planet is largest? A. Mars B. Jupiter C. Venus", "E", "E"),
    ],
)
def test_new_styles_unresolvable_letter_drops(prompt: str, answer: str, letter: str) -> None:
    findings = run(prompt, answer)
    assert findings.ledger["rule"].to_list() == ["options.explicit", "options.unresolvable_letter"]
    assert set(findings.ledger["verdict"]) == {"drop"}
    assert resolve(prompt, answer).unresolved == letter


def test_roman_and_numbers_that_name_no_option_stay() -> None:
    """A Roman "I" or a number the options do not have may be the answer itself."""
    assert resolve("Who? Options: (A) you (B) them", "I").answer == "I"
    assert resolve("Who? Options: (A) you (B) them", "I").unresolved is None
    assert resolve("How many? Options: (A) six (B) eight", "8").unresolved is None


def test_label_with_other_text_is_left_alone() -> None:
    """An answer "B. Jupiter" becomes "Jupiter"; one that merely starts like a label stays."""
    prompt = "Which planet is largest? A. Mars B. Jupiter C. Venus"
    assert resolve(prompt, "B. Jupiter").answer == "Jupiter"
    assert resolve(prompt, "A. Mars is smaller.").answer == "A. Mars is smaller."


def test_python_re_and_polars_agree_on_every_example() -> None:
    """Detection, the blocks and the strip are the same in polars and in Python's ``re``."""
    prompts = DETECTED + NOT_DETECTED
    series = pl.Series(prompts)
    assert series.str.contains(OPTIONS_PATTERN).to_list() == [has_options(p) for p in prompts]
    expected = [True] * len(DETECTED) + [False] * len(NOT_DETECTED)
    assert series.str.contains(OPTIONS_PATTERN).to_list() == expected
    found = series.str.extract_all(BLOCKS).to_list()
    assert found == [re.findall(BLOCKS, p) for p in prompts]
    stripped = series
    for pattern, repl in options.STRIP:
        stripped = stripped.str.replace_all(pattern, repl)
    assert stripped.str.strip_chars(options.WHITESPACE).to_list() == [
        strip_options(p) for p in prompts
    ]


def test_few_shot_examples_get_their_letters_resolved() -> None:
    prompt = (
        "Which is a fruit?\nOPTIONS:\n(A) carrot\n(B) apple\nSo the answer is (B).\n\n"
        "Which is blue?\nOPTIONS:\n(A) the sky\n(B) grass\nSo the answer is"
    )
    findings = run(prompt, "(A)")
    assert contents(findings) == {
        0: "Which is a fruit?\nSo the answer is apple.\n\nWhich is blue?\nSo the answer is",
        1: "the sky",
    }


@pytest.mark.parametrize(
    ("prompt", "answer", "letter"),
    [
        ("Is it?\nOPTIONS:\n- yes\n- no", "C", "C"),  # choices without letters
        ("Which?\nOPTIONS:\n(A) red\n(B) blue", "(E)", "E"),  # no such letter
        ("Which?\nOPTIONS:\n(A) red\n(B) blue", "It is blue, so the answer is (F).", "F"),
    ],
)
def test_unresolvable_letter_drops(prompt: str, answer: str, letter: str) -> None:
    findings = run(prompt, answer)
    assert findings.ledger.select("rule", "verdict").rows() == [
        ("options.explicit", "drop"),
        ("options.unresolvable_letter", "drop"),
    ]
    assert f"option {letter}" in findings.ledger["reason"][1]
    assert findings.rewrites.height == 0
    assert resolve(prompt, answer).unresolved == letter


def test_a_number_that_is_no_option_label_stays() -> None:
    findings = run("How many legs does a spider have?\nOPTIONS:\n- six\n- eight", "8")
    assert findings.ledger["verdict"].to_list() == ["rewrite"]
    assert contents(findings) == {0: "How many legs does a spider have?"}


def test_prompt_left_empty_drops() -> None:
    findings = run("OPTIONS:\n- yes\n- no", "yes")
    assert findings.ledger["verdict"].to_list() == ["drop"]
    assert "nothing of the prompt" in findings.ledger["reason"].item()
    assert findings.rewrites.height == 0


def test_options_in_a_later_turn_rewrite_the_answer_after_it() -> None:
    row = conversation(
        "r0", "Hi", "Hello!", "Which one?\nOPTIONS:\n(A) tea\n(B) coffee", "(B)", "Thanks", "Sure."
    )
    findings = OptionsFilter()(batch(row))
    assert contents(findings) == {2: "Which one?", 3: "coffee"}


def test_prompt_without_an_answer() -> None:
    findings = run("Is it?\nOPTIONS:\n- yes\n- no")
    assert contents(findings) == {0: "Is it?"}


# ---- policies and keep_fraction --------------------------------------------------------------


def test_policy_per_source() -> None:
    prompt, answer = "Where do fish live?\nOPTIONS:\n(A) trees\n(B) water", "(B)"
    rows = [
        conversation("a", prompt, answer, source="flan"),
        conversation("b", prompt, answer, source="p3"),
        conversation("c", prompt, answer, source="niv2"),
    ]
    f = OptionsFilter(policy=Policy("rewrite", per_source={"flan": "drop", "niv2": "flag"}))
    findings = f(batch(*rows))
    verdicts = dict(zip(findings.ledger["row_id"], findings.ledger["verdict"], strict=True))
    assert verdicts == {"a": "drop", "b": "rewrite", "c": "flag"}
    assert set(findings.rewrites["row_id"]) == {"b"}
    assert findings.ledger["reason"][0].startswith("explicit options: 'OPTIONS:")


def many(n: int, source: str = "flan") -> Batch:
    rows = [
        conversation(f"row-{i}", f"Question {i}?\nOPTIONS:\n- yes\n- no", "yes", source=source)
        for i in range(n)
    ]
    return batch(*rows)


def test_keep_fraction_is_deterministic_and_roughly_honoured() -> None:
    b = many(1000)
    first = OptionsFilter(keep_fraction=0.3, seed=7)(b).ledger
    again = OptionsFilter(keep_fraction=0.3, seed=7)(b).ledger
    other = OptionsFilter(keep_fraction=0.3, seed=8)(b).ledger
    kept = set(first.filter(pl.col("verdict") == "flag")["row_id"])
    assert kept == set(again.filter(pl.col("verdict") == "flag")["row_id"])
    assert kept != set(other.filter(pl.col("verdict") == "flag")["row_id"])
    assert 250 <= len(kept) <= 350
    # Kept rows are flagged with the reason and left alone; the rest get the policy.
    assert set(first.filter(pl.col("verdict") == "flag")["reason"]) == {KEPT_REASON}
    assert set(first.filter(pl.col("verdict") != "flag")["verdict"]) == {"rewrite"}
    rewrites = OptionsFilter(keep_fraction=0.3, seed=7)(b).rewrites
    assert set(rewrites["row_id"]).isdisjoint(kept) and rewrites.height == 1000 - len(kept)
    # The same rows as the documented hash, so a baseline can reproduce the choice.
    assert kept == {f"row-{i}" for i in range(1000) if kept_by_fraction(f"row-{i}", 7, 0.3)}
    # The choice does not depend on which other rows are in the batch.
    half = OptionsFilter(keep_fraction=0.3, seed=7)(many(500)).ledger
    assert set(half.filter(pl.col("verdict") == "flag")["row_id"]) == {
        r for r in kept if int(r.split("-")[1]) < 500
    }


def test_keep_fraction_bounds() -> None:
    assert OptionsFilter(keep_fraction=1.0)(many(20)).ledger["verdict"].unique().to_list() == [
        "flag"
    ]
    assert "flag" not in OptionsFilter(keep_fraction=0.0)(many(20)).ledger["verdict"]
    with pytest.raises(ValueError, match="keep_fraction"):
        OptionsFilter(keep_fraction=1.5)


def test_keep_fraction_wins_over_a_drop_policy_and_an_unresolvable_letter() -> None:
    rows = [conversation(f"r{i}", "Is it?\nOPTIONS:\n- yes\n- no", "C") for i in range(200)]
    findings = OptionsFilter(keep_fraction=0.5, seed=1)(batch(*rows))
    flagged = findings.ledger.filter(pl.col("verdict") == "flag")
    assert set(flagged["rule"]) == {"options.explicit"}
    dropped = findings.ledger.filter(pl.col("verdict") == "drop")
    assert dropped.height == 2 * (200 - flagged.height)  # explicit + unresolvable_letter


# ---- embedded FLAN sample --------------------------------------------------------------------


def flan_sample() -> tuple[pl.DataFrame, Findings]:
    conversations = ingest("flan", [SAMPLES / "flan.jsonl"]).conversations
    return conversations, OptionsFilter()(Batch.from_conversations(conversations))


def test_every_opt_row_fires_and_no_noopt_row_does() -> None:
    conversations, findings = flan_sample()
    template = conversations.select(
        "id", tt=pl.col("meta").map_elements(lambda m: json.loads(m)["template_type"], pl.String)
    )
    fired = set(findings.ledger.filter(pl.col("rule") == "options.explicit")["row_id"])
    opt = set(template.filter(pl.col("tt").str.ends_with("_opt"))["id"])
    noopt = set(template.filter(pl.col("tt").str.ends_with("_noopt"))["id"])
    assert len(opt) == 74 and fired == opt and fired.isdisjoint(noopt)


def test_flan_sample_rewrites_read_naturally() -> None:
    conversations, findings = flan_sample()
    assert set(findings.ledger["verdict"]) == {"rewrite"}  # every letter resolves
    prompts = findings.rewrites.filter(pl.col("turn") == 0)["content"]
    assert not prompts.str.contains(OPTIONS_PATTERN).any()
    assert not prompts.str.contains(r"(?m)^\([A-E]\) ").any()
    answers = findings.rewrites.filter(pl.col("turn") == 1)["content"]
    assert not answers.str.contains(r"\([A-E]\)").any()  # "So the answer is (C)." resolved
    lines = conversations.select("id", line=pl.col("provenance").struct.field("line"))
    by_line = {
        (line, turn): content
        for _, turn, content, line in findings.rewrites.join(
            lines, left_on="row_id", right_on="id"
        ).iter_rows()
    }
    assert by_line[(200, 1)] == "higher"  # "(A) higher"
    assert by_line[(29, 1)].endswith("So the answer is marker.")  # "... the answer is (C)."
    assert "So the answer is marker." in by_line[(36, 0)]  # a worked example in the prompt


def test_python_mirror_matches_the_filter_on_the_sample() -> None:
    conversations, findings = flan_sample()
    got = {(r, t): c for r, t, c in findings.rewrites.iter_rows()}
    for row in conversations.iter_rows(named=True):
        prompt, answer = (m["content"] for m in row["messages"])
        assert bool(re.search(OPTIONS_PATTERN, prompt)) == (
            row["id"] in set(findings.ledger["row_id"])
        )
        if not has_options(prompt):
            continue
        # Python's findall lists the same blocks as polars' extract_all.
        assert (
            re.findall(BLOCKS, prompt)
            == pl.Series([prompt]).str.extract_all(BLOCKS).item().to_list()
        )
        resolution = resolve(prompt, answer)
        assert got.get((row["id"], 0), prompt) == strip_options(resolution.prompt)
        assert got.get((row["id"], 1), answer) == resolution.answer


def test_map_answers_maps_as_the_filter_does() -> None:
    """``map_answers`` (what a preference pair's rejected answer goes through) gives every
    answer of the FLAN sample the filter's rewrite, and names the letter that names no option
    where the filter drops the row for it."""
    conversations, findings = flan_sample()
    got = {(r, t): c for r, t, c in findings.rewrites.iter_rows()}
    rows = conversations.select(
        "id",
        prompt=pl.col("messages").list.first().struct.field("content"),
        answer=pl.col("messages").list.last().struct.field("content"),
    ).filter(pl.col("id").is_in(findings.ledger["row_id"].implode()))
    mapped = options.map_answers(rows["prompt"], rows["answer"])
    assert mapped.height == rows.height > 70 and mapped["unresolved"].null_count() == rows.height
    expected = [got.get((i, 1), a) for i, a in zip(rows["id"], rows["answer"], strict=True)]
    assert mapped["answer"].to_list() == expected
    assert sum(e != a for e, a in zip(expected, rows["answer"], strict=True)) >= 10

    prompt = "Which is a mammal?\nOPTIONS:\n(A) shark\n(B) dolphin"
    cases = ["(F)", "A shark.", None, "So the answer is (A).", "8"]
    odd = options.map_answers(pl.Series([prompt] * len(cases)), pl.Series(cases))
    assert odd.rows() == [
        ("(F)", "F"),
        ("A shark.", None),
        (None, None),
        ("So the answer is shark.", None),
        ("8", None),
    ]
    assert run(prompt, "(F)").ledger["rule"].to_list() == [
        "options.explicit",
        "options.unresolvable_letter",
    ]


# ---- odd input -------------------------------------------------------------------------------


def test_empty_batch_and_empty_strings() -> None:
    assert OptionsFilter()(Batch.from_conversations(frame([], CONVERSATIONS))).ledger.height == 0
    assert run("", "").ledger.height == 0


def test_huge_prompt_and_mixed_scripts() -> None:
    huge = "Réponds 🙂 日本語 العربية. " * 400_000 + "\nOPTIONS:\n- oui 🇫🇷\n- 不是"
    findings = run(huge, "不是")
    assert findings.ledger["verdict"].to_list() == ["rewrite"]
    new = contents(findings)[0]
    assert new.endswith("Réponds 🙂 日本語 العربية.") and "OPTIONS" not in new
    emoji = run("Which? 🤔\nOPTIONS:\n(A) 🍎\n(B) 🍌", "(B)")
    assert contents(emoji) == {0: "Which? 🤔", 1: "🍌"}


# ---- the look-around-free building blocks ----------------------------------------------------


def test_not_starting_with_a_task_word() -> None:
    """The trie that stands in for a negative look-ahead: any text but one that starts with one
    of the words as a whole word, in both engines alike."""
    pattern = "^(?:" + options._not_starting_with(["prove", "show", "Show"]) + ")"
    texts = ["prove it", "show that", "Show that", "proven fact", "shown", "Mars", "pro x", " x"]
    expected = [False, False, False, True, True, True, True, False]
    assert [bool(re.match(pattern, t)) for t in texts] == expected
    assert pl.Series(texts).str.contains(pattern).to_list() == expected


def test_trie_alternation_prefers_the_longer_word() -> None:
    pattern = options._alternation(["options", "options are", "choices"])
    assert re.match(pattern, "options are: x").group(0) == "options are"
    assert re.match(pattern, "options: x").group(0) == "options"
    assert pl.Series(["options are: x"]).str.extract(f"({pattern})").item() == "options are"
