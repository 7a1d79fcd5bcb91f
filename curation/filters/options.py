"""Explicit answer options in prompts (FLAN's "OPTIONS:\\n- yes\\n- no"): drop, rewrite, keep some.

Why: people do not hand an assistant a menu of answers. A model trained on many prompts that end
in "OPTIONS:\\n(A) ...\\n(B) ..." learns a format that never occurs in real conversations, and
answers that are only a letter ("(B)") teach nothing once the options are gone. Rewriting removes
the options block so the prompt reads as a natural question, and turns a letter answer into the
option's text so the pair still makes sense. In a preference pair the rejected answer, which the
filters do not judge, gets the same mapping (``map_answers``, called by ``curation.preferences``):
otherwise the pair would prefer "dolphin" over "(D) octopus", a difference of form a reward model
learns instead of the content.

What counts as options (``OPTIONS_PATTERN``, one regex, so the FLAN reader's ``has_options`` flag
and this filter never disagree):

- a header, then a list: FLAN v2's headers ("OPTIONS:", "OPT:", "Options are:", "Choices:",
  "Possible answers:", "Available choices:", "Choose/Select/Pick [your answer] from [the
  following]:", "Select the correct answer:", "one of the following options:") and their
  French, Spanish, German, Italian, Portuguese and Dutch forms ("Choisissez parmi :",
  "Opciones:", "Optionen:", "Antwortmöglichkeiten:", "Opzioni:", "Opções:", "Opties:"), followed
  on the same line or the next by a choice with any FLAN marker: "-", "+", "*", "•", "(A)",
  "(a)", "A)", "a)", "a).", "A.", "[a]", "[a].", "(1)", "1)", "1).", "(1).", "[1]", "[+]", "[-]",
  "(I)", "I.", "i.". Not "1." (a user's own numbered shortlist, "My options:\\n1. stay\\n2. go")
  and not a dash glued to a letter or dash (a CLI help "Options:\\n  -h, --help");
- a strong header ("choose one of the following options:", "Possible answers:", a capitalised
  "Options:" starting a line or sentence) followed by a plain comma list "red, green, blue";
- a FLAN preamble ("Multi-choice problem:", "Select your answer from the options.", "Choose the
  correct answer:") and, anywhere after it, a choice with one of those markers;
- no header: three sequential letters with the same marker ("A. Mars B. Jupiter C. Venus",
  "(a) ... (b) ... (c) ...", on one line or several) at a line start or after punctuation, not
  after a word ("vitamin A. ... vitamin B. ... vitamin C.", "by A. Smith, B. Jones and C. Lee"),
  or two after a question mark ("Is it? (A) yes (B) no"); lines "(A) ..." then "(B) ..." (NIv2);
  two of FLAN's odd markers that prose hardly uses ("1). yes 2). no", "[a]. x [b]. y").

What does not: "options"/"choose" in prose ("You have several options: you could walk or take the
bus.": no marker, and the comma list needs a strong header), CLI help, a numbered "1." list, and
lettered sub-questions of homework. Those ("(a) Prove that ... (b) Show that ...") are told apart
from choices by their first item: a header-less list whose "(a)" item starts with an imperative
("prove", "show", "find", "compute", "explain", ...) is a list of tasks, and an item with a
question mark in it ("(a) What is x?") is a question, not an answer. (The "does not start with
one of these words" test is written out as a trie, since neither engine may look ahead.) A
homework list behind an options header still fires: the header wins. Known misses and false
hits, accepted for recall: a lettered outline ("A. Introduction\nB. Methods\nC. Results") fires;
choices that start with one of those verbs ("A. Explain it B. ...") do not without a header; a
user's shortlist numbered "1)" behind "My options:" fires like FLAN's "Options:\n1) ...".

Detection is one vectorised ``str.contains`` over the user messages. The rewrite strips blocks with
``str.replace_all``; only pairs whose answer (or a few-shot example in the prompt) refers to an
option by letter go through a small Python step that maps the letter to its option. The patterns
in ``RULES`` and ``STRIP`` mean the same in Rust's regex crate (polars) and Python's ``re``: no
look-around or backreferences, no ``\\b``/``\\w``/``\\s``, no ``$`` outside multi-line mode.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from hashlib import blake2b
from typing import ClassVar, NamedTuple

import polars as pl

from curation.filters.base import Batch, Findings, Policy


def _alternation(words: Iterable[str]) -> str:
    """An alternation of ``words`` written as their trie ("options(?: are)?|choices..."): the
    same language, and where one word is the start of another the longer one is tried first, as
    in a longest-first list. Python's ``re`` tries an alternation's branches one by one at every
    position; factored like this it rejects most of them on their first character."""
    trie: dict = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict) -> str:
        branches = [
            ("\\" + ch if ch in ".^$*+?()[]{}|\\" else ch) + emit(child)
            for ch, child in sorted(node.items())
            if ch
        ]
        if not branches:
            return ""
        if len(branches) == 1 and "" not in node:
            return branches[0]
        return "(?:" + "|".join(branches) + ")" + ("?" if "" in node else "")

    return "(?:" + emit(trie) + ")"


def _casings(*phrases: str) -> str:
    """An alternation of each phrase in lower case, Capitalised, Title Case and UPPER CASE. Not
    (?i): with it the header words have too many spellings for the regex engine's literal
    prefilter, which is what makes the scan over a million prompts fast."""
    return _alternation({v for p in phrases for v in (p, p.capitalize(), p.title(), p.upper())})


def _not_starting_with(words: Iterable[str]) -> str:
    """A regex for the first characters of a text that does not start with any of ``words`` as a
    whole word ("prove x" no; "proven x", "Mars" yes). Look-around free, so it is the trie of the
    words with, at each node, "any other character" as the way out; a complete word may only go
    on with a letter. Matches at least one character, never a line break, never a blank first."""
    trie: dict = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def escape_class(chars: Iterable[str]) -> str:
        return "".join("\\" + c if c in "\\]^-[" else c for c in sorted(chars))

    letters = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")

    def build(node: dict, root: bool) -> str:
        children = sorted(k for k in node if k)
        if "" in node:  # a whole word: only a letter that makes it a longer word lets it out
            way_out = f"[{escape_class(letters - set(children))}]"
        else:
            blanks = " \t\r\n" if root else "\r\n"
            way_out = f"[^{escape_class(set(children) | set(blanks))}]"
        branches = [way_out] + [re.escape(c) + build(node[c], False) for c in children]
        return "(?:" + "|".join(branches) + ")"

    return build(trie, True)


# ---- headers -----------------------------------------------------------------------------------

_HEADER_WORDS = (
    "options",
    "options are",
    "choices",
    "choices are",
    "answer choices",
    "answer options",
    "possible answers",
    "possible choices",
    "possible options",
    "available options",
    "available choices",
    "available answers",
    "following options",
    "following choices",
    "following answers",
    # French, Spanish, Portuguese, Italian, German, Dutch
    "choisissez parmi",
    "choisis parmi",
    "choisir parmi",
    "choisissez entre",
    "réponses possibles",
    "choix possibles",
    "choix",
    "opciones",
    "elige entre",
    "elija entre",
    "escoge entre",
    "escoja entre",
    "seleccione entre",
    "respuestas posibles",
    "opções",
    "escolha entre",
    "respostas possíveis",
    "opzioni",
    "scegli tra",
    "scegli fra",
    "risposte possibili",
    "optionen",
    "antwortoptionen",
    "antwortmöglichkeiten",
    "auswahlmöglichkeiten",
    "wähle aus",
    "wählen sie aus",
    "wähle zwischen",
    "wählen sie zwischen",
    "opties",
    "kies uit",
    "kies tussen",
    "mogelijke antwoorden",
)
_VERB = _casings("choose", "select", "pick")
# After the verb, case-insensitive (the verb's literal spellings keep the prefilter): "from",
# "your answer from", "the answer from the following", "one of the following options", "the
# correct answer", "an option from the choices below"...
_DET = r"(?:the[ \t]+following|the|these|those|the[ \t]+list)"
_NOUNS = r"(?:options|choices|answers|answer[ \t]+choices|answer[ \t]+options|alternatives)"
_PREP = (
    rf"(?:from|among(?:st)?|between|of|out[ \t]+of)"
    rf"(?:[ \t]+{_DET}(?:[ \t]+{_NOUNS})?)?(?:[ \t]+(?:below|given|provided|above|listed))?"
)
_OBJ = (
    r"(?:(?:(?:your|the|an?|one)[ \t]+)?(?:(?:correct|best|right|most[ \t]+appropriate|"
    r"appropriate|most[ \t]+likely|final)[ \t]+)?(?:answer|option|choice)s?|one)"
)
_VERB_TAIL = rf"(?i:[ \t]+(?:{_OBJ}(?:[ \t]+{_PREP})?|{_PREP}))"
# The verb phrases that name where to choose from ("choose one of the following options",
# "pick from"), not "select the correct answer", which may be followed by the question.
_VERB_FROM = rf"{_VERB}(?i:[ \t]+(?:{_OBJ}[ \t]+)?{_PREP})"
_HEADER = rf"(?:{_casings(*_HEADER_WORDS)}|OPT|Opt|{_VERB}{_VERB_TAIL})"
# After the header: a colon or full stop (and maybe line breaks), or at least one line break.
_AFTER_HEADER = r"[ \t\u00a0\u202f]*(?:[:.][ \t]*(?:\r?\n[ \t]*)*|(?:\r?\n[ \t]*)+)"

# ---- choice markers ----------------------------------------------------------------------------

_LABEL = r"[a-hA-H1-9]"
_ROMAN = r"(?:viii|vii|iii|vi|iv|ix|ii|i|v|VIII|VII|III|VI|IV|IX|II|I|V)"
# A bullet, but not one glued to a flag or code ("- -h", "- `--help`"): a CLI's options.
_BULLET = r"[-*•+][ \t]+[^-` \t\r\n]"
# Markers that need no bullet: "(a)", "a)", "1).", "(1).", "(I)", "[a]", "[a].", "[1]", "[+]",
# "[-]", "a.", "A.", "I.", "iv.". Never "1." (see the module docstring).
_MARK = (
    rf"(?:\[[-+*]\]|\(?(?:{_LABEL}|{_ROMAN})\)\.?|\[(?:{_LABEL}|{_ROMAN})\]\.?"
    rf"|(?:[a-hA-H]|{_ROMAN})\.)[ \t]"
)
_ITEM = rf"(?:{_BULLET}|{_MARK})"

# ---- header-less lists ---------------------------------------------------------------------

# Words that start homework sub-questions or tasks rather than choices ("(a) Prove that ...").
# Only words that rarely open a choice: not "use", "give", "draw", "state", "list"... Question
# words need no entry: an item with a question mark in it is no choice anyway.
_TASK_WORDS = [
    w
    for base in (
        "prove",
        "show",
        "find",
        "compute",
        "calculate",
        "determine",
        "derive",
        "evaluate",
        "solve",
        "sketch",
        "verify",
        "simplify",
        "justify",
        "explain",
        "describe",
        "discuss",
        "define",
        "estimate",
        "compare",
        "identify",
        "differentiate",
        "integrate",
        "construct",
        "classify",
        "summarise",
        "summarize",
        "analyse",
        "analyze",
        "predict",
        "rewrite",
        "convert",
        "factorise",
        "factorize",
        "consider",
        "let",
        "suppose",
        "assume",
        "write",
    )
    for w in (base, base.capitalize())
]
_NOT_TASK = _not_starting_with(_TASK_WORDS)
# The text of a choice in a header-less list: no question mark, no sentence end ("Plan A. We go.
# Plan B. We stay." is prose), one line; maybe a comma, full stop or semicolon after it.
_TEXT = r"(?:[^\r\n?.]|\.[^ \t\r\n])"
_GAP = r"[.,;]?(?:[ \t]+|[ \t]*\r?\n[ \t]*)"
_STYLES = [("(", ")"), ("", ")"), ("", "."), ("[", "]")]


def _marker(open_: str, label: str, close: str) -> str:
    return re.escape(open_) + label + re.escape(close)


_FIRST = "(?:" + "|".join(_marker(o, "[Aa]", c) for o, c in _STYLES) + ")"
# Three in a row, "A. x B. y C. z": the first in any style, the next two in one style and case.
_THIRD = "|".join(
    rf"{_marker(o, b, c)}[ \t]+{_TEXT}+?{_GAP}{_marker(o, cc, c)}[ \t]"
    for o, c in _STYLES
    for b, cc in (("B", "C"), ("b", "c"))
)
_SECOND = "(?:" + "|".join(_marker(o, "[Bb]", c) for o, c in _STYLES) + r")[ \t]"
# Not after a word ("vitamin A. ... vitamin B. ... vitamin C.", "by A. Smith, B. Jones and C.
# Lee"): at the start of a line or after punctuation ("largest? A. Mars", "___: a) blue").
_LEAD = r"(?:^[ \t]*|[^A-Za-z0-9 \t(\[][ \t]*)"
LETTERED = (
    rf"{_LEAD}{_FIRST}[ \t]+{_NOT_TASK}{_TEXT}*?{_GAP}(?:{_THIRD})"
    rf"|\?[ \t]*(?:\r?\n[ \t]*)*{_FIRST}[ \t]+{_NOT_TASK}{_TEXT}*?{_GAP}{_SECOND}"
)
# NIv2 style: a line starting "(A)" and a later line starting "(B)".
_NIV2 = rf"(?m:^)[ \t]*\([Aa]\)[ \t]+{_NOT_TASK}.*\n(?:.*\n)*?[ \t]*\([Bb]\)[ \t]"
# Markers prose never uses, two in a row: "1). yes 2). no", "(a). x (b). y", "[a]. x [b]. y".
_ODD_PAIRS = [
    (_marker(o, a, c), _marker(o, b, c))
    for o, c in (("", ")."), ("(", ")."), ("[", "]."))
    for a, b in (("a", "b"), ("A", "B"), ("1", "2"))
    if not (o == "[" and a == "1")  # "[1]. ... [2]." ends sentences with citations
]
ODD = (
    r"(?:^|[ \t\r\n])(?:"
    + "|".join(rf"{a}[ \t]+[^\r\n]+?(?:[ \t]+|[ \t]*\r?\n[ \t]*){b}" for a, b in _ODD_PAIRS)
    + r")[ \t]"
)

# ---- strong headers with a plain comma list, preambles -------------------------------------------

# Strong headers: the verb phrases that say where to choose from, the headers of two words or
# more ("Possible answers", "following options"), and a capitalised one-word header that starts a
# line or a sentence ("Is it? Options: yes, no").
_STRONG_WORDS = rf"(?:{_VERB_FROM}|{_casings(*(w for w in _HEADER_WORDS if ' ' in w))})"
_CAP_LEAD = r"(?:(?m:^)[ \t]*|[?.!][ \t]+)"
_CAP_WORDS = _alternation(
    ("Options", "OPTIONS", "Choices", "CHOICES", "Opciones", "Optionen", "Opzioni", "Opções")
    + ("Opties", "Choix", "OPT")
)
_CHOICE = r"[^ \t\r\n,.?!:;()\[\]][^\r\n,.?!:;()\[\]]{0,40}"
_AND = r"(?:or|and|ou|et|o|y|e|oder|und|of|en)"
_COMMA_TAIL = rf"[ \t\u00a0\u202f]*:[ \t]*{_CHOICE},[ \t]*{_CHOICE}"
_COMMA_BLOCK_TAIL = (
    rf"[ \t\u00a0\u202f]*:[ \t]*{_CHOICE}(?:,[ \t]*{_CHOICE})+"
    rf"(?:,?[ \t]+{_AND}[ \t]+{_CHOICE})?\.?"
)
# Preambles of FLAN's multiple-choice templates; the choices come later in the prompt.
_MULTI_CHOICE = (
    rf"(?:{_casings('multi-choice problem', 'multi-choice question', 'multi-select problem')}"
    rf"[ \t]*[:.]|{_casings('multiple choice question', 'multiple-choice question')}[ \t]*:)"
)
_PREAMBLE = (
    rf"(?:{_MULTI_CHOICE}"
    rf"|{_VERB}(?i:[ \t]+(?:(?:your|an?|the(?:[ \t]+(?:correct|best|right|most[ \t]+likely))?)"
    r"[ \t]+answer(?:[ \t]+(?:from|among)(?:[ \t]+the[ \t]+(?:options|choices|following))?)?"
    r"|from[ \t]+the[ \t]+(?:options|choices)))[ \t]*[:.?])"
)
_LATER_ITEM = rf"(?:[ \t\r\n]{_MARK}|\n[ \t]*{_BULLET})"

# Plain numbers "1. yes 2. no" (or "1: yes 2: no") are a user's own list as often as choices, so
# they count only on the header's line ("Options: 1. yes 2. no"), one per line after a header
# that only FLAN writes ("OPT:", "OPTIONS:", "Possible answers:", "Choose from:"; not "options:"
# or "My options are:"), or anywhere after a "Multi-choice problem:" preamble.
_NUMBERED_INLINE = r"1[.:][ \t][^\r\n]*?[ \t]2[.:][ \t]"
_NUM_HEADER = (
    rf"(?:OPT|OPTIONS|{_VERB_FROM}"
    rf"|{_casings(*(w for w in _HEADER_WORDS if ' ' in w and not w.endswith(' are')))})"
)
_NUMBERED = (
    rf"{_HEADER}[ \t\u00a0\u202f]*[:.][ \t]*{_NUMBERED_INLINE}"
    rf"|{_NUM_HEADER}{_AFTER_HEADER}1\.[ \t]"
    rf"|{_MULTI_CHOICE}(?s:.)*?[ \t\r\n][1-9][.:][ \t]"
)

# ---- the rule ------------------------------------------------------------------------------------

# A prompt "carries options" when any of the forms above is in it. The header must start a word
# ("adoptions:" is no header); "What are my options?" and "two choices - stay or go" have no list
# after a colon or line break.
# The forms that start with a header share one guard, so Python's ``re`` checks it once.
OPTIONS_PATTERN = (
    rf"(?:^|[^A-Za-z])(?:{_HEADER}{_AFTER_HEADER}{_ITEM}|{_STRONG_WORDS}{_COMMA_TAIL}"
    rf"|{_PREAMBLE}(?s:.)*?{_LATER_ITEM}|{_NUMBERED})"
    rf"|{_CAP_LEAD}{_CAP_WORDS}{_COMMA_TAIL}|{LETTERED}|{_NIV2}|{ODD}"
)

# An answer that names an option by label: "B", "(B)", "b)", "[b]", "B.", "2", "1).", "(II)",
# "(A) higher", "B. Jupiter", or a chain of thought ending "So the answer is (C)." Only a superset
# to pick the pairs that go to the Python step; ``resolve`` decides.
_WS = "[ \t\r\n\f\v\u00a0\u200b\u3000]"  # the characters of WHITESPACE, as a class
LETTER_CANDIDATE = (
    rf"^{_WS}*[(\[]?(?:[A-Ha-h1-9]|{_ROMAN})[)\]]?\.?{_WS}*$"
    rf"|^{_WS}*[(\[]?(?:[A-Ha-h1-9]|{_ROMAN})[)\].]"
    r"|(?:[Aa]nswer is|ANSWER IS):?[ \t]*\([A-Ha-h]\)"
)
# A few-shot example inside a prompt that answers by letter ("... So the answer is (C).").
PROMPT_LETTER_REF = r"(?:[Aa]nswer is|ANSWER IS):?[ \t]*\([A-Ha-h]\)"

RULES: list[tuple[str, str]] = [("options.explicit", OPTIONS_PATTERN)]

# One options block: the header and its choices, one per line or several on the header's line.
_BLOCK = rf"{_HEADER}{_AFTER_HEADER}{_ITEM}[^\n]*(?:\r?\n[ \t]*{_ITEM}[^\n]*)*"
# NIv2 style: consecutive lines "(A) ...", "(B) ..." with no header.
_LETTER_LINES = r"(?m:^)[ \t]*\([A-Ha-h]\)[ \t][^\n]*(?:\r?\n[ \t]*\([A-Ha-h]\)[ \t][^\n]*)+"
# A header-less run of choices in one style, "A. x B. y C. z" or one per line; the last one
# runs to the end of its line.
_RUNS = "|".join(
    rf"{_marker(o, first, c)}[ \t](?:[^\r\n]*?{_GAP}{_marker(o, rest, c)}[ \t])+[^\r\n]*"
    for o, c in [*_STYLES, ("", ")."), ("(", ")."), ("[", "].")]
    for first, rest in (("A", "[B-H]"), ("a", "[b-h]"), ("1", "[2-9]"))
    if not (c == "." and first == "1") and not (o == "[" and c == "]" and first == "1")
)
_ODD_RUNS = r"(?m:^)[ \t]*\[[-+]\][ \t][^\n]*(?:\r?\n[ \t]*\[[-+]\][ \t][^\n]*)+"
# Plain numbers: on one line, or one per line under a FLAN-only header.
_NUM_RUN = r"1[.:][ \t](?:[^\r\n]*?[ \t]+[2-9][.:][ \t])+[^\r\n]*"
_NUM_BLOCK = (
    rf"{_HEADER}[ \t\u00a0\u202f]*[:.][ \t]*{_NUM_RUN}"
    rf"|{_NUM_HEADER}{_AFTER_HEADER}1\.[ \t][^\n]*(?:\r?\n[ \t]*[2-9]\.[ \t][^\n]*)*"
)
# Every block of a prompt, each with the character before it (the guard that keeps "adoptions:"
# or "DNA. B" out), as polars' ``extract_all`` and Python's ``findall`` both list them: for the
# score (how many), the reason (the first) and the letter step (which options come where).
BLOCKS = (
    rf"(?:^|[^A-Za-z])(?:{_BLOCK}|{_NUM_BLOCK}|{_STRONG_WORDS}{_COMMA_BLOCK_TAIL})"
    rf"|{_CAP_LEAD}{_CAP_WORDS}{_COMMA_BLOCK_TAIL}|{_LETTER_LINES}"
    rf"|(?:^|[^A-Za-z0-9])(?:{_RUNS}|{_NUM_RUN})|{_ODD_RUNS}"
)

# (pattern, replacement) applied in order to a prompt with options: every block with the line
# break after it (lone "(A) ..." lines too), the preamble's words, then runs of blank lines. No
# guard before the header here, unlike detection: it runs only on prompts that have options, and
# without a leading class the regex engine finds the header words by literal search (twice as
# fast). The price: in a prompt that has options, "Pet adoptions:\n- cats" would go too.
STRIP: list[tuple[str, str]] = [
    (
        rf"[ \t]*(?:{_BLOCK}|{_NUM_BLOCK})(?:\r?\n)?"
        rf"|[ \t]*(?:{_STRONG_WORDS}|{_CAP_WORDS}){_COMMA_BLOCK_TAIL}[ \t]*(?:\r?\n)?"
        r"|(?m:^)[ \t]*\([A-Ha-h]\)[ \t][^\n]*(?:\r?\n)?"
        rf"|(?:(?m:^)[ \t]*|[ \t]+)(?:{_RUNS}|{_NUM_RUN})(?:\r?\n)?|{_ODD_RUNS}(?:\r?\n)?",
        "",
    ),
    (rf"{_PREAMBLE}[ \t]*", ""),
    (r"\n[ \t]*\n(?:[ \t]*\n)+", "\n\n"),
]
WHITESPACE = " \t\r\n\f\v\u00a0\u200b\u3000"
KEPT_REASON = "kept as part of keep_fraction"
REASON_CHARS = 300

# Python's compiled patterns are built on first use, not at import: every process that loads the
# Dagster definitions (each launched run, each code-location reload, each test process) imports
# this module, and compiling them there cost ~0.12 s, while only the row-by-row helpers below need
# them (polars takes the pattern strings). ``OPTIONS_RE`` stays importable through ``__getattr__``.


@cache
def _options_re() -> re.Pattern[str]:
    return re.compile(OPTIONS_PATTERN)


@cache
def _strip_res() -> tuple[tuple[re.Pattern[str], str], ...]:
    return tuple((re.compile(p), r) for p, r in STRIP)


@cache
def _blocks_re() -> re.Pattern[str]:
    return re.compile(BLOCKS)


def __getattr__(name: str) -> re.Pattern[str]:
    if name == "OPTIONS_RE":
        return _options_re()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Python-only helpers for the letter step (polars never runs these).
_PY_LABEL = rf"(?:{_ROMAN}|[A-Ha-h1-9])"


class _LetterPatterns(NamedTuple):
    styles: tuple[re.Pattern[str], ...]  # each marker style, label as group 1, most specific first
    bare_label: re.Pattern[str]
    label_text: re.Pattern[str]
    open_label_text: re.Pattern[str]
    answer_is: re.Pattern[str]
    comma_split: re.Pattern[str]


@cache
def _letter() -> _LetterPatterns:
    return _LetterPatterns(
        styles=tuple(
            re.compile(p)
            for p in (
                rf"\(({_PY_LABEL})\)\.",
                rf"\(({_PY_LABEL})\)",
                rf"\[({_PY_LABEL})\]\.",
                rf"\[({_PY_LABEL})\]",
                r"\[([-+*])\]",
                rf"({_PY_LABEL})\)\.",
                rf"({_PY_LABEL})\)",
                rf"({_ROMAN}|[A-Ha-h])\.",
                r"([1-9])[.:]",
                r"([-*•+])",
            )
        ),
        bare_label=re.compile(rf"[(\[]?({_PY_LABEL})(?:[)\]]\.?|\.)?"),
        label_text=re.compile(rf"[(\[]({_PY_LABEL})[)\]]\.?[ \t]+(.+)", re.S),
        open_label_text=re.compile(rf"({_PY_LABEL})(?:\)\.?|\.)[ \t]+(.+)", re.S),
        answer_is=re.compile(r"((?:[Aa]nswer is|ANSWER IS):?[ \t]*)\(([A-Ha-h])\)"),
        comma_split=re.compile(r",?[ \t]+(?:or|and|ou|et|o|y|e|oder|und|of|en)[ \t]+|,"),
    )


def has_options(prompt: str) -> bool:
    """The same test as the vectorised filter, for one prompt."""
    return _options_re().search(prompt) is not None


def _label(raw: str | None) -> str | None:
    """The label of a marker: "a" → "A", "ii" → "II", "3" → "3"; bullets have none."""
    if raw is None or raw in "-+*•":
        return None
    return raw.upper()


@lru_cache(maxsize=1 << 16)
def options_in(block: str) -> tuple[tuple[str | None, str], ...]:
    """The choices of one options block as (label or None, text): "(A) red" → ("A", "red"),
    "2). dog" → ("2", "dog"), "(II) no" → ("II", "no"), "- yes" → (None, "yes"), "red, green"
    → (None, "red"), (None, "green"); one choice per line or several on one. The first marker
    sets the style; only markers of that style start a choice. Cached: templated data repeats
    a few blocks ("- yes\n- no") over many rows."""
    text = block.strip(WHITESPACE)

    def style_at(s: str) -> re.Pattern[str] | None:
        for style in _letter().styles:
            m = style.match(s)
            if m and m.end() < len(s) and s[m.end()] in " \t":
                return style
        return None

    style = style_at(text)
    if style is None and text[:1] and not text[:1].isalnum() and style_at(text[1:]):
        text = text[1:]  # the guard before a header-less run: "?", "(", ...
        style = style_at(text)
    if style is None:
        # The header ("OPTIONS:", "Options: (a) red (b) blue", "Pick from:\n a). x"): keep what
        # follows its colon or full stop, or its line.
        head, _, tail = text.partition("\n")
        cut = min((i for i in (head.find(":"), head.find(".")) if i >= 0), default=len(head))
        text = (head[cut + 1 :] + "\n" + tail).strip(WHITESPACE)
        style = style_at(text)
    if style is None:  # a plain comma list after a strong header
        parts = _letter().comma_split.split(text.split("\n", 1)[0].rstrip("."))
        return tuple((None, p.strip(WHITESPACE)) for p in parts if p.strip(WHITESPACE))
    starts = re.compile(rf"(?:^|(?<=\s)){style.pattern}(?=[ \t])")
    marks = list(starts.finditer(text))
    ends = [m.start() for m in marks[1:]] + [len(text)]
    return tuple(
        (_label(m.group(1)), text[m.end() : end].strip(WHITESPACE).rstrip(";,").rstrip(WHITESPACE))
        for m, end in zip(marks, ends, strict=True)
    )


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
        blocks = _blocks_re().findall(prompt)
    if not blocks:
        return Resolution(prompt, answer, None)
    spans, at = [], 0
    for block in blocks:
        begin = prompt.find(block, at)
        spans.append((begin, begin + len(block)))
        at = begin + len(block)
    parsed = [options_in(block) for block in blocks]
    letter = _letter()

    # Worked examples: a reference after block i and before block i + 1 belongs to block i.
    pieces, start = [], 0
    for i, (_, block_end) in enumerate(spans):
        end = spans[i + 1][0] if i + 1 < len(spans) else len(prompt)
        segment = prompt[block_end:end]

        def fill(ref: re.Match[str], choices=parsed[i]) -> str:
            text = _lookup(choices, ref.group(2).upper())
            return ref.group(0) if text is None else ref.group(1) + text

        pieces.append(prompt[start:block_end] + letter.answer_is.sub(fill, segment))
        start = end
    new_prompt = "".join(pieces) + prompt[start:]
    if answer is None:
        return Resolution(new_prompt, None, None)

    choices = parsed[-1]
    stripped = answer.strip(WHITESPACE)
    texts = {text.casefold().rstrip(".") for _, text in choices}
    if stripped.casefold().rstrip(".") in texts:
        return Resolution(new_prompt, answer, None)
    bare = letter.bare_label.fullmatch(stripped)
    if bare:
        label = bare.group(1).upper()
        text = _lookup(choices, label)
        if text is not None:
            return Resolution(new_prompt, text, None)
        # A letter that names no option leaves an answer that means nothing; a number may be
        # the answer itself ("How many legs? ... 8"), and a Roman "I" or "V" a word, so they stay.
        return Resolution(new_prompt, answer, label if label in "ABCDEFGH" else None)
    with_text = letter.label_text.fullmatch(stripped)
    if with_text:  # "(A) higher", "[b]. blue"
        text = _lookup(choices, with_text.group(1).upper())
        said = with_text.group(2).strip(WHITESPACE)
        # "(B) dolphin. Dolphins breathe air ...": only the label goes; cutting the answer to
        # the option's text threw its explanation away
        if text is not None and said.casefold().startswith(text.casefold().rstrip(".")):
            return Resolution(new_prompt, said, None)
        return Resolution(new_prompt, text or said, None)
    with_text = letter.open_label_text.fullmatch(stripped)
    if with_text:  # "B. Jupiter", "b) blue": only when the text is that option's
        text = _lookup(choices, with_text.group(1).upper())
        said = with_text.group(2).strip(WHITESPACE).casefold().rstrip(".")
        if text is not None and text.casefold().rstrip(".") == said:
            return Resolution(new_prompt, text, None)
    unresolved: list[str] = []

    def fill_answer(ref: re.Match[str]) -> str:
        text = _lookup(choices, ref.group(2).upper())
        if text is None:
            unresolved.append(ref.group(2).upper())
            return ref.group(0)
        return ref.group(1) + text

    new_answer = letter.answer_is.sub(fill_answer, answer)
    return Resolution(new_prompt, new_answer, unresolved[0] if unresolved else None)


def map_answers(prompts: pl.Series, answers: pl.Series) -> pl.DataFrame:
    """Each answer as the rewrite leaves it when it answers the user turn in ``prompts`` (as
    written, options still in): columns ``answer`` (a letter turned into its option's text, or as
    given) and ``unresolved`` (the letter that names no option, else null). The filter's own
    letter step, for an answer the filter did not see: a preference pair's rejected answer,
    which must end in the same form as the chosen one once the options are gone. Only answers
    that look like a letter reference go to Python, with the blocks polars found."""
    frame = pl.DataFrame({"prompt": prompts, "answer": answers}, schema=_ANSWERS)
    frame = frame.with_row_index("order").with_columns(
        needs=pl.col("answer").str.contains(LETTER_CANDIDATE).fill_null(False)
    )
    lettered = frame.filter("needs").with_columns(found=pl.col("prompt").str.extract_all(BLOCKS))
    resolved = [
        resolve(p, a, b)
        for p, a, b in zip(
            lettered["prompt"], lettered["answer"], lettered["found"].to_list(), strict=True
        )
    ]
    lettered = lettered.select(
        "order",
        pl.Series("answer", [r.answer for r in resolved], dtype=pl.String),
        pl.Series("unresolved", [r.unresolved for r in resolved], dtype=pl.String),
    )
    plain = frame.filter(~pl.col("needs")).select(
        "order", "answer", unresolved=pl.lit(None, dtype=pl.String)
    )
    return pl.concat([plain, lettered]).sort("order").select("answer", "unresolved")


_ANSWERS = pl.Schema({"prompt": pl.String, "answer": pl.String})


def strip_options(prompt: str) -> str:
    """The prompt without its options blocks, as the filter's rewrite does it."""
    for pattern, repl in _strip_res():
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
