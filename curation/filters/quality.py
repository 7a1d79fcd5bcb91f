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

Speed (a million conversations on two cores): the answers' lowercased \w+ words are extracted
once and shared by the repetition and language rules; cheap bounds that can only over-report
(3-gram and function-word counts over 64-bit hashes, repeated lines, byte lengths) pick the few
answers that could fire, and only those are measured the way the rules read, so verdicts are
exactly those of measuring every answer (tests/test_filter_quality.py runs the implementation
this replaced beside it). Row-wise string work runs on slices of the frame at once.
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
# The same with ``fw`` (the row number) and ``h``, the 64-bit hash that ``answer_words`` gives
# each word (computed the same way, inside ``list.eval``).
FUNCTION_WORD_IDS = FUNCTION_WORDS.with_row_index("fw").with_columns(
    h=pl.Series([FUNCTION_WORDS["word"]]).list.eval(pl.element().hash()).explode()
)
# Each function word's language, as its position in STOPWORD_LANGS.
FUNCTION_WORD_LANGS = FUNCTION_WORDS["lang"].replace_strict(
    {lang: i for i, lang in enumerate(STOPWORD_LANGS)}, return_dtype=pl.UInt8
)

# A prompt that asks for a translation legitimately gets an answer in another language.
TRANSLATION = (
    r"(?i)translat|übersetz|traduc|traduz|tradurr|traduis|vertaal|перев|翻译|翻譯|翻訳|번역"
)
CODE = r"(?s)```.*?```|`[^`\n]*`|https?://\S+|www\.\S+|\S+@\S+"
# Every CODE match contains one of these: a text without them is left as it is.
CODE_MARKERS = r"[`@]|http|www\."

# Lowercasing keeps which characters are word characters (\w) and letters (\p{L}), so the \w+
# words and \p{L}+ runs of a lowercased text are those of the text, lowercased, except for these
# code points: U+0130 (İ) lowercases to "i" plus a combining dot (a mark: \w, not a letter), and
# U+A7D2/U+A7D4 to letters newer than the regex engine's tables. Texts with one take the plain
# path. tests/test_filter_quality.py checks the list against every code point.
CASE_SHIFTS_WORDS = r"[\x{130}\x{A7D2}\x{A7D4}]"
# Word characters that are not letters (digits, underscore, marks ...). In a text where none
# touches a letter, every \w+ word is either a whole \p{L}+ run or holds no letter at all.
NOT_LETTER = r"[\w--\p{L}]"
LETTER_TOUCHES_NOT_LETTER = rf"\p{{L}}{NOT_LETTER}|{NOT_LETTER}\p{{L}}"
# Answers the language test reads on the joined text of their row rather than turn by turn.
TEXT_PATH = f"{CODE_MARKERS}|{CASE_SHIFTS_WORDS}"
# Odd 64-bit multiplier that folds three word hashes into one 3-gram hash (wrapping arithmetic).
GRAM_MIX = 0x9E3779B97F4A7C15
# The smallest slice ``rowwise`` cuts a frame into.
PARALLEL_ROWS = 50_000

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


def answer_rows(batch: Batch, answers: pl.DataFrame | None = None) -> pl.DataFrame:
    """``Batch.answers`` (or ``answers``) with ``_row``, the position of each answer's row in
    ``batch.rows``: one join on row_id that the rules share instead of each joining on it."""
    answers = batch.answers() if answers is None else answers
    if "_row" in answers.columns:
        return answers
    position = answers.select("row_id").join(
        batch.rows.select("row_id").with_row_index("_row"),
        on="row_id",
        how="left",
        maintain_order="left",
    )
    return answers.with_columns(position["_row"])


