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
