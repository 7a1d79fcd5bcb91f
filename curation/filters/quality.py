"""Answer quality and length filters, vectorised over the batch with polars (no per-row Python).

``QualityFilter`` rules:

- ``quality.empty_answer``: no assistant turn with visible text.
- ``quality.repetition``: an answer that repeats itself, by three measures in the spirit of
  Gopher's repetition filters (Rae et al. 2021, table A1), for answers of at least
  ``repetition_min_words`` words: the share of characters in lines that repeat an earlier line,
  the share of word 3-gram occurrences taken by the most frequent 3-gram, and the share of word
  3-gram occurrences that repeat an earlier one (a loop with a long period has no dominant
  3-gram but repeats nearly all of them). Thresholds are looser than Gopher's: answers are short
  and legitimately list things ("Add the flour to the bowl. Add the sugar to the bowl. ...").
- ``quality.non_printing``: control characters other than tab, newline and carriage return in
  any turn, or invisible junk (zero-width space, word joiner, a BOM inside the text, U+FFFD
  replacement characters, private-use code points, noncharacters) above a small share of the
  text. Zero-width joiner and non-joiner are not junk: emoji sequences and Persian or Indic
  scripts need them.
- ``quality.lang_mismatch``: the conversation's ``lang`` is known and the answer is clearly in
  another script (letter counts per Unicode script) or, for en/de/es/fr/it/pt/nl, clearly in
  another of those languages (function-word profiles). It decides only on enough evidence and
  skips translation requests; its default verdict is ``flag``.

``LengthFilter`` rules, in tokens of an injected counter (whitespace words without one):
``length.too_short``, ``length.too_long`` (per assistant turn) and ``length.prompt_too_long``
(system and user turns together).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import polars as pl

from curation.filters.base import FINDINGS, Batch, Findings, Policy, snippet

# C0 controls except \t \n \r, DEL, and C1 controls (what cp1252 text decoded as Latin-1 leaves).
CONTROL = r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F]"
JUNK = (
    r"[\x{200B}\x{2060}\x{FEFF}\x{FFFD}\x{FFFE}\x{FFFF}"
    r"\x{E000}-\x{F8FF}\x{F0000}-\x{FFFFD}\x{100000}-\x{10FFFD}]"
)
# Visible text: anything but whitespace and the invisible junk above.
VISIBLE = r"[^\s\x{200B}-\x{200D}\x{2060}\x{FEFF}]"

# Letters per script. A language accepts one or more of them.
SCRIPTS = {
    "Latin": r"\p{Latin}",
    "Cyrillic": r"\p{Cyrillic}",
    "Greek": r"\p{Greek}",
    "Arabic": r"\p{Arabic}",
    "Hebrew": r"\p{Hebrew}",
    "Han": r"\p{Han}",
    "Kana": r"[\p{Hiragana}\p{Katakana}]",
    "Hangul": r"\p{Hangul}",
    "Devanagari": r"\p{Devanagari}",
    "Bengali": r"\p{Bengali}",
    "Tamil": r"\p{Tamil}",
    "Thai": r"\p{Thai}",
    "Georgian": r"\p{Georgian}",
    "Armenian": r"\p{Armenian}",
}


def _words(text: str) -> list[str]:
    """Long word lists read better as one string."""
    return text.split()


LATIN_LANGS = _words(
    "en de es fr it pt nl ca gl eu pl cs sk sl hr bs sv da no nb nn fi et lv lt hu ro tr az "
    "id ms vi tl sw ga cy is mt sq af eo la"
)
LANG_SCRIPTS: dict[str, tuple[str, ...]] = {
    **{code: ("Latin",) for code in LATIN_LANGS},
    **{code: ("Cyrillic",) for code in ["ru", "uk", "be", "bg", "mk", "kk", "ky", "mn", "tg"]},
    "sr": ("Cyrillic", "Latin"),  # Serbian is written in both
    "el": ("Greek",),
    **{code: ("Arabic",) for code in ["ar", "fa", "ur", "ps", "ug"]},
    "he": ("Hebrew",),
    "yi": ("Hebrew",),
    "zh": ("Han",),
    "ja": ("Han", "Kana"),
    "ko": ("Hangul", "Han"),
    **{code: ("Devanagari",) for code in ["hi", "mr", "ne", "sa"]},
    "bn": ("Bengali",),
    "ta": ("Tamil",),
    "th": ("Thai",),
    "ka": ("Georgian",),
    "hy": ("Armenian",),
}

# Frequent function words. Words that appear in more than one list are removed below (``de``,
# ``la``, ``in``, ``a``, ``que`` ...): they are evidence for no language in particular.
_FUNCTION_WORDS = {
    "en": "the and of to is that it for was on are with as his they be at have this from by "
    "not but what all were we when your can there an which their if do will each about how "
    "up out them she many some these would other into has more her two like him could no "
    "than been who its now my only just because should very through you he or had i me our "
    "does did isn't doesn't",
    "de": "der die und den von zu das mit sich des auf für ist im dem nicht ein eine als auch "
    "es werden aus er hat dass sie nach wird bei einer um am sind noch wie einem über einen "
    "zum war haben nur oder aber vor zur bis mehr durch man wurde sei ich du wir ihr kann "
    "können wenn weil sehr hier gibt diese dieser kein keine ihre sein seine nicht",
    "es": "el los del se las por un para con una su al lo como más pero sus ya este sí "
    "porque esta entre cuando muy sin sobre también hasta hay donde quien desde todo nos "
    "durante todos uno les ni contra otros ese eso ante ellos esto antes algunos qué unos "
    "yo otro otras otra él tanto esa estos mucho quienes nada muchos cual poco ella estar "
    "estas algunas algo nosotros es son está puede hace y",
    "fr": "le et les des du une est pour qui dans par plus pas au sur ne ce il sont avec son "
    "aux ou cette mais nous vous ses leur ont été comme on peut tout aussi elle sa je très "
    "fait être avoir cela ces dont sans où même si bien donc alors lui c'est qu",
    "it": "di il che è per del non una si con sono al della più lo gli ha anche nel ma "
    "questo alla delle nella ci mi ti suo sua loro molto tutto essere stato quando perché "
    "cosa degli dal dalla sul sulla questa quello ancora già hanno può fare i",
    "pt": "do da em um para é com não uma os no na mais dos foi ao ele das tem à seu sua "
    "ser quando muito há nos já está eu também só pelo pela até isso ela era depois sem "
    "mesmo aos ter seus quem nas esse eles estão você tinha foram essa num nem suas meu às "
    "minha têm numa pelos elas havia seja qual será nós tenho lhe deles essas esses pelas "
    "este fosse dele são pode então",
    "nl": "en van ik te dat die een hij het niet zijn is op aan met als voor had er maar om "
    "hem dan zou wat mijn men dit zo door ze zich bij ook tot je mij uit daar haar naar "
    "heb hoe heeft hebben deze u want nog zal zij nu geen omdat iets worden toch al waren "
    "veel meer doen toen moet ben zonder kan hun dus alles onder ja eens hier wie werd "
    "altijd wordt kunnen ons zelf tegen na wil kon niets uw iemand geweest andere",
}


# Function words of one list that are also everyday words elsewhere, mostly in English (the
# language most often mixed in): German "am", "war", "man", "hat"; French "on", "plus"; Italian
# "per", "ha"; Portuguese "do", "no"; Dutch "men", "want"; "non" from hyphenated English words.
_AMBIGUOUS = set(
    _words(
        "am war man hat um er son sin ante al lo on plus par per ha non mi ma do no era men "
        "want ben hem u"
    )
)


def _distinct_function_words() -> pl.DataFrame:
    pairs = [
        (w, lang)
        for lang, words in _FUNCTION_WORDS.items()
        for w in set(_words(words)) - _AMBIGUOUS
    ]
    frame = pl.DataFrame(pairs, schema={"word": pl.String, "lang": pl.String}, orient="row")
    return frame.filter(pl.len().over("word") == 1).sort("word")


FUNCTION_WORDS = _distinct_function_words()
STOPWORD_LANGS = tuple(_FUNCTION_WORDS)

# A prompt that asks for a translation legitimately gets an answer in another language.
TRANSLATION = (
    r"(?i)translat|übersetz|traduc|traduz|tradurr|traduis|vertaal|перев|翻译|翻譯|翻訳|번역"
)
CODE = r"(?s)```.*?```|`[^`\n]*`|https?://\S+|www\.\S+|\S+@\S+"

EMPTY_LEDGER = pl.DataFrame(schema=FINDINGS)
NO_LANG = pl.DataFrame(
    schema={"row_id": pl.String, "source": pl.String, "reason": pl.String, "score": pl.Float64}
)


def _finish(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(FINDINGS.names()).cast(FINDINGS)


def _in_row_order(batch: Batch, parts: list[pl.DataFrame]) -> pl.DataFrame:
    """Findings sorted by the batch's row order, then rule: deterministic output."""
    found = pl.concat([_finish(p) for p in parts]) if parts else EMPTY_LEDGER
    order = batch.rows.select("row_id").with_row_index("_order")
    return (
        found.join(order, on="row_id", how="left")
        .sort("_order", "rule", maintain_order=True)
        .drop("_order")
    )


