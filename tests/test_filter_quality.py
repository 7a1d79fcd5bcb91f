"""QualityFilter and LengthFilter on real frames: each rule's positives and near misses, the
embedded sample data, token versus word counts, per-source policies and weird input."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from curation.filters.base import FINDINGS, Batch, Policy
from curation.filters.quality import LengthFilter, QualityFilter
from curation.ingest import ReadOptions
from curation.readers.flan import read_flan
from curation.readers.generic import read_jsonl
from curation.readers.hh import read_hh
from curation.readers.oasst import read_oasst
from curation.readers.ultrafeedback import read_ultrafeedback
from curation.schema import CONVERSATIONS
from curation.tokens import TokenCounter
from training.tokenizer import TokenizerConfig, train_tokenizer

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"

GERMAN = (
    "Das Wetter beschreibt den Zustand der Atmosphäre an einem bestimmten Ort und zu einer "
    "bestimmten Zeit. Das Klima ist dagegen der durchschnittliche Verlauf des Wetters über "
    "viele Jahre, und es wird meist über dreißig Jahre gemittelt."
)
ENGLISH = (
    "Weather is what the atmosphere is doing at a particular place and time. Climate is the "
    "long-term pattern of weather in a region, and it is usually averaged over thirty years "
    "or more, so one cold day tells you very little about it."
)
SPANISH = (
    "El tiempo describe el estado de la atmósfera en un lugar y un momento concretos, mientras "
    "que el clima es el patrón del tiempo durante muchos años en una región."
)
RUSSIAN = (
    "Погода описывает состояние атмосферы в определённом месте и в определённое время, а "
    "климат это многолетний режим погоды, характерный для данной местности."
)


def conversations(*convs: dict) -> pl.DataFrame:
    """Canonical conversations from short dicts: id, messages [(role, content)], lang, source."""
    rows = [
        {
            "id": c["id"],
            "source": c.get("source", "test"),
            "source_id": c["id"],
            "lang": c.get("lang", "en"),
            "messages": [{"role": r, "content": t} for r, t in c["messages"]],
            "meta": "{}",
            "provenance": {"file": "test", "line": i + 1, "ids": []},
        }
        for i, c in enumerate(convs)
    ]
    return pl.DataFrame(rows, schema=CONVERSATIONS)


def qa(row_id: str, answer: str, prompt: str = "Tell me something.", **extra) -> dict:
    return {"id": row_id, "messages": [("user", prompt), ("assistant", answer)], **extra}


def run(filter_, *convs: dict) -> pl.DataFrame:
    ledger = filter_(Batch.from_conversations(conversations(*convs))).ledger
    assert ledger.schema == FINDINGS
    return ledger


def fired(ledger: pl.DataFrame, rule: str) -> set[str]:
    return set(ledger.filter(pl.col("rule") == rule)["row_id"])


def sample_conversations() -> pl.DataFrame:
    parts = [
        read_flan([SAMPLES / "flan.jsonl"], ReadOptions()),
        read_flan([SAMPLES / "synthetic_flan.jsonl"], ReadOptions(source="synthetic_flan")),
        read_oasst([SAMPLES / "oasst_trees.jsonl"], ReadOptions()),
        read_oasst([SAMPLES / "oasst_messages.jsonl"], ReadOptions(source="oasst_flat")),
        read_hh([SAMPLES / "hh_rlhf.jsonl"], ReadOptions()),
        read_ultrafeedback([SAMPLES / "ultrafeedback.jsonl"], ReadOptions()),
        read_jsonl([SAMPLES / "synthetic_chat.jsonl"], ReadOptions(source="synthetic_chat")),
    ]
    return pl.concat([p.conversations for p in parts])


# --- empty answers ----------------------------------------------------------------------------


def test_empty_answer_positives_and_near_misses():
    ledger = run(
        QualityFilter(),
        qa("blank", "   \n\t"),
        qa("invisible", "\u200b\u200b"),
        {"id": "no_answer", "messages": [("user", "Hello?")]},
        {"id": "system_only", "messages": [("system", "You are helpful.")]},
        qa("yes", "yes"),
        qa("digit", "5"),
        {
            "id": "one_blank_turn",
            "messages": [("user", "a"), ("assistant", " "), ("user", "b"), ("assistant", "B")],
        },
    )
    assert fired(ledger, "quality.empty_answer") == {
        "blank",
        "invisible",
        "no_answer",
        "system_only",
    }
    reasons = dict(
        ledger.filter(pl.col("rule") == "quality.empty_answer")
        .select("row_id", "reason")
        .iter_rows()
    )
    assert reasons["no_answer"] == "no assistant turn"
    assert reasons["blank"] == "all 1 assistant turn(s) are blank"
    assert set(ledger.filter(pl.col("row_id") == "blank")["verdict"]) == {"drop"}


# --- repetition -------------------------------------------------------------------------------

RECIPE = (
    "1. Add the flour to the bowl.\n2. Add the sugar to the bowl.\n3. Add the eggs to the "
    "bowl.\n4. Add the milk to the bowl.\n5. Stir everything until smooth and pour it into "
    "a tin."
)
CODE = (
    "```c\nint main(void) {\n\tfor (int i = 0; i < 3; i++) {\n\t\tif (i == 1) {\n"
    '\t\t\tputs("one");\n\t\t}\n\t\tif (i == 2) {\n\t\t\tputs("two");\n\t\t}\n\t}\n'
    "\treturn 0;\n}\n```\nThe loop prints one and two, then the program returns zero."
)


def test_repetition_positives():
    loop = " ".join(["alpha beta gamma delta epsilon zeta eta"] * 10)  # no dominant 3-gram
    ledger = run(
        QualityFilter(),
        qa("sorry", "I am sorry. " * 20),
        qa("lines", "Buy cheap watches now at our shop today!\n" * 8 + "Thanks for reading."),
        qa("loop", loop),
        qa("second_turn", "fine", prompt="x")
        | {
            "messages": [
                ("user", "Hi"),
                ("assistant", "Hello! How can I help you today with your question?"),
                ("user", "Go on"),
                ("assistant", "and then " * 30),
            ]
        },
    )
    rep = ledger.filter(pl.col("rule") == "quality.repetition")
    assert set(rep["row_id"]) == {"sorry", "lines", "loop", "second_turn"}
    reasons = dict(rep.select("row_id", "reason").iter_rows())
    assert "repeated lines" in reasons["lines"] and "Buy cheap watches" in reasons["lines"]
    assert '"i am sorry"' in reasons["sorry"] or '"am sorry i"' in reasons["sorry"]
    assert "repeat an earlier one" in reasons["loop"]
    assert reasons["second_turn"].startswith("answer turn 3:")
    scores = dict(rep.select("row_id", "score").iter_rows())
    assert scores["loop"] > 0.8 and 0.3 < scores["sorry"] <= 1.0


def test_repetition_near_misses():
    short_list = "- yes\n- no\n- yes\n- no"
    table = "| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n| 5 | 6 |"
    ledger = run(
        QualityFilter(),
        qa("short_list", short_list),
        qa("recipe", RECIPE),
        qa("code", CODE),
        qa("table", table),
        qa("prose", ENGLISH),
        qa("yes", "yes"),
    )
    assert fired(ledger, "quality.repetition") == set()


def test_sample_data_has_no_quality_findings():
    """The embedded sample is clean text in six languages: nothing should fire on it."""
    batch = Batch.from_conversations(sample_conversations())
    ledger = QualityFilter()(batch).ledger
    assert ledger.is_empty(), ledger.to_dicts()[:5]


# --- non-printing -----------------------------------------------------------------------------


def test_non_printing_positives():
    ledger = run(
        QualityFilter(),
        qa("bell", "Ring the \x07 bell."),
        qa("nul", "text\x00more text"),
        qa("c1", "caf\u00c3\u0083\u00c2\u00a9 \x85 mojibake"),
        qa("zwsp", "hello\u200bworld"),
        qa("pua", "icons \ue000\ue001\ue002 here"),
        qa("prompt_side", "fine answer", prompt="question with a form feed \x0c inside"),
    )
    found = ledger.filter(pl.col("rule") == "quality.non_printing")
    assert set(found["row_id"]) == {"bell", "nul", "c1", "zwsp", "pua", "prompt_side"}
    reasons = dict(found.select("row_id", "reason").iter_rows())
    assert "first UTF-8 07" in reasons["bell"]
    assert "first UTF-8 e2808b" in reasons["zwsp"]
    assert reasons["prompt_side"].startswith("user turn 0:")


def test_non_printing_near_misses():
    long_answer = "A long and otherwise clean answer. " * 20
    ledger = run(
        QualityFilter(),
        qa("whitespace", "tabs\tand\nnew\r\nlines"),
        qa("family", "Family: \U0001f468\u200d\U0001f469\u200d\U0001f467 (joined by ZWJ)"),
        qa("persian", "می\u200cخواهم"),  # zero-width non-joiner is part of the spelling
        qa("one_zwsp_in_long", long_answer + "\u200b"),
        qa("nbsp", "10\u00a0km and 5\u202f%"),
        qa("code", CODE),
    )
    assert fired(ledger, "quality.non_printing") == set()


# --- language ---------------------------------------------------------------------------------


def test_lang_mismatch_fires_on_enough_evidence():
    ledger = run(
        QualityFilter(),
        qa(
            "en_in_de",
            ENGLISH,
            prompt="Was ist der Unterschied zwischen Wetter und Klima?",
            lang="de",
        ),
        qa("ru_in_en", RUSSIAN, lang="en"),
        qa("en_in_de_region", ENGLISH, lang="de-AT"),
        qa("es_in_pt", SPANISH, lang="pt"),
        qa("zh_in_en", "天气是指短时间内的大气状态，而气候是指一个地区多年来的平均天气状况。" * 2),
    )
    found = ledger.filter(pl.col("rule") == "quality.lang_mismatch")
    assert set(found["row_id"]) == {
        "en_in_de",
        "ru_in_en",
        "en_in_de_region",
        "es_in_pt",
        "zh_in_en",
    }
    assert set(found["verdict"]) == {"flag"}  # the default: detection is heuristic
    reasons = dict(found.select("row_id", "reason").iter_rows())
    assert reasons["en_in_de"].startswith("answer reads as en (")
    assert reasons["en_in_de"].endswith("conversation lang is de")
    assert "Cyrillic" in reasons["ru_in_en"]
    assert all(0.5 < s <= 1.0 for s in found["score"])


def test_lang_mismatch_near_misses():
    ledger = run(
        QualityFilter(),
        qa(
            "de_in_de",
            GERMAN,
            prompt="Was ist der Unterschied zwischen Wetter und Klima?",
            lang="de",
        ),
        qa("short_en_in_de", "OK, thanks, that helps a lot!", lang="de"),
        qa("translation", ENGLISH, prompt="Übersetze bitte ins Englische: ...", lang="de"),
        qa("unknown_lang", ENGLISH, lang=None),
        qa("und", ENGLISH, lang="und"),
        qa(
            "ja_in_ja",
            "天気は短い期間の大気の状態で、気候は長い期間の平均的な状態です。" * 2,
            lang="ja",
        ),
        qa(
            "code_in_ru",
            "Вот пример:\n```python\ndef weather_and_climate(days):\n    return sum(days) / "
            "len(days)\n```\nФункция возвращает среднее значение.",
            lang="ru",
        ),
        qa("mixed_emoji", "🎉🎉🎉 " * 30, lang="de"),
        # English "I am": "am" is German too, so it is evidence for neither.
        qa("sorry", "I am sorry. " * 20),
        # One French function word ("sa") five times in gibberish is no French.
        qa("gibberish", " ".join(["ka lo sa mi ren"] * 6)),
    )
    assert fired(ledger, "quality.lang_mismatch") == set()


def test_lang_policy_and_policy_are_separate_and_per_source():
    quality = QualityFilter(
        policy=Policy("drop", per_source={"oasst": "flag"}),
        lang_policy=Policy("flag", per_source={"flan": "drop"}),
    )
    ledger = run(
        quality,
        qa("a", " ", source="oasst"),
        qa("b", " ", source="flan"),
        qa("c", ENGLISH, lang="de", source="flan"),
        qa("d", ENGLISH, lang="de", source="oasst"),
    )
    verdicts = {(r, v) for r, v in ledger.select("row_id", "verdict").iter_rows()}
    assert verdicts == {("a", "flag"), ("b", "drop"), ("c", "drop"), ("d", "flag")}
    # A YAML config can only give a verdict string.
    ledger = run(QualityFilter(lang_policy="drop"), qa("e", ENGLISH, lang="de"))
    assert ledger["verdict"].to_list() == ["drop"]


# --- weird input ------------------------------------------------------------------------------


def test_weird_input_does_not_crash():
    huge = ("lorem ipsum dolor sit amet " * 400_000)[:10_000_000]  # 10 MB, very repetitive
    convs = [
        qa("empty_strings", "", prompt=""),
        qa("huge", huge),
        qa("emoji_mixed", "🎉 中文 العربية русский English 😀" * 5),
        {"id": "system_only", "messages": [("system", "Be brief.")]},
        {"id": "no_messages", "messages": []},
    ]
    quality = run(QualityFilter(), *convs)
    assert "huge" in fired(quality, "quality.repetition")
    assert {"empty_strings", "system_only", "no_messages"} <= fired(quality, "quality.empty_answer")
    length = run(LengthFilter(), *convs)
    assert "huge" in fired(length, "length.too_long")
    assert "empty_strings" in fired(length, "length.too_short")


def test_empty_batch():
    empty = conversations()
    batch = Batch.from_conversations(empty)
    assert QualityFilter()(batch).ledger.is_empty()
    assert LengthFilter()(batch).ledger.is_empty()


# --- length -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    texts = [ENGLISH, GERMAN, RECIPE, CODE, "yes no maybe B 5"] * 20
    return train_tokenizer(texts, TokenizerConfig(vocab_size=300))


def test_defaults_keep_one_token_answers(tokenizer):
    convs = [qa("yes", "yes"), qa("letter", "B"), qa("digit", "5"), qa("blank", "  ")]
    for count in (None, TokenCounter(tokenizer)):
        ledger = run(LengthFilter(count_tokens=count), *convs)
        assert fired(ledger, "length.too_short") <= {"blank"}
        assert fired(ledger, "length.too_long") == set()
    # Two spaces are no word, but byte-level BPE gives them a token: blank answers are
    # quality.empty_answer's to catch, whatever the counter.
    assert fired(run(LengthFilter(), *convs), "length.too_short") == {"blank"}


def test_tokens_versus_whitespace_words(tokenizer):
    counter = TokenCounter(tokenizer)
    word = "Antidisestablishmentarianism"  # one word, many tokens of this small vocabulary
    assert counter([word])[0] > 2 and counter(["yes"])[0] <= 2
    convs = [qa("long_word", word), qa("short", "yes")]
    by_tokens = run(LengthFilter(max_answer_tokens=2, count_tokens=counter), *convs)
    by_words = run(LengthFilter(max_answer_tokens=2), *convs)
    assert fired(by_tokens, "length.too_long") == {"long_word"}
    assert fired(by_words, "length.too_long") == set()
    (token_reason,) = by_tokens["reason"]
    assert f"has {counter([word])[0]} tokens (maximum 2)" in token_reason
    short = run(LengthFilter(min_answer_tokens=3), *convs)
    assert all("whitespace words (no tokenizer given)" in r for r in short["reason"])
    assert fired(short, "length.too_short") == {"long_word", "short"}


def test_length_bounds_per_turn_and_prompt():
    counted = LengthFilter(
        min_answer_tokens=2,
        max_answer_tokens=5,
        max_prompt_tokens=6,
        count_tokens=lambda texts: [len(t) for t in texts],  # characters: easy to reason about
    )
    ledger = run(
        counted,
        {
            "id": "multi",
            "messages": [
                ("system", "abc"),
                ("user", "abcd"),
                ("assistant", "a"),
                ("user", "x"),
                ("assistant", "abcdefgh"),
            ],
        },
        qa("ok", "abc", prompt="abc"),
    )
    rows = {(r["row_id"], r["rule"]): r for r in ledger.to_dicts()}
    assert set(rows) == {
        ("multi", "length.too_short"),
        ("multi", "length.too_long"),
        ("multi", "length.prompt_too_long"),
    }
    assert rows[("multi", "length.too_short")]["reason"] == "answer turn 2 has 1 tokens (minimum 2)"
    assert rows[("multi", "length.too_long")]["score"] == 8.0
    assert rows[("multi", "length.prompt_too_long")]["score"] == 8.0  # 3 + 4 + 1


def test_length_bounds_can_be_disabled():
    ledger = run(
        LengthFilter(min_answer_tokens=None, max_answer_tokens=None, max_prompt_tokens=None),
        qa("blank", " "),
        qa("long", "word " * 10_000),
    )
    assert ledger.is_empty()


def test_quality_and_length_are_deterministic_and_chunk_independent():
    convs = sample_conversations()
    extra = conversations(
        qa("sorry", "I am sorry. " * 20),
        qa("bell", "Ring \x07"),
        qa("en_in_de", ENGLISH, lang="de"),
    )
    convs = pl.concat([convs, extra])
    for chosen in (QualityFilter(), LengthFilter()):
        whole = chosen(Batch.from_conversations(convs)).ledger
        again = chosen(Batch.from_conversations(convs)).ledger
        assert whole.equals(again)
        pieces = pl.concat(
            [
                chosen(Batch.from_conversations(convs.slice(s, 100))).ledger
                for s in range(0, convs.height, 100)
            ]
        )
        assert whole.equals(pieces)