def rowwise(frame: pl.DataFrame, *steps: list[pl.Expr]) -> pl.DataFrame:
    """``frame.with_columns(*steps[0]).with_columns(*steps[1]) ...`` for row-wise expressions,
    computed on slices of the frame at once: polars runs a string expression over one column on
    one thread, and these are most of the filters' work."""
    parts = min(pl.thread_pool_size(), frame.height // PARALLEL_ROWS)

    def plan(lazy: pl.LazyFrame) -> pl.LazyFrame:
        for step in steps:
            lazy = lazy.with_columns(step)
        return lazy

    if parts <= 1:
        return plan(frame.lazy()).collect()
    size = -(-frame.height // parts)
    return pl.concat(
        pl.collect_all([plan(frame.slice(at, size).lazy()) for at in range(0, frame.height, size)]),
        rechunk=True,  # later steps that mix its columns with others' want aligned chunks
    )


def answer_words(answers: pl.DataFrame) -> pl.DataFrame:
    """Assistant turns (``Batch.answers``) with ``lower`` (the content lowercased), ``words``
    (its \\w+ words) and ``hashes`` (a 64-bit hash per word): one regex pass over the answers
    that the repetition and language rules share."""
    return rowwise(
        answers,
        [pl.col("content").str.to_lowercase().alias("lower")],
        [pl.col("lower").str.extract_all(r"\w+").alias("words")],
        [pl.col("words").list.eval(pl.element().hash()).alias("hashes")],
    )


def _lines(content: pl.Expr) -> pl.Expr:
    """Non-empty lines, stripped."""
    line = pl.element().str.strip_chars()
    return content.str.split("\n").list.eval(line.filter(line != ""))


def _duplicate_line_chars(lines: pl.Expr) -> pl.Expr:
    """Share of characters in lines that repeat an earlier line (0 without lines)."""
    return (
        lines.list.eval(
            pl.when(pl.element().is_first_distinct())
            .then(0)
            .otherwise(pl.element().str.len_chars())
            .sum()
            / pl.element().str.len_chars().sum()
        )
        .list.first()
        .fill_nan(0.0)
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
        # Shared by the rules: the assistant turns, and their lowercased \w+ words (one regex
        # pass that the repetition and language rules would otherwise each make).
        answers = answer_rows(batch)
        words = answer_words(answers)
        parts = [
            self.empty_answer(batch, answers),
            self.repetition(batch, words),
            self.non_printing(batch),
            self.lang_mismatch(batch, words),
        ]
        return Findings(ledger=_in_row_order(batch, parts))

    def _lang_policy(self) -> Policy:
        assert isinstance(self.lang_policy, Policy)  # converted in __post_init__
        return self.lang_policy

    # --- empty -------------------------------------------------------------------------------

    def empty_answer(self, batch: Batch, answers: pl.DataFrame | None = None) -> pl.DataFrame:
        answers = answer_rows(batch, answers)
        # Rows by position: a flag per row, set by its visible answers (no join on row_id).
        visible = answers.select(
            pl.col("_row").filter(pl.col("content").str.contains(VISIBLE))
        ).to_series()
        blank = (
            pl.Series("blank", dtype=pl.Boolean)
            .extend_constant(True, batch.rows.height)
            .scatter(visible, False)
        )
        if not blank.any():
            return EMPTY_LEDGER
        empty = batch.rows.with_row_index("_row").filter(blank)
        turns = (
            answers.select("_row")
            .filter(pl.col("_row").is_in(empty["_row"].implode()))
            .group_by("_row")
            .agg(pl.len().alias("turns"))
        )
        return empty.join(turns, on="_row", how="left", maintain_order="left").select(
            "row_id",
            pl.lit("quality.empty_answer").alias("rule"),
            self.policy.expr().alias("verdict"),
            pl.when(pl.col("turns").is_null())
            .then(pl.lit("no assistant turn"))
            .otherwise(pl.format("all {} assistant turn(s) are blank", "turns"))
            .alias("reason"),
            pl.lit(None, pl.Float64).alias("score"),
        )

    # --- repetition --------------------------------------------------------------------------

    def repetition(self, batch: Batch, words: pl.DataFrame | None = None) -> pl.DataFrame:
        words = answer_words(batch.answers()) if words is None else words
        return self._measure_repetition(self._may_repeat(words))

    def _may_repeat(self, words: pl.DataFrame) -> pl.DataFrame:
        """The answers (of ``answer_words``) that some repetition measure could fire on, in
        their order; ``_measure_repetition`` judges them exactly.

        With n 3-grams of which u are distinct, the most frequent one occurs at most n - u + 1
        times, so top_gram <= (n - u + 1) / n, and dup_grams = 1 - u / n. Counting u over 64-bit
        gram hashes can only undercount it (equal grams always hash alike), which can only
        raise both bounds: an answer below both thresholds here is below them exactly, and a
        hash collision merely sends one more answer to the exact measures. Without a repeated
        non-empty line dup_lines is 0. Verdicts are therefore those of measuring every answer.
        """
        if self.repetition_min_words < 3:  # two words make no 3-gram: measure them all
            return words
        h = pl.col("hashes")
        mix = pl.lit(GRAM_MIX, dtype=pl.UInt64)
        n = (pl.col("words").list.len().cast(pl.Int64) - 2).clip(lower_bound=0)
        grams = (h.list.slice(0, n) * mix + h.list.slice(1, n)) * mix + h.list.slice(2, n)
        # Lowercasing may move word boundaries in these: left to the exact measures.
        odd = pl.col("content").str.contains(CASE_SHIFTS_WORDS)
        n_grams = (pl.col("n_words").cast(pl.Int64) - 2).clip(lower_bound=0)
        may_grams = ((n_grams - pl.col("distinct") + 1) / n_grams > self.max_top_trigram_share) | (
            1 - pl.col("distinct") / n_grams > self.max_duplicate_trigrams
        )
        if self.max_duplicate_line_chars < 0.0:  # dup_lines is 0 without a repeated line
            may_lines = pl.lit(True)
        else:
            # Fewer distinct non-empty stripped lines than non-empty ones: a line repeats.
            lines = pl.col("lines")
            may_lines = pl.col("multiline") & (
                lines.list.n_unique() - lines.list.contains("").cast(pl.UInt32)
                < lines.list.len() - lines.list.count_matches("")
            )
        may = pl.col("odd") | (
            (pl.col("n_words") >= self.repetition_min_words) & (may_grams | may_lines)
        )
        stats = rowwise(
            words.select("content", "words", "hashes"),
            [
                odd.alias("odd"),
                pl.col("words").list.len().alias("n_words"),
                pl.col("content").str.contains("\n", literal=True).alias("multiline"),
                pl.col("content")
                .str.split("\n")
                .list.eval(pl.element().str.strip_chars())
                .alias("lines"),
                grams.list.n_unique().alias("distinct"),
            ],
            [may.alias("may")],
        )
        likely = words.filter(stats["may"])
        # The few left: the gram measures on the hashes, themselves bounds for the same reason
        # (the count of a hash is at least that of each gram with that hash), and dup_lines
        # exactly. Almost only answers that fire get past this.
        g = pl.col("grams")
        measured = likely.select(
            odd.alias("odd"),
            grams.alias("grams"),
            _duplicate_line_chars(_lines(pl.col("content"))).fill_null(0.0).alias("dup_lines"),
        ).select(
            "odd",
            (
                g.list.eval(pl.element().unique_counts().max()).list.first() / g.list.len()
                > self.max_top_trigram_share
            ).alias("top"),
            (1 - g.list.n_unique() / g.list.len() > self.max_duplicate_trigrams).alias("dup"),
            (pl.col("dup_lines") > self.max_duplicate_line_chars).alias("lines"),
        )
        keep = pl.col("odd") | pl.col("top") | pl.col("dup") | pl.col("lines")
        return likely.filter(measured.select(keep.fill_null(False).alias("keep"))["keep"])

    def _measure_repetition(self, answers: pl.DataFrame) -> pl.DataFrame:
        answers = answers.filter(
            pl.col("content").str.count_matches(r"\w+") >= self.repetition_min_words
        )
        if answers.is_empty():
            return EMPTY_LEDGER
        gram = pl.concat_str(
            [pl.element(), pl.element().shift(-1), pl.element().shift(-2)], separator=" "
        )
        measured = answers.select(
            "row_id",
            "source",
            "turn",
            pl.col("content")
            .str.to_lowercase()
            .str.extract_all(r"\w+")
            .list.eval(gram.drop_nulls())
            .alias("grams"),
            _lines(pl.col("content")).alias("lines"),
        ).select(
            "row_id",
            "source",
            "turn",
            "grams",
            "lines",
            _duplicate_line_chars(pl.col("lines")).alias("dup_lines"),
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
        flagged = rowwise(
            batch.messages.select("content"),
            [pl.col("content").str.contains(f"{CONTROL}|{JUNK}").alias("flagged")],
        )
        suspect = batch.messages.filter(flagged["flagged"])
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

    def lang_mismatch(self, batch: Batch, words: pl.DataFrame | None = None) -> pl.DataFrame:
        code = pl.col("lang").str.to_lowercase().str.extract(r"^([a-z]{2,3})(?:[-_].*)?$", 1)
        # ``_r``: the row's position in batch.rows.
        known = (
            batch.rows.select("row_id", "source", code.alias("code"))
            .with_row_index("_r")
            .filter(pl.col("code").is_in(list(LANG_SCRIPTS)))
        )
        if known.is_empty():
            return EMPTY_LEDGER
        asks_translation = (
            batch.prompts()
            .filter(pl.col("content").str.contains(TRANSLATION))
            .select("row_id")
            .unique()
        )
        rows = known.join(asks_translation, on="row_id", how="anti", maintain_order="left")
        words = answer_words(answer_rows(batch)) if words is None else answer_rows(batch, words)
        # Each answer's judged row (``_r``, null for the others) and its code, in answer order:
        # the wide frame is never gathered, each step selects the few columns it reads.
        codes = (
            pl.Series("code", dtype=pl.String)
            .extend_constant(None, batch.rows.height)
            .scatter(rows["_r"], rows["code"])
        )
        code_of = codes.gather(words["_row"])
        # Per answer: read on the joined text (code markup, case-shifting characters) and
        # whether a letter touches a digit, mark or underscore (see ``_turn_hits``).
        flags = rowwise(
            words.select("content", "lower"),
            [
                pl.col("content").str.contains(TEXT_PATH).alias("text_path"),
                pl.col("lower").str.contains(LETTER_TOUCHES_NOT_LETTER).alias("touching"),
            ],
        )
        turns = words.with_columns(
            pl.when(code_of.is_not_null()).then(pl.col("_row")).alias("_r"),
            code_of,
            flags["text_path"],
            flags["touching"],
        )
        scripts = self._script_mismatch(self._joined(turns, rows, self._script_rows(turns, rows)))
        function_words = self._function_word_mismatch(turns, rows)
        # A row found by both tests is reported once, by the script test (the stronger one).
        found = pl.concat([scripts, function_words]).unique(
            "row_id", keep="first", maintain_order=True
        )
        return found.select(
            "row_id",
            pl.lit("quality.lang_mismatch").alias("rule"),
            self._lang_policy().expr().alias("verdict"),
            "reason",
            "score",
        )

    @staticmethod
    def _joined(turns: pl.DataFrame, rows: pl.DataFrame, which: pl.Series) -> pl.DataFrame:
        """For the rows ``which`` names (``_r``): their answers joined in turn order with code,
        URLs and e-mail addresses blanked (``text``), and the row's row_id, source and code."""
        # Lists joined after the aggregation: faster than ``Batch.texts``' in-group str.join.
        return (
            turns.select("_r", "turn", "content")
            .filter(pl.col("_r").is_in(which.implode()))
            .group_by("_r")
            .agg(pl.col("content").sort_by("turn"))
            .select("_r", pl.col("content").list.join("\n\n").alias("text"))
            .join(rows, on="_r", how="inner")
            .with_columns(pl.col("text").str.replace_all(CODE, " "))
        )

    def _script_rows(self, turns: pl.DataFrame, rows: pl.DataFrame) -> pl.Series:
        """Rows the script test could fire on (``_r``). For a language that accepts Latin it
        fires only when its scripts hold under half of at least ``lang_min_letters`` letters:
        then over ``lang_min_letters / 2`` letters are not Latin, so not ASCII either (each
        one byte longer in UTF-8 than in characters), and blanking code only removes some."""
        latin = [c for c, s in LANG_SCRIPTS.items() if "Latin" in s]
        content = pl.col("content")
        extra = content.str.len_bytes().cast(pl.Int64) - content.str.len_chars().cast(pl.Int64)
        half = self.lang_min_letters / 2
        non_ascii = turns.select("_r", "content", extra.alias("extra")).filter(
            pl.col("_r").is_not_null() & (pl.col("extra") > 0)
        )
        rough = (
            non_ascii.group_by("_r")
            .agg(pl.col("extra").sum())
            .filter(pl.col("extra") > half)["_r"]
            .implode()
        )
        foreign = (
            non_ascii.filter(pl.col("_r").is_in(rough))
            .group_by("_r")
            .agg(content.str.count_matches(r"[\p{L}--\p{Latin}]").sum())
            .filter(pl.col("content") > half)
        )
        other = rows.filter(~pl.col("code").is_in(latin))
        return pl.concat([foreign["_r"], other["_r"]]).unique()

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
        # Letters of the expected scripts first, language by language; the other scripts are
        # counted only for the reason of a row that fires.
        expected = pl.concat(
            [
                group.with_columns(
                    expected=pl.sum_horizontal(
                        pl.col("text").str.count_matches(SCRIPTS[name])
                        for name in LANG_SCRIPTS[str(lang)]
                    ).cast(pl.Int64)
                )
                for (lang,), group in candidates.group_by("code", maintain_order=True)
            ]
        )
        fired = expected.with_columns(share=pl.col("expected") / pl.col("letters")).filter(
            pl.col("share") < 0.5
        )
        if fired.is_empty():
            return NO_LANG
        counted = fired.with_columns(
            pl.col("text").str.count_matches(pattern).alias(name)
            for name, pattern in SCRIPTS.items()
        )
        # arg_max takes the first maximum: ties resolve the same way every run.
        top = pl.concat_list([pl.col(name) for name in SCRIPTS]).list.arg_max()
        return counted.with_columns(
            top_name=pl.lit(list(SCRIPTS), dtype=pl.List(pl.String)).list.get(top),
            top_n=pl.concat_list([pl.col(name) for name in SCRIPTS]).list.get(top),
        ).select(
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

    def _function_word_mismatch(self, turns: pl.DataFrame, rows: pl.DataFrame) -> pl.DataFrame:
        judged = pl.col("_r").is_not_null() & pl.col("code").is_in(list(STOPWORD_LANGS))
        # Rows read on their joined text: where code markup may be blanked (a fenced block may
        # even span turns) or lowercasing moves word boundaries. The rest, turn by turn.
        as_text = (
            turns["_r"].filter(turns.select(judged & pl.col("text_path")).to_series()).unique()
        )
        by_turn = judged & ~pl.col("_r").is_in(as_text.implode())
        index = {lang: i for i, lang in enumerate(STOPWORD_LANGS)}
        codes = (  # the expected language of each row, by position
            pl.Series("code", dtype=pl.UInt8)
            .extend_constant(None, int(rows["_r"].max() or 0) + 1)  # type: ignore[arg-type]
            .scatter(
                rows["_r"],
                rows["code"].replace_strict(index, default=None, return_dtype=pl.UInt8),
            )
        )
        hits = pl.concat(
            [
                self._text_hits(self._joined(turns, rows, as_text)),
                self._turn_hits(turns, by_turn, codes),
            ]
        )
        likely = self._likely(hits, codes)
        # The text-read rows were held to lang_min_words already; the turn-read ones are held
        # to it here, only the few likely to fire (a turn's runs are counted as written: the
        # count is the same lowercased, and joining adds none).
        read_by_turn = likely.filter(~likely.is_in(as_text.implode())).implode()
        enough = (
            turns.select("_r", "content")
            .filter(pl.col("_r").is_in(read_by_turn))
            .group_by("_r")
            .agg(pl.col("content").str.count_matches(r"\p{L}+").sum())
            .filter(pl.col("content") >= self.lang_min_words)["_r"]
        )
        chosen = pl.concat([likely.filter(likely.is_in(as_text.implode())), enough])
        return self._function_word_verdicts(hits.filter(pl.col("_r").is_in(chosen.implode())), rows)

    def _text_hits(self, answers: pl.DataFrame) -> pl.DataFrame:
        """Function words among the \\p{L}+ runs of joined texts with enough of them: _r and
        fw (the function word's row in FUNCTION_WORDS), one row per occurrence."""
        return (
            answers.filter(pl.col("text").str.count_matches(r"\p{L}+") >= self.lang_min_words)
            .select(
                "_r", pl.col("text").str.to_lowercase().str.extract_all(r"\p{L}+").alias("word")
            )
            .explode("word")
            .join(FUNCTION_WORD_IDS.select("word", "fw"), on="word", how="inner")
            .select("_r", "fw")
        )

    def _turn_hits(self, turns: pl.DataFrame, chosen: pl.Expr, codes: pl.Series) -> pl.DataFrame:
        """Function words among the \\p{L}+ runs of the ``chosen`` turns, whose rows have no
        code markup or case-shifting characters: joining the turns with blank lines and
        blanking nothing leaves each turn's runs as they are, so they come from the shared
        lowercased words. _r and fw, one row per occurrence, in rows of any length, but only
        for rows with ``lang_min_hits`` hits of one other language (the others cannot fire).
        """
        # An all-letter \w+ word is a whole \p{L}+ run, and function words are letters: every
        # word hit is a run hit. Where no letter touches a digit, mark or underscore there are
        # no others; elsewhere the runs are extracted again.
        picked = turns.select(chosen.fill_null(False)).to_series()
        touching = picked & turns["touching"]
        plain = picked & ~touching
        extracted = (
            turns.select("_r", "lower")
            .filter(touching)
            .select("_r", pl.col("lower").str.extract_all(r"\p{L}+").alias("run"))
        )
        # First on the 64-bit hashes alone (exploded, then filtered, on the streaming engine,
        # which spreads this over the threads): equal words hash alike, so these counts are at
        # least the true ones, and a row short of lang_min_hits here is short of it.
        hashes = pl.concat(
            [
                turns.select("_r", plain.alias("keep"), pl.col("hashes").alias("h")),
                extracted.select(
                    "_r",
                    pl.lit(True).alias("keep"),
                    pl.col("run").list.eval(pl.element().hash()).alias("h"),
                ),
            ]
        )
        candidates = (
            hashes.lazy()
            .explode("h")
            .filter(pl.col("keep") & pl.col("h").is_in(FUNCTION_WORD_IDS["h"].implode()))
            .join(FUNCTION_WORD_IDS.lazy().select("h", "fw"), on="h", how="inner")
            .collect(engine="streaming")
        )
        rows = self._enough_other(candidates.select("_r", "fw"), codes).implode()
        # Then word by word, for those rows only.
        words = turns.select("_r", pl.col("words").alias("run")).filter(
            plain & turns.select(pl.col("_r").is_in(rows)).to_series()
        )
        return (
            pl.concat([words, extracted.filter(pl.col("_r").is_in(rows))])
            .explode("run")
            .join(FUNCTION_WORD_IDS, left_on="run", right_on="word", how="inner")
            .select("_r", "fw")
        )

    def _enough_other(self, hits: pl.DataFrame, codes: pl.Series) -> pl.Series:
        """Rows (``_r``) with ``lang_min_hits`` hits of one language other than their own."""
        if self.lang_min_hits <= 0:  # then no other-language hit may be enough
            return hits["_r"].unique()
        lang = FUNCTION_WORD_LANGS.gather(hits["fw"])
        return (
            hits.select("_r", lang.alias("li"))
            .filter(pl.col("li") != codes.gather(hits["_r"]))
            .group_by("_r", "li")
            .agg(pl.len().alias("n"))
            .filter(pl.col("n") >= self.lang_min_hits)["_r"]
            .unique()
        )

    def _likely(self, hits: pl.DataFrame, codes: pl.Series) -> pl.Series:
        """Rows (``_r``) whose most frequent other language has enough hits, absolutely and
        against the expected language: the others cannot fire."""
        if self.lang_min_hits <= 0:  # no other-language hit may be enough: keep every row
            return hits["_r"].unique()
        marked = hits.select(
            "_r",
            FUNCTION_WORD_LANGS.gather(hits["fw"]).alias("li"),
            (FUNCTION_WORD_LANGS.gather(hits["fw"]) == codes.gather(hits["_r"])).alias("own"),
        )
        best = (
            marked.filter(~pl.col("own"))
            .group_by("_r", "li")
            .agg(pl.len().alias("n"))
            .group_by("_r")
            .agg(pl.col("n").max())
            .filter(pl.col("n") >= self.lang_min_hits)
        )
        expected = (
            marked.filter(pl.col("own") & pl.col("_r").is_in(best["_r"].implode()))
            .group_by("_r")
            .agg(pl.len().alias("expected"))
        )
        return (
            best.join(expected, on="_r", how="left")
            .with_columns(pl.col("expected").fill_null(0))
            .filter(pl.col("n") >= self.lang_ratio * pl.col("expected").clip(lower_bound=1))["_r"]
        )

    def _function_word_verdicts(self, hits: pl.DataFrame, rows: pl.DataFrame) -> pl.DataFrame:
        if hits.is_empty():
            return NO_LANG
        hits = pl.concat(
            [hits.select("_r"), FUNCTION_WORDS.select("word", "lang")[hits["fw"]]],
            how="horizontal",
        ).join(rows, on="_r", how="inner")
        hits = hits.group_by("row_id", "source", "code", maintain_order=True).agg(
            *(
                pl.col("lang").filter(pl.col("lang") == lang).len().alias(lang)
                for lang in STOPWORD_LANGS
            ),
            *(
                pl.col("word").filter(pl.col("lang") == lang).n_unique().alias(f"{lang}_d")
                for lang in STOPWORD_LANGS
            ),
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

    Only texts whose length could break a bound are counted. A counter with a true
    ``tokens_within_bytes`` attribute (``TokenCounter`` over a byte-level BPE) promises that a
    text of b UTF-8 bytes has between min(b, 1) and b tokens; whitespace words obey the same
    bounds (0 without a non-space character). With the default bounds that settles nearly
    every text without counting it; other counters count every text.
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
        unit = "whitespace words (no tokenizer given)" if self.count_tokens is None else "tokens"
        counted = messages.with_columns(n=self._lengths(messages))
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

    def _lengths(self, messages: pl.DataFrame) -> pl.Series:
        """Each message's length in the filter's unit (Int64), where it can matter: null for a
        text that its byte length already proves within every bound it is held to."""
        content = pl.col("content")
        if self.count_tokens is None:

            def count(texts: pl.Series) -> pl.Series:
                return texts.str.count_matches(r"\S+")

            # \S+ words are disjoint runs of non-space characters, each at least one byte.
            low = content.str.contains(r"\S").cast(pl.Int64)
            high = content.str.len_bytes().cast(pl.Int64) * low
        elif getattr(self.count_tokens, "tokens_within_bytes", False):
            count_tokens = self.count_tokens

            def count(texts: pl.Series) -> pl.Series:
                return pl.Series(count_tokens(texts.to_list()), dtype=pl.Int64)

            high = content.str.len_bytes().cast(pl.Int64)
            low = (high > 0).cast(pl.Int64)
        else:
            counts = self.count_tokens(messages["content"].to_list())
            return pl.Series("n", counts, dtype=pl.Int64)
        bounds = messages.select(
            "row_id",
            (pl.col("role") == "assistant").alias("answer"),
            low.alias("low"),
            high.alias("high"),
        )
        answer = pl.col("answer")
        # An answer needs counting unless its bounds settle both rules; the prompt turns of a
        # row only if their byte lengths together could exceed max_prompt_tokens.
        unsettled = pl.lit(False)
        if self.min_answer_tokens is not None:
            unsettled = unsettled | (pl.col("low") < self.min_answer_tokens)
        if self.max_answer_tokens is not None:
            unsettled = unsettled | (pl.col("high") > self.max_answer_tokens)
        need = answer & unsettled
        if self.max_prompt_tokens is not None:
            long_prompts = (
                bounds.filter(~answer)
                .group_by("row_id")
                .agg(pl.col("high").sum())
                .filter(pl.col("high") > self.max_prompt_tokens)["row_id"]
            )
            need = need | (~answer & pl.col("row_id").is_in(long_prompts.implode()))
        known = pl.col("low") == pl.col("high")  # empty, or a single byte: nothing to count
        at = bounds.select(need & ~known).to_series().arg_true()
        n = pl.Series("n", dtype=pl.Int64).extend_constant(None, messages.height)
        if len(at):
            n = n.scatter(at, count(messages["content"].gather(at)).cast(pl.Int64))
        return bounds.with_columns(n=n).select(
            pl.when(known).then(pl.col("low")).otherwise(pl.col("n")).alias("n")
        )["n"]

    @staticmethod
    def _worst(frame: pl.DataFrame, by: str, descending: bool) -> pl.DataFrame:
        """One row per conversation: its most extreme turn (the first one on ties)."""
        return (
            frame.sort(by, descending=descending, maintain_order=True)
            .group_by("row_id", maintain_order=True)
            .first()
        )