def _pct(expr: pl.Expr) -> pl.Expr:
    return (expr * 100).round(0).cast(pl.Int64).cast(pl.String) + pl.lit("%")


@dataclass(frozen=True)
class QualityFilter:
    """Empty, repetitive, non-printing and wrong-language answers.

    ``repetition_min_words``: answers shorter than this are never judged repetitive (a
    one-word FLAN answer, a short list). ``max_duplicate_line_chars``: share of characters in
    lines that repeat an earlier line (Gopher: 0.2 over documents). ``max_top_trigram_share``:
    share of word 3-gram occurrences taken by the most frequent one (Gopher: 0.18, by
    characters). ``max_duplicate_trigrams``: share of word 3-gram occurrences that repeat an
    earlier one. ``max_junk_share``: share of invisible junk characters tolerated in a turn
    (any control character fires). ``lang_min_words``/``lang_min_letters``: the evidence the
    language check needs (words for the function-word test, letters for the script test).
    ``lang_min_hits``: function words of the other language needed (at least
    ``lang_min_distinct`` different ones: one word used five times is no language), and they
    must outnumber the expected language's ``lang_ratio`` to one. ``policy``: verdict for
    empty, repetition and non-printing findings; ``lang_policy``: verdict for language
    mismatches.
    """

    category: ClassVar[str] = "quality"
    repetition_min_words: int = 20
    max_duplicate_line_chars: float = 0.3
    max_top_trigram_share: float = 0.2
    max_duplicate_trigrams: float = 0.5
    max_junk_share: float = 0.01
    lang_min_words: int = 20
    lang_min_letters: int = 40
    lang_min_hits: int = 5
    lang_min_distinct: int = 3
    lang_ratio: float = 3.0
    policy: Policy = Policy("drop")
    lang_policy: Policy | str = Policy("flag")

    def __post_init__(self) -> None:
        # A YAML config can only say ``lang_policy: drop``: make that the Policy it means.
        if isinstance(self.lang_policy, str):
            object.__setattr__(self, "lang_policy", Policy(self.lang_policy))  # type: ignore[arg-type]

    def __call__(self, batch: Batch) -> Findings:
        parts = [
            self.empty_answer(batch),
            self.repetition(batch),
            self.non_printing(batch),
            self.lang_mismatch(batch),
        ]
        return Findings(ledger=_in_row_order(batch, parts))

    def _lang_policy(self) -> Policy:
        assert isinstance(self.lang_policy, Policy)  # converted in __post_init__
        return self.lang_policy

    # --- empty -------------------------------------------------------------------------------

    def empty_answer(self, batch: Batch) -> pl.DataFrame:
        answers = (
            batch.answers()
            .group_by("row_id")
            .agg(
                pl.len().alias("turns"),
                pl.col("content").str.contains(VISIBLE).any().alias("visible"),
            )
        )
        return (
            batch.rows.join(answers, on="row_id", how="left")
            .filter(~pl.col("visible").fill_null(False))
            .select(
                "row_id",
                pl.lit("quality.empty_answer").alias("rule"),
                self.policy.expr().alias("verdict"),
                pl.when(pl.col("turns").is_null())
                .then(pl.lit("no assistant turn"))
                .otherwise(pl.format("all {} assistant turn(s) are blank", "turns"))
                .alias("reason"),
                pl.lit(None, pl.Float64).alias("score"),
            )
        )

    # --- repetition --------------------------------------------------------------------------

    def repetition(self, batch: Batch) -> pl.DataFrame:
        answers = batch.answers().filter(
            pl.col("content").str.count_matches(r"\w+") >= self.repetition_min_words
        )
        if answers.is_empty():
            return EMPTY_LEDGER
        gram = pl.concat_str(
            [pl.element(), pl.element().shift(-1), pl.element().shift(-2)], separator=" "
        )
        line = pl.element().str.strip_chars()
        measured = answers.select(
            "row_id",
            "source",
            "turn",
            pl.col("content")
            .str.to_lowercase()
            .str.extract_all(r"\w+")
            .list.eval(gram.drop_nulls())
            .alias("grams"),
            pl.col("content").str.split("\n").list.eval(line.filter(line != "")).alias("lines"),
        ).select(
            "row_id",
            "source",
            "turn",
            "grams",
            "lines",
            pl.col("lines")
            .list.eval(
                pl.when(pl.element().is_first_distinct())
                .then(0)
                .otherwise(pl.element().str.len_chars())
                .sum()
                / pl.element().str.len_chars().sum()
            )
            .list.first()
            .fill_nan(0.0)
            .alias("dup_lines"),
            pl.col("grams")
            .list.eval(pl.element().unique_counts().max())
            .list.first()
            .truediv(pl.col("grams").list.len())
            .alias("top_gram"),
            (1 - pl.col("grams").list.n_unique() / pl.col("grams").list.len()).alias("dup_grams"),
        )
        ratios = {
            "dup_lines": self.max_duplicate_line_chars,
            "top_gram": self.max_top_trigram_share,
            "dup_grams": self.max_duplicate_trigrams,
        }
        fired = measured.with_columns(
            *(pl.col(m).fill_null(0.0).alias(m) for m in ratios),
        ).filter(pl.any_horizontal(pl.col(m) > t for m, t in ratios.items()))
        if fired.is_empty():
            return EMPTY_LEDGER

        # The reason names the measure furthest past its threshold (the first one on ties).
        def over(m: str) -> pl.Expr:
            return pl.col(m) / ratios[m]

        described = fired.with_columns(severity=pl.max_horizontal(over(m) for m in ratios))
        described = described.with_columns(
            pl.when(over("dup_lines") == pl.col("severity"))
            .then(pl.lit("dup_lines"))
            .when(over("top_gram") == pl.col("severity"))
            .then(pl.lit("top_gram"))
            .otherwise(pl.lit("dup_grams"))
            .alias("measure"),
            pl.col("grams")
            .list.eval(pl.element().filter(pl.element().is_duplicated()).mode().sort().first())
            .list.first()
            .alias("top"),
            pl.col("lines")
            .list.eval(pl.element().filter(~pl.element().is_first_distinct()))
            .list.first()
            .alias("dup_line"),
        )
        reason = (
            pl.when(pl.col("measure") == "dup_lines")
            .then(
                pl.format(
                    'answer turn {}: {} of characters in repeated lines ("{}")',
                    "turn",
                    _pct(pl.col("dup_lines")),
                    snippet(pl.col("dup_line")),
                )
            )
            .when(pl.col("measure") == "top_gram")
            .then(
                pl.format(
                    'answer turn {}: the 3-gram "{}" is {} of all 3-grams',
                    "turn",
                    snippet(pl.col("top")),
                    _pct(pl.col("top_gram")),
                )
            )
            .otherwise(
                pl.format(
                    'answer turn {}: {} of 3-grams repeat an earlier one (most: "{}")',
                    "turn",
                    _pct(pl.col("dup_grams")),
                    snippet(pl.col("top")),
                )
            )
        )
        score = (
            pl.when(pl.col("measure") == "dup_lines")
            .then("dup_lines")
            .when(pl.col("measure") == "top_gram")
            .then("top_gram")
            .otherwise("dup_grams")
        )
        return (
            described.sort("severity", descending=True, maintain_order=True)
            .group_by("row_id", maintain_order=True)
            .first()
            .select(
                "row_id",
                pl.lit("quality.repetition").alias("rule"),
                self.policy.expr().alias("verdict"),
                reason.alias("reason"),
                score.alias("score"),
            )
        )

    # --- non-printing ------------------------------------------------------------------------

    def non_printing(self, batch: Batch) -> pl.DataFrame:
        suspect = batch.messages.filter(pl.col("content").str.contains(f"{CONTROL}|{JUNK}"))
        if suspect.is_empty():
            return EMPTY_LEDGER
        counted = suspect.with_columns(
            control=pl.col("content").str.count_matches(CONTROL),
            junk=pl.col("content").str.count_matches(JUNK),
            chars=pl.col("content").str.len_chars(),
        ).with_columns(share=(pl.col("control") + pl.col("junk")) / pl.col("chars"))
        fired = counted.filter(
            (pl.col("control") > 0) | (pl.col("junk") / pl.col("chars") > self.max_junk_share)
        )
        if fired.is_empty():
            return EMPTY_LEDGER
        first = pl.col("content").str.extract(f"({CONTROL}|{JUNK})", 1).str.encode("hex")
        reason = pl.format(
            "{} turn {}: {} control and {} invisible junk characters of {} ({}; first UTF-8 {})",
            "role",
            "turn",
            "control",
            "junk",
            "chars",
            _pct(pl.col("share")),
            first,
        )
        return (
            fired.sort("share", descending=True, maintain_order=True)
            .group_by("row_id", maintain_order=True)
            .first()
            .select(
                "row_id",
                pl.lit("quality.non_printing").alias("rule"),
                self.policy.expr().alias("verdict"),
                reason.alias("reason"),
                pl.col("share").alias("score"),
            )
        )

    # --- language ----------------------------------------------------------------------------

    def lang_mismatch(self, batch: Batch) -> pl.DataFrame:
        code = pl.col("lang").str.to_lowercase().str.extract(r"^([a-z]{2,3})(?:[-_].*)?$", 1)
        known = batch.rows.select("row_id", "source", code.alias("code")).filter(
            pl.col("code").is_in(list(LANG_SCRIPTS))
        )
        if known.is_empty():
            return EMPTY_LEDGER
        asks_translation = (
            batch.prompts()
            .filter(pl.col("content").str.contains(TRANSLATION))
            .select("row_id")
            .unique()
        )
        # Lists joined after the aggregation: faster than ``Batch.texts``' in-group str.join.
        answers = (
            batch.answers()
            .join(known.select("row_id"), on="row_id", how="semi")
            .group_by("row_id")
            .agg(pl.col("content").sort_by("turn"))
            .select("row_id", pl.col("content").list.join("\n\n").alias("text"))
            .join(known, on="row_id", how="inner")
            .join(asks_translation, on="row_id", how="anti")
            .with_columns(pl.col("text").str.replace_all(CODE, " "))
        )
        scripts = self._script_mismatch(answers)
        words = self._function_word_mismatch(answers)
        # A row found by both tests is reported once, by the script test (the stronger one).
        found = pl.concat([scripts, words]).unique("row_id", keep="first", maintain_order=True)
        return found.select(
            "row_id",
            pl.lit("quality.lang_mismatch").alias("rule"),
            self._lang_policy().expr().alias("verdict"),
            "reason",
            "score",
        )

    def _script_mismatch(self, answers: pl.DataFrame) -> pl.DataFrame:
        # ASCII-only answers are all Latin: only the others need counting per script.
        candidates = answers.filter(
            pl.col("text").str.contains(r"[^\x00-\x7F]")
            | ~pl.col("code").is_in([c for c, s in LANG_SCRIPTS.items() if "Latin" in s])
        )
        candidates = candidates.with_columns(
            letters=pl.col("text").str.count_matches(r"\p{L}")
        ).filter(pl.col("letters") >= self.lang_min_letters)
        if candidates.is_empty():
            return NO_LANG
        counted = candidates.with_columns(
            pl.col("text").str.count_matches(pattern).alias(name)
            for name, pattern in SCRIPTS.items()
        )
        allowed = pl.col("code").replace_strict(
            {c: list(s) for c, s in LANG_SCRIPTS.items()}, return_dtype=pl.List(pl.String)
        )
        expected = pl.sum_horizontal(
            pl.when(allowed.list.contains(pl.lit(name))).then(pl.col(name)).otherwise(0)
            for name in SCRIPTS
        )
        # arg_max takes the first maximum: ties resolve the same way every run.
        top = pl.concat_list([pl.col(name) for name in SCRIPTS]).list.arg_max()
        return (
            counted.with_columns(
                share=expected / pl.col("letters"),
                top_name=pl.lit(list(SCRIPTS), dtype=pl.List(pl.String)).list.get(top),
                top_n=pl.concat_list([pl.col(name) for name in SCRIPTS]).list.get(top),
            )
            .filter(pl.col("share") < 0.5)
            .select(
                "row_id",
                "source",
                pl.format(
                    "answer is {} {} letters ({} letters); conversation lang is {}",
                    _pct(pl.col("top_n") / pl.col("letters")),
                    "top_name",
                    "letters",
                    "code",
                ).alias("reason"),
                (1 - pl.col("share")).alias("score"),
            )
        )

    def _function_word_mismatch(self, answers: pl.DataFrame) -> pl.DataFrame:
        candidates = answers.filter(
            pl.col("code").is_in(list(STOPWORD_LANGS))
            & (pl.col("text").str.count_matches(r"\p{L}+") >= self.lang_min_words)
        )
        if candidates.is_empty():
            return NO_LANG
        hits = (
            candidates.select(
                "row_id",
                "source",
                "code",
                pl.col("text").str.to_lowercase().str.extract_all(r"\p{L}+").alias("word"),
            )
            .explode("word")
            .join(FUNCTION_WORDS, on="word", how="inner")
            .group_by("row_id", "source", "code", maintain_order=True)
            .agg(
                *(
                    pl.col("lang").filter(pl.col("lang") == lang).len().alias(lang)
                    for lang in STOPWORD_LANGS
                ),
                *(
                    pl.col("word").filter(pl.col("lang") == lang).n_unique().alias(f"{lang}_d")
                    for lang in STOPWORD_LANGS
                ),
            )
        )
        expected = pl.sum_horizontal(
            pl.when(pl.col("code") == lang).then(pl.col(lang)).otherwise(0)
            for lang in STOPWORD_LANGS
        )
        # The other language with most hits; arg_max takes the first on ties (deterministic).
        others = pl.concat_list(
            [pl.when(pl.col("code") == lang).then(0).otherwise(lang) for lang in STOPWORD_LANGS]
        )
        best = others.list.arg_max()
        return (
            hits.with_columns(
                expected=expected,
                n=others.list.get(best),
                distinct=pl.concat_list([f"{lang}_d" for lang in STOPWORD_LANGS]).list.get(best),
                lang=pl.lit(list(STOPWORD_LANGS), dtype=pl.List(pl.String)).list.get(best),
            )
            .filter(
                (pl.col("n") >= self.lang_min_hits)
                & (pl.col("distinct") >= self.lang_min_distinct)
                & (pl.col("n") >= self.lang_ratio * pl.col("expected").clip(lower_bound=1))
            )
            .select(
                "row_id",
                "source",
                pl.format(
                    "answer reads as {} ({} {} function words, {} {}); conversation lang is {}",
                    "lang",
                    "n",
                    "lang",
                    "expected",
                    "code",
                    "code",
                ).alias("reason"),
                (pl.col("n") / (pl.col("n") + pl.col("expected"))).cast(pl.Float64).alias("score"),
            )
        )


