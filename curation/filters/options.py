"""Explicit answer options in prompts (FLAN's "OPTIONS:\\n- yes\\n- no"): drop, rewrite, keep some.

Why: people do not hand an assistant a menu of answers. A model trained on many prompts that end
in "OPTIONS:\\n(A) ...\\n(B) ..." learns a format that never occurs in real conversations, and
answers that are only a letter ("(B)") teach nothing once the options are gone. Rewriting removes
the options block so the prompt reads as a natural question, and turns a letter answer into the
option's text so the pair still makes sense.

Detection is one vectorised ``str.contains`` over the user messages. The rewrite strips blocks with
``str.replace_all``; only pairs whose answer (or a few-shot example in the prompt) refers to an
option by letter go through a small Python step that maps the letter to its option. The patterns
in ``RULES`` and ``STRIP`` mean the same in Rust's regex crate (polars) and Python's ``re``: no
look-around or backreferences, no ``\\b``/``\\w``/``\\s``, no ``$`` outside multi-line mode.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from hashlib import blake2b
from typing import ClassVar, NamedTuple

import polars as pl

from curation.filters.base import Batch, Findings, Policy


def _casings(*phrases: str) -> str:
    """An alternation of each phrase in lower case, Capitalised, Title Case and UPPER CASE. Not
    (?i): with it the header words have too many spellings for the regex engine's literal
    prefilter, which is what makes the scan over a million prompts fast."""
    variants = {v for p in phrases for v in (p, p.capitalize(), p.title(), p.upper())}
    return "(?:" + "|".join(sorted(variants, key=lambda v: (-len(v), v))) + ")"


# Headers FLAN-style templates put before a list of choices: "OPTIONS:", "Options:", "Choose
# from:", "Choose your answer from:", "Select from the following.", "Pick the answer from:",
# "Possible answers:", "Answer choices:", "Available options:"...
_HEADER = _casings(
    "options",
    "choices",
    "answer choices",
    "possible answers",
    "available options",
    "available choices",
    *(
        f"{verb}{middle} from{tail}"
        for verb in ("choose", "select", "pick")
        for middle in ("", " your answer", " the answer", " an answer", " a answer")
        for tail in ("", " the following", " among")
    ),
)
# After the header: a colon or full stop (and maybe line breaks), or at least one line break;
# then the first choice: "- ", "* ", "• ", "(a) ", "a) ", "1) ", "[a] ".
_AFTER_HEADER = r"[ \t]*(?:[:.][ \t]*(?:\r?\n[ \t]*)*|(?:\r?\n[ \t]*)+)"
_ITEM = r"(?:[-*•][ \t]|\(?[a-hA-H1-8]\)[ \t]|\[[a-hA-H]\][ \t])"

# A prompt "carries options" when an options header is followed by a list of choices, or (NIv2
# style, no header) a line starting "(A)" is followed by a later line starting "(B)". The header
# must start a word ("adoptions:" is no header); "What are my options?" and "two choices - stay
# or go" have no list after a colon or line break.
OPTIONS_PATTERN = (
    r"(?:(?:^|[^A-Za-z])"
    + _HEADER
    + _AFTER_HEADER
    + _ITEM
    + r"|(?m:^)[ \t]*\([Aa]\)[ \t].*\n(?:.*\n)*?[ \t]*\([Bb]\)[ \t])"
)
OPTIONS_RE = re.compile(OPTIONS_PATTERN)

# An answer that names an option by label: "B", "(B)", "b)", "[b]", "B.", "2", "(A) higher", or a
# chain of thought ending "So the answer is (C)." Only a superset to pick the pairs that go to
# the Python step; ``resolve`` decides.
_WS = "[ \t\r\n\f\v\u00a0\u200b\u3000]"  # the characters of WHITESPACE, as a class
LETTER_CANDIDATE = (
    rf"^{_WS}*[(\[]?[A-Ha-h1-8][)\]]?\.?{_WS}*$"
    rf"|^{_WS}*[(\[][A-Ha-h1-8][)\]]"
    r"|(?:[Aa]nswer is|ANSWER IS):?[ \t]*\([A-Ha-h]\)"
)
# A few-shot example inside a prompt that answers by letter ("... So the answer is (C).").
PROMPT_LETTER_REF = r"(?:[Aa]nswer is|ANSWER IS):?[ \t]*\([A-Ha-h]\)"

RULES: list[tuple[str, str]] = [("options.explicit", OPTIONS_PATTERN)]

# One options block: the header and its choices, one per line or several on the header's line.
_BLOCK = rf"{_HEADER}{_AFTER_HEADER}{_ITEM}[^\n]*(?:\r?\n[ \t]*{_ITEM}[^\n]*)*"
# NIv2 style: consecutive lines "(A) ...", "(B) ..." with no header.
_LETTER_LINES = r"(?m:^)[ \t]*\([A-Ha-h]\)[ \t][^\n]*(?:\r?\n[ \t]*\([A-Ha-h]\)[ \t][^\n]*)+"
# Every block of a prompt, each with the character before a header (the guard that keeps
# "adoptions:" out), as polars' ``extract_all`` and Python's ``findall`` both list them: for the
# score (how many), the reason (the first) and the letter step (which options come where).
BLOCKS = rf"(?:^|[^A-Za-z]){_BLOCK}|{_LETTER_LINES}"

# (pattern, replacement) applied in order to a prompt with options: every block with the line
# break after it (lone "(A) ..." lines too), then runs of blank lines. No guard before the header
# here, unlike detection: it runs only on prompts that have options, and without a leading class
# the regex engine finds the header words by literal search (twice as fast). The price: in a
# prompt that has options, "Pet adoptions:\n- cats" would go too.
STRIP: list[tuple[str, str]] = [
    (rf"[ \t]*{_BLOCK}(?:\r?\n)?|(?m:^)[ \t]*\([A-Ha-h]\)[ \t][^\n]*(?:\r?\n)?", ""),
    (r"\n[ \t]*\n(?:[ \t]*\n)+", "\n\n"),
]
WHITESPACE = " \t\r\n\f\v\u00a0\u200b\u3000"
KEPT_REASON = "kept as part of keep_fraction"
REASON_CHARS = 300

_STRIP_RE = [(re.compile(p), r) for p, r in STRIP]
# Python-only helpers for the letter step (polars never runs these).
_BLOCKS_RE = re.compile(BLOCKS)
_LINE_ITEM_RE = re.compile(
    r"[ \t]*(?:\(([a-hA-H1-8])\)|([a-hA-H1-8])\)|\[([a-hA-H])\]|[-*•])[ \t]+"
)
_INLINE_ITEM_RE = re.compile(r"(?:^|[ \t])(?:\(([a-hA-H])\)|([a-hA-H])\)|\[([a-hA-H])\])[ \t]+")
_BARE_LABEL_RE = re.compile(r"[(\[]?([A-Ha-h1-8])[)\]]?\.?")
_LABEL_TEXT_RE = re.compile(r"[(\[]([A-Ha-h1-8])[)\]][ \t]+(.+)", re.S)
_ANSWER_IS_RE = re.compile(r"((?:[Aa]nswer is|ANSWER IS):?[ \t]*)\(([A-Ha-h])\)")


def has_options(prompt: str) -> bool:
    """The same test as the vectorised filter, for one prompt."""
    return OPTIONS_RE.search(prompt) is not None


@lru_cache(maxsize=1 << 16)
def options_in(block: str) -> tuple[tuple[str | None, str], ...]:
    """The choices of one options block as (label or None, text): "(A) red" → ("A", "red"),
    "2) dog" → ("2", "dog"), "- yes" → (None, "yes"); one choice per line, or lettered choices
    on one line. Cached: templated data repeats a few blocks ("- yes\n- no") over many rows."""
    lines = [line for line in block.splitlines() if line.strip(WHITESPACE)]
    if lines and _LINE_ITEM_RE.match(lines[0]) is None:
        # The header line ("OPTIONS:", "Options: (a) red (b) blue"): keep what follows its
        # colon or full stop. Cheaper than matching the header alternation again.
        head = lines[0]
        cut = min((i for i in (head.find(":"), head.find(".")) if i >= 0), default=len(head))
        rest = head[cut + 1 :]
        lines = ([rest] if rest.strip(WHITESPACE) else []) + lines[1:]
    if len(lines) == 1 and len(_INLINE_ITEM_RE.findall(lines[0])) > 1:
        marks = list(_INLINE_ITEM_RE.finditer(lines[0]))
        ends = [m.start() for m in marks[1:]] + [len(lines[0])]
        return tuple(
            (next(g for g in m.groups() if g).upper(), lines[0][m.end() : end].strip(WHITESPACE))
            for m, end in zip(marks, ends, strict=True)
        )
    choices = []
    for line in lines:
        m = _LINE_ITEM_RE.match(line)
        if m is None:
            continue
        label = next((g for g in m.groups() if g), None)
        choices.append((label and label.upper(), line[m.end() :].strip(WHITESPACE)))
    return tuple(choices)


class Resolution(NamedTuple):
    prompt: str  # the prompt with letter references in its examples replaced (blocks still in)
    answer: str | None  # the answer with its letter replaced; None when there is no answer
    unresolved: str | None  # the letter in the answer that names no option, if any


def _lookup(choices: tuple[tuple[str | None, str], ...], label: str) -> str | None:
    for own, text in choices:
        if own == label:
            return text
    return None


def resolve(prompt: str, answer: str | None, blocks: Sequence[str] | None = None) -> Resolution:
    """Map option letters to option texts: in the prompt's worked examples ("So the answer is
    (C)." after an options block) and in the answer ("B", "(B)", "(A) higher", "... the answer
    is (C)."), each against the nearest options block before it (the last one for the answer).
    An answer that already is one option's text is left as it is. ``blocks``: the prompt's
    ``BLOCKS`` matches in order, when the caller has them already (the filter gets them from
    polars; Python's ``re`` is slow on the long header alternation)."""
    if blocks is None:
        blocks = _BLOCKS_RE.findall(prompt)
    if not blocks:
        return Resolution(prompt, answer, None)
    spans, at = [], 0
    for block in blocks:
        begin = prompt.find(block, at)
        spans.append((begin, begin + len(block)))
        at = begin + len(block)
    parsed = [options_in(block) for block in blocks]

    # Worked examples: a reference after block i and before block i + 1 belongs to block i.
    pieces, start = [], 0
    for i, (_, block_end) in enumerate(spans):
        end = spans[i + 1][0] if i + 1 < len(spans) else len(prompt)
        segment = prompt[block_end:end]

        def fill(ref: re.Match[str], choices=parsed[i]) -> str:
            text = _lookup(choices, ref.group(2).upper())
            return ref.group(0) if text is None else ref.group(1) + text

        pieces.append(prompt[start:block_end] + _ANSWER_IS_RE.sub(fill, segment))
        start = end
    new_prompt = "".join(pieces) + prompt[start:]
    if answer is None:
        return Resolution(new_prompt, None, None)

    choices = parsed[-1]
    stripped = answer.strip(WHITESPACE)
    texts = {text.casefold().rstrip(".") for _, text in choices}
    if stripped.casefold().rstrip(".") in texts:
        return Resolution(new_prompt, answer, None)
    bare = _BARE_LABEL_RE.fullmatch(stripped)
    if bare:
        label = bare.group(1).upper()
        text = _lookup(choices, label)
        if text is not None:
            return Resolution(new_prompt, text, None)
        # A letter that names no option leaves an answer that means nothing; a number may be
        # the answer itself ("How many legs? ... 8"), so it stays.
        return Resolution(new_prompt, answer, label if label.isalpha() else None)
    with_text = _LABEL_TEXT_RE.fullmatch(stripped)
    if with_text:
        text = _lookup(choices, with_text.group(1).upper())
        return Resolution(new_prompt, text or with_text.group(2).strip(WHITESPACE), None)
    unresolved: list[str] = []

    def fill_answer(ref: re.Match[str]) -> str:
        text = _lookup(choices, ref.group(2).upper())
        if text is None:
            unresolved.append(ref.group(2).upper())
            return ref.group(0)
        return ref.group(1) + text

    new_answer = _ANSWER_IS_RE.sub(fill_answer, answer)
    return Resolution(new_prompt, new_answer, unresolved[0] if unresolved else None)


def strip_options(prompt: str) -> str:
    """The prompt without its options blocks, as the filter's rewrite does it."""
    for pattern, repl in _STRIP_RE:
        prompt = pattern.sub(repl, prompt)
    return prompt.strip(WHITESPACE)


def kept_by_fraction(row_id: str, seed: int, fraction: float) -> bool:
    """Whether ``row_id`` is in the kept ``fraction`` for ``seed``: a stable hash, the same on
    every run, machine and library version (polars' own hash is not stable across versions)."""
    if fraction <= 0:
        return False
    digest = blake2b(f"{seed}\x1f{row_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


def _quote(text: pl.Expr, width: int = REASON_CHARS) -> pl.Expr:
    cut = text.str.slice(0, width)
    shown = cut.str.replace_all("\r", "", literal=True).str.replace_all("\n", r"\n", literal=True)
    return pl.when(text.str.len_chars() > width).then(shown + pl.lit("…")).otherwise(shown)


@dataclass(frozen=True)
class OptionsFilter:
    """Explicit answer options in user turns (rules ``options.explicit`` and, when a letter answer
    cannot be mapped to its option, ``options.unresolvable_letter``).

    ``policy``: per source, ``rewrite`` removes the options and turns a letter answer into the
    option's text (``drop`` when the letter names no option or nothing of the prompt is left),
    ``drop`` removes the row, ``flag``/``keep`` only record it.
    ``keep_fraction``: this share of the rows with options is kept as it is (verdict ``flag``),
    so a model still sees a little of the format; 0 keeps none, 1 keeps all.
    ``seed``: which rows make up that share. The choice is a hash of row id and seed, so the same
    rows are kept on every run; change the seed to keep a different sample.
    """

    category: ClassVar[str] = "options"
    policy: Policy = Policy("rewrite")
    keep_fraction: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must be within [0, 1], got {self.keep_fraction}")

    def __call__(self, batch: Batch) -> Findings:
        messages = batch.messages
        prompts = messages.filter(pl.col("role") == "user")
        hits = prompts.filter(pl.col("content").str.contains(OPTIONS_PATTERN))
        if hits.is_empty():
            return Findings()
        # Score: how many blocks the row's prompts have; reason: the first one, quoted.
        found = pl.col("content").str.extract_all(BLOCKS)
        hits = hits.with_columns(found=found).with_columns(
            blocks=pl.max_horizontal(pl.col("found").list.len(), pl.lit(1, dtype=pl.UInt32)),
            block=pl.col("found").list.first().str.strip_chars_start(WHITESPACE),
        )
        # One row per conversation; the (costly) group_by only when a conversation has options
        # in more than one turn.
        if hits.get_column("row_id").is_unique().all():
            rows = hits.select("row_id", "source", pl.col("blocks").alias("score"), "block")
        else:
            rows = hits.group_by("row_id", maintain_order=True).agg(
                pl.col("source").first(),
                pl.col("blocks").sum().alias("score"),
                pl.col("block").drop_nulls().first(),
            )
        rows = rows.with_columns(pl.col("score").cast(pl.Float64))
        verdict = self.policy.expr()
        if self.keep_fraction > 0:
            # A Python hash over the matching rows only (stable across polars versions).
            kept = pl.Series(
                [
                    kept_by_fraction(rid, self.seed, self.keep_fraction)
                    for rid in rows.get_column("row_id")
                ],
                dtype=pl.Boolean,
            )
            rows = rows.with_columns(kept=kept)
            verdict = pl.when(pl.col("kept")).then(pl.lit("flag")).otherwise(verdict)
        else:
            rows = rows.with_columns(kept=pl.lit(False))
        rows = rows.with_columns(verdict=verdict)

        rewriting = rows.get_column("verdict") == "rewrite"
        if not rewriting.all():
            ids = rows.filter(rewriting).get_column("row_id").implode()
            hits = hits.filter(pl.col("row_id").is_in(ids))
        pairs = self._rewrite(messages, hits)
        problems = pairs.group_by("row_id").agg(
            pl.col("unresolved").drop_nulls().first(),
            pl.col("empty").any(),
            pl.col("changed_answer").drop_nulls().first(),
        )
        rows = rows.join(problems, on="row_id", how="left", maintain_order="left")
        return Findings(ledger=self._ledger(rows), rewrites=self._rewrites(pairs, rows))

    def _rewrite(self, messages: pl.DataFrame, hits: pl.DataFrame) -> pl.DataFrame:
        """For each user turn with options in a row to rewrite: the stripped prompt, the answer
        (the next turn, when it is the assistant's) with letters mapped, and what went wrong."""
        # The answers of these rows only (a hash lookup per message, cheaper than joining all).
        answers = messages.filter(
            (pl.col("role") == "assistant") & pl.col("row_id").is_in(hits["row_id"].implode())
        ).select("row_id", pl.col("turn").alias("answer_turn"), pl.col("content").alias("answer"))
        pairs = (
            hits.select("row_id", "turn", "content", "found", answer_turn=pl.col("turn") + 1)
            .join(answers, on=["row_id", "answer_turn"], how="left", maintain_order="left")
            .with_row_index("order")
        )
        needs_letters = pl.col("answer").str.contains(LETTER_CANDIDATE).fill_null(False) | pl.col(
            "content"
        ).str.contains(PROMPT_LETTER_REF)
        pairs = pairs.with_columns(needs=needs_letters)
        # The Python step: only the pairs that refer to an option by letter.
        lettered = pairs.filter(pl.col("needs"))
        resolved = [
            resolve(p, a, b)
            for p, a, b in zip(
                lettered["content"], lettered["answer"], lettered["found"].to_list(), strict=True
            )
        ]
        lettered = lettered.with_columns(
            pl.Series("prompt", [r.prompt for r in resolved], dtype=pl.String),
            pl.Series("new_answer", [r.answer for r in resolved], dtype=pl.String),
            pl.Series("unresolved", [r.unresolved for r in resolved], dtype=pl.String),
        )
        plain = pairs.filter(~pl.col("needs")).with_columns(
            prompt=pl.col("content"),
            new_answer=pl.col("answer"),
            unresolved=pl.lit(None, dtype=pl.String),
        )
        pairs = pl.concat([plain, lettered]).sort("order")
        # One with_columns per step (each step reads the previous one's result).
        stripped = pairs.select("prompt")
        for pattern, repl in STRIP:
            stripped = stripped.with_columns(pl.col("prompt").str.replace_all(pattern, repl))
        return pairs.with_columns(
            new_prompt=stripped.get_column("prompt").str.strip_chars(WHITESPACE)
        ).with_columns(
            empty=pl.col("new_prompt") == "",
            changed_answer=pl.when(pl.col("new_answer") != pl.col("answer")).then(
                pl.format("answer '{}' → '{}'", pl.col("answer"), pl.col("new_answer"))
            ),
        )

    @staticmethod
    def _ledger(rows: pl.DataFrame) -> pl.DataFrame:
        """``options.explicit`` for every row with options, ``options.unresolvable_letter`` for
        the rewrites dropped because the answer's letter names no option."""
        unresolved = pl.col("unresolved").is_not_null()
        emptied = pl.col("empty").fill_null(False)
        failed = (pl.col("verdict") == "rewrite") & (unresolved | emptied)
        block = _quote(pl.col("block").fill_null(""))
        explicit = rows.select(
            "row_id",
            rule=pl.lit("options.explicit"),
            verdict=pl.when(failed).then(pl.lit("drop")).otherwise(pl.col("verdict")),
            reason=pl.when(pl.col("kept"))
            .then(pl.lit(KEPT_REASON))
            .when(emptied & (pl.col("verdict") == "rewrite"))
            .then(pl.format("removing the options left nothing of the prompt: '{}'", block))
            .when(unresolved & (pl.col("verdict") == "rewrite"))
            .then(
                pl.format(
                    "options: '{}'; the answer refers to option {}, which is none of them",
                    block,
                    pl.col("unresolved"),
                )
            )
            .when(pl.col("verdict") == "rewrite")
            .then(
                pl.concat_str(
                    pl.format("removed options: '{}'", block),
                    pl.lit("; ") + _quote(pl.col("changed_answer")),
                    ignore_nulls=True,
                )
            )
            .otherwise(pl.format("explicit options: '{}'", block)),
            score="score",
            order=pl.int_range(pl.len(), dtype=pl.UInt32),
            rank=pl.lit(0, dtype=pl.UInt32),
        )
        letters = rows.filter((pl.col("verdict") == "rewrite") & unresolved).select(
            "row_id",
            rule=pl.lit("options.unresolvable_letter"),
            verdict=pl.lit("drop"),
            reason=pl.format(
                "the answer refers to option {}, but no option has that letter; without the "
                "options the answer means nothing",
                pl.col("unresolved"),
            ),
            score="score",
            order=pl.lit(0, dtype=pl.UInt32),
            rank=pl.lit(1, dtype=pl.UInt32),
        )
        if letters.height:
            order = explicit.select("row_id", "order")
            letters = letters.drop("order").join(order, on="row_id").select(explicit.columns)
        return (
            pl.concat([explicit, letters])
            .sort("order", "rank")
            .select("row_id", "rule", "verdict", "reason", "score")
        )

    @staticmethod
    def _rewrites(pairs: pl.DataFrame, rows: pl.DataFrame) -> pl.DataFrame:
        """New contents for the rows that stay rewrites: prompts without options, and answers
        whose letter became the option's text."""
        ok = rows.filter(
            (pl.col("verdict") == "rewrite")
            & pl.col("unresolved").is_null()
            & ~pl.col("empty").fill_null(False)
        ).select("row_id")
        pairs = pairs.join(ok, on="row_id", how="semi", maintain_order="left")
        prompts = pairs.filter(pl.col("new_prompt") != pl.col("content")).select(
            "row_id", "turn", content="new_prompt", order="order", part=pl.lit(0)
        )
        answers = pairs.filter(pl.col("new_answer") != pl.col("answer")).select(
            "row_id", turn="answer_turn", content="new_answer", order="order", part=pl.lit(1)
        )
        return (
            pl.concat([prompts, answers])
            .sort("order", "part")
            .select("row_id", pl.col("turn").cast(pl.UInt32), "content")
        )