@dataclass(frozen=True)
class LengthFilter:
    """Answers and prompts outside token bounds.

    ``min_answer_tokens``/``max_answer_tokens``: bounds for each assistant turn (default 1:
    FLAN's one-token answers "yes", "B", "5" are fine; ``None`` disables a bound).
    ``max_prompt_tokens``: bound for the system and user turns together. ``count_tokens``: a
    ``texts -> counts`` callable, e.g. ``curation.tokens.TokenCounter(tokenizer)``; without one,
    whitespace-separated words are counted and every reason says so. Rows with no assistant
    turn are left to ``quality.empty_answer``. ``policy``: verdict per source.
    """

    category: ClassVar[str] = "length"
    min_answer_tokens: int | None = 1
    max_answer_tokens: int | None = 4096
    max_prompt_tokens: int | None = 8192
    count_tokens: Callable[[list[str]], list[int]] | None = field(
        default=None, repr=False, compare=False
    )
    policy: Policy = Policy("drop")

    def __call__(self, batch: Batch) -> Findings:
        messages = batch.messages.filter(pl.col("role").is_in(["system", "user", "assistant"]))
        if self.count_tokens is None:
            unit = "whitespace words (no tokenizer given)"
            counted = messages.with_columns(n=pl.col("content").str.count_matches(r"\S+"))
        else:
            unit = "tokens"
            counts = self.count_tokens(messages["content"].to_list())
            counted = messages.with_columns(n=pl.Series(counts, dtype=pl.Int64))
        counted = counted.with_columns(pl.col("n").cast(pl.Int64))
        answers = counted.filter(pl.col("role") == "assistant")
        parts = []
        if self.min_answer_tokens is not None:
            short = answers.filter(pl.col("n") < self.min_answer_tokens)
            parts.append(
                self._worst(short, "n", descending=False).select(
                    "row_id",
                    pl.lit("length.too_short").alias("rule"),
                    self.policy.expr().alias("verdict"),
                    pl.format(
                        "answer turn {} has {} {} (minimum {})",
                        "turn",
                        "n",
                        pl.lit(unit),
                        pl.lit(self.min_answer_tokens),
                    ).alias("reason"),
                    pl.col("n").cast(pl.Float64).alias("score"),
                )
            )
        if self.max_answer_tokens is not None:
            long = answers.filter(pl.col("n") > self.max_answer_tokens)
            parts.append(
                self._worst(long, "n", descending=True).select(
                    "row_id",
                    pl.lit("length.too_long").alias("rule"),
                    self.policy.expr().alias("verdict"),
                    pl.format(
                        "answer turn {} has {} {} (maximum {})",
                        "turn",
                        "n",
                        pl.lit(unit),
                        pl.lit(self.max_answer_tokens),
                    ).alias("reason"),
                    pl.col("n").cast(pl.Float64).alias("score"),
                )
            )
        if self.max_prompt_tokens is not None:
            prompts = (
                counted.filter(pl.col("role") != "assistant")
                .group_by("row_id", "source")
                .agg(pl.col("n").sum())
                .filter(pl.col("n") > self.max_prompt_tokens)
            )
            parts.append(
                prompts.select(
                    "row_id",
                    pl.lit("length.prompt_too_long").alias("rule"),
                    self.policy.expr().alias("verdict"),
                    pl.format(
                        "system and user turns have {} {} (maximum {})",
                        "n",
                        pl.lit(unit),
                        pl.lit(self.max_prompt_tokens),
                    ).alias("reason"),
                    pl.col("n").cast(pl.Float64).alias("score"),
                )
            )
        return Findings(ledger=_in_row_order(batch, parts))

    @staticmethod
    def _worst(frame: pl.DataFrame, by: str, descending: bool) -> pl.DataFrame:
        """One row per conversation: its most extreme turn (the first one on ties)."""
        return (
            frame.sort(by, descending=descending, maintain_order=True)
            .group_by("row_id", maintain_order=True)
            .first()
        )
