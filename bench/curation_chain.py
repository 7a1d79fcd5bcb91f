"""The whole curation chain on N generated conversations, beside a pandas row-by-row baseline.

    .venv/bin/python bench/curation_chain.py --rows 1000000

What runs, each in a fresh child process (so its peak RSS, VmHWM, is its own):

- ``postforge comparable``: ``curate`` with the filters the baseline also implements, at the
  filters' defaults: quality (``empty_answer`` and ``non_printing`` only), PII (without the
  OpenAssistant label rule), references, options, safety (the pattern rules only), length (a
  ``TokenCounter`` over a BPE tokenizer trained once on data/samples/pretrain.jsonl) and exact
  duplicates (near duplicates off). This is the run the speed ratio is taken from.
- ``postforge full``: ``curate(conversations, build_filters({}, TokenCounter(tokenizer)))``,
  the default chain end to end (plus repetition, language mismatch, labels and near duplicates).
- ``postforge comparable`` again on the baseline's slice, for a ratio at equal input size.
- ``pandas``: ``df.apply(RowByRow(tokenizer), axis=1)`` over the first ``--slice`` rows: the
  same rule patterns through Python's ``re`` and the modules' own row-by-row helpers
  (``references.detect``/``strip``/``left_nothing``, and ``requested`` on the user and system
  turns, whose answer is kept; ``pii.redact``; ``options.resolve``/``strip_options``;
  ``safety.scan`` given the whole conversation, where the paired rules find their subject; they
  run every rule on every text, without the filters' prefilters), ``curate``'s role-order check,
  ``tokenizer.encode`` per text, a set for exact duplicates. One core, as row-by-row pandas
  is; polars uses all of them. Row-by-row cost is linear, so its rows/s on the slice
  extrapolates to N rows.

The verdicts of the baseline, (row_id, rule, verdict), are compared with the comparable run's
ledger on the slice's rows. That is a fair comparison even though postforge saw all N rows:
every covered rule judges a row alone, except exact duplicates, whose "first occurrence" only
depends on earlier rows, all of which are in the slice.

The generated conversations (cached in bench/out/curation_chain/) are the embedded sample texts
(data/samples, bench/curation_quality/labelled.jsonl) with one or two sentences of the pretraining
sample put before each prompt and one to three after most answers, so rows are not all copies:
mostly clean pairs, a few percent with citations, PII, answer options, unsafe text, empty answers
and control characters, a few very long ones, some multi-turn and system prompts, and ~5% exact
and ~3% near copies of earlier rows.

One JSON line per run is appended to bench/results/curation_chain.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import random
import re
import subprocess
import sys
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import pandas as pd
    import polars as pl
    from tokenizers import Tokenizer

    from curation.filters.base import Batch, Filter, Findings

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out" / "curation_chain"
RESULTS = HERE / "results" / "curation_chain.jsonl"
SAMPLES = ROOT / "data" / "samples"
LABELLED = HERE / "curation_quality" / "labelled.jsonl"
TOKENIZER_DIR = OUT / "tokenizer"

# Shares of the original (non-copy) rows by kind. "clean" and "flan" draw on every sample file;
# the four labelled kinds on the hand-labelled rows of that label; the rest are built below.
KIND_SHARES: dict[str, float] = {
    "clean": 0.8143,
    "flan": 0.10,
    "reference": 0.02,
    "pii": 0.02,
    "options": 0.015,
    "safety": 0.015,
    "empty": 0.005,
    "non_printing": 0.01,
    "long_answer": 0.0005,
    "long_prompt": 0.0002,
}
EXACT_SHARE = 0.05
NEAR_SHARE = 0.03
SYSTEM_SHARE = 0.05
MULTI_TURN_SHARE = 0.10
SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a concise assistant. Answer in a few sentences.",
    "You are a friendly tutor who explains things step by step.",
    "Answer as accurately as you can; say so when you are not sure.",
]
FOLLOW_UPS = [
    "Can you say more about that?",
    "Thanks. What else should I know?",
    "Could you give me an example?",
    "Why is that?",
    "And what if it does not work?",
]
# Blank answers the quality filter must catch: nothing, whitespace, invisible characters.
EMPTY_ANSWERS = ["", " ", "\n", "\n\n  ", "\u200b", "\t\u00a0"]
# Junk inserted into answers: C0/C1 controls (cp1252 mojibake, ANSI escapes), replacement
# characters, and a lone BOM or zero-width space, which is below the junk share and must not fire.
JUNK = ["\x00", "\x07", "\x1b[31m", "\x08", "\ufffd\ufffd", "\x9d", "\ufeff", "\u200b"]
NEAR_WORDS = ["really", "also", "then", "now", "just", "quite", "simply", "still"]
LONG_ANSWER_CHARS = 30_000  # > 4096 tokens of the 4096-word BPE: fires length.too_long
LONG_PROMPT_CHARS = 60_000  # > 8192 tokens: fires length.prompt_too_long


# ---- data ----------------------------------------------------------------------------------


def _jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _hh_pair(text: str) -> tuple[str, str] | None:
    """The first Human/Assistant exchange of an hh-rlhf transcript."""
    parts = re.split(r"\n\nHuman: |\n\nAssistant: ", text)
    return (parts[1], parts[2]) if len(parts) >= 3 else None


def text_pools() -> list[dict[str, str]]:
    """(pool, source, prompt, answer, lang) from every embedded sample with a prompt/answer."""
    rows: list[dict[str, str]] = []

    def add(pool: str, source: str, prompt: str, answer: str, lang: str = "en") -> None:
        rows.append(
            {"pool": pool, "source": source, "prompt": prompt, "answer": answer, "lang": lang}
        )

    for row in _jsonl(LABELLED):
        add(row["label"], "labelled", row["prompt"], row["answer"], row.get("lang", "en"))
    for name in ("flan.jsonl", "synthetic_flan.jsonl"):
        for row in _jsonl(SAMPLES / name):
            add("flan", "flan", row["inputs"], row["targets"])
    for row in _jsonl(SAMPLES / "hh_rlhf.jsonl"):
        pair = _hh_pair(row["chosen"])
        if pair:
            add("clean", "hh_rlhf", *pair)
    for row in _jsonl(SAMPLES / "oasst_trees.jsonl"):
        prompt = row["prompt"]
        if prompt.get("replies"):
            add("clean", "oasst", prompt["text"], prompt["replies"][0]["text"], prompt["lang"])
    for name in ("ultrafeedback.jsonl", "synthetic_ultrafeedback.jsonl"):
        for row in _jsonl(SAMPLES / name):
            for completion in row["completions"][:2]:
                add("clean", "ultrafeedback", row["instruction"], completion["response"])
    for row in _jsonl(SAMPLES / "synthetic_chat.jsonl"):
        turns = row["messages"]
        add("clean", "synthetic", turns[0]["content"], turns[1]["content"])
    return rows


def pretrain_texts() -> list[str]:
    return [row["text"] for row in _jsonl(SAMPLES / "pretrain.jsonl")]


def sentences(texts: list[str]) -> list[str]:
    """Distinct sentences of the pretraining sample: the material that makes rows differ."""
    found = {
        s.strip()
        for text in texts
        for s in re.split(r"(?<=[.!?])\s+", text)
        if 20 < len(s.strip()) < 200
    }
    return sorted(found)


def generate(rows: int, seed: int = 0) -> pl.DataFrame:
    """``rows`` conversations in the canonical schema (see the module docstring)."""
    import numpy as np
    import polars as pl

    from curation.schema import CONVERSATIONS, PROVENANCE

    rng = np.random.default_rng(seed)
    pools = pl.DataFrame(text_pools())
    pretrain = pretrain_texts()
    sents = pl.Series(sentences(pretrain), dtype=pl.String)
    # Long texts: random pretraining documents joined until long enough.
    py_rng = random.Random(seed)

    def long_text(chars: int) -> str:
        parts: list[str] = []
        while sum(map(len, parts)) < chars:
            parts.append(py_rng.choice(pretrain))
        return "\n\n".join(parts)

    long_answers = pl.Series([long_text(LONG_ANSWER_CHARS) for _ in range(16)], dtype=pl.String)
    long_prompts = pl.Series([long_text(LONG_PROMPT_CHARS) for _ in range(8)], dtype=pl.String)

    kinds = list(KIND_SHARES)
    shares = np.array([KIND_SHARES[k] for k in kinds])
    kind = rng.choice(len(kinds), size=rows, p=shares / shares.sum())
    # Which pool each kind draws its base pair from.
    labelled = ("flan", "reference", "pii", "options", "safety")
    pool_of = {k: k if k in labelled else "clean" for k in kinds}
    pools = pools.with_row_index("g")
    index = np.empty(rows, dtype=np.int64)
    for k_id, k in enumerate(kinds):
        members = pools.filter(pl.col("pool") == pool_of[k])["g"].to_numpy()
        where = kind == k_id
        index[where] = members[rng.integers(0, len(members), size=int(where.sum()))]
    base = pools[index]

    def pick(series: pl.Series, size: int) -> pl.Series:
        return series.gather(rng.integers(0, len(series), size=size))

    def maybe(series: pl.Series, share: float) -> pl.Series:
        """``series`` where a coin with ``share`` says so, null elsewhere."""
        coin = pl.Series(rng.random(len(series)) < share)
        return pl.select(pl.when(coin).then(series)).to_series()

    kind_name = pl.Series(kinds, dtype=pl.String).gather(kind)
    frame = base.select("source", "prompt", "answer", "lang").with_columns(
        kind=kind_name,
        pre1=pick(sents, rows),
        pre2=maybe(pick(sents, rows), 0.7),
        pre_sep=pl.Series(np.where(rng.random(rows) < 0.5, " ", "\n\n")),
        post1=pick(sents, rows),
        post2=maybe(pick(sents, rows), 0.6),
        post3=maybe(pick(sents, rows), 0.3),
        post_sep=pl.Series(np.where(rng.random(rows) < 0.5, " ", "\n\n")),
        empty=pick(pl.Series(EMPTY_ANSWERS), rows),
        junk=pick(pl.Series(JUNK), rows),
        junk_at=pl.Series(rng.random(rows)),
        long_answer=pick(long_answers, rows),
        long_prompt=pick(long_prompts, rows),
        system=maybe(pick(pl.Series(SYSTEM_PROMPTS), rows), SYSTEM_SHARE),
        follow_up=maybe(pick(pl.Series(FOLLOW_UPS), rows), MULTI_TURN_SHARE),
        follow_sent=pick(sents, rows),
        answer2=pools.filter(pl.col("pool") == "clean")["answer"].sample(
            rows, with_replacement=True, seed=seed
        ),
        answer2_sent=pick(sents, rows),
    )
    k = pl.col("kind")
    prefix = pl.concat_str("pre1", "pre2", separator=" ", ignore_nulls=True)
    suffix = pl.concat_str("post1", "post2", "post3", separator=" ", ignore_nulls=True)
    # Options and FLAN answers are labels or short targets ("B", "yes"): left as they are, so the
    # options rewrite still sees a letter; their rows differ by the sentences before the prompt.
    plain_answer = k.is_in(["flan", "options"])
    answer = (
        pl.when(k == "empty")
        .then(pl.col("empty"))
        .when(k == "long_answer")
        .then(pl.col("long_answer"))
        .when(plain_answer)
        .then(pl.col("answer"))
        .otherwise(pl.concat_str("answer", "post_sep", suffix))
    )
    frame = frame.with_columns(
        prompt=pl.when(k == "long_prompt")
        .then(pl.concat_str("long_prompt", pl.lit("\n\nSummarise the text above.")))
        .otherwise(pl.concat_str(prefix, "pre_sep", "prompt")),
        answer=answer,
    )
    at = (pl.col("junk_at") * pl.col("answer").str.len_chars()).cast(pl.Int64)
    frame = frame.with_columns(
        answer=pl.when(k == "non_printing")
        .then(
            pl.concat_str(pl.col("answer").str.slice(0, at), "junk", pl.col("answer").str.slice(at))
        )
        .otherwise("answer"),
        prompt2=pl.concat_str("follow_up", pl.lit(" "), "follow_sent"),
        answer2=pl.when(pl.col("follow_up").is_not_null()).then(
            pl.concat_str("answer2", pl.lit(" "), "answer2_sent")
        ),
    ).select("source", "lang", "kind", "system", "prompt", "answer", "prompt2", "answer2")

    # Copies: ~5% exact and ~3% near copies, each of a random earlier original.
    u = rng.random(rows)
    copy = np.zeros(rows, dtype=np.int8)
    copy[u < EXACT_SHARE + NEAR_SHARE] = 2
    copy[u < EXACT_SHARE] = 1
    copy[: min(rows, 1000)] = 0
    originals = np.flatnonzero(copy == 0)
    before = np.searchsorted(originals, np.arange(rows), side="left")  # originals before i
    earlier = np.floor(rng.random(rows) * np.maximum(before, 1)).astype(np.int64)
    of = np.where(copy == 0, np.arange(rows), originals[np.minimum(earlier, len(originals) - 1)])
    copies = frame[of].with_columns(
        copy=pl.Series(np.array(["original", "exact", "near"])[copy]),
        variant=pl.Series(rng.random(rows)),
        word=pick(pl.Series(NEAR_WORDS), rows),
    )
    # Exact copies differ only in what normalisation removes: a trailing "!", doubled spaces,
    # case (of the prompt). Near copies get one inserted word, in the answer when it has a space.
    c, v = pl.col("copy"), pl.col("variant")
    near_answer = (c == "near") & pl.col("answer").str.contains(" ", literal=True)
    inserted = pl.concat_str(pl.lit(" "), "word", pl.lit(" "))
    copies = copies.with_columns(
        answer=pl.when((c == "exact") & (v >= 0.5) & (v < 0.7))
        .then(pl.col("answer") + "!")
        .when(near_answer)
        .then(pl.col("answer").str.replace(" ", inserted, literal=True))
        .otherwise("answer"),
        prompt=pl.when((c == "exact") & (v >= 0.7) & (v < 0.9))
        .then(pl.col("prompt").str.replace_all(" ", "  ", literal=True))
        .when((c == "exact") & (v >= 0.9))
        .then(pl.col("prompt").str.to_uppercase())
        .when((c == "near") & ~near_answer)
        .then(pl.col("prompt").str.replace(" ", inserted, literal=True))
        .otherwise("prompt"),
    )

    def turn(role: str, column: str) -> pl.Expr:
        message = pl.struct(role=pl.lit(role), content=pl.col(column))
        return pl.when(pl.col(column).is_not_null()).then(message)

    row_id = pl.int_range(pl.len()).cast(pl.String).str.zfill(7)
    return copies.select(
        pl.concat_str(pl.lit("cc"), row_id).alias("id"),
        "source",
        row_id.alias("source_id"),
        "lang",
        pl.concat_list(
            turn("system", "system"),
            turn("user", "prompt"),
            turn("assistant", "answer"),
            turn("user", "prompt2"),
            turn("assistant", "answer2"),
        )
        .list.drop_nulls()
        .alias("messages"),
        pl.format('{{"task": "{}", "copy": "{}"}}', "kind", "copy").alias("meta"),
        pl.lit(None, dtype=PROVENANCE).alias("provenance"),
    ).cast(CONVERSATIONS)


def ensure_tokenizer() -> Path:
    """The BPE tokenizer (4096 words) trained once on the pretraining sample."""
    from training.tokenizer import TokenizerConfig, save_tokenizer, train_tokenizer

    path = TOKENIZER_DIR / "tokenizer.json"
    if not path.exists():
        tokenizer = train_tokenizer(pretrain_texts(), TokenizerConfig(vocab_size=4096))
        save_tokenizer(tokenizer, TOKENIZER_DIR)
    return path


def ensure_data(rows: int, seed: int, regenerate: bool) -> Path:
    path = OUT / f"conversations_{rows}_{seed}.parquet"
    if regenerate or not path.exists():
        started = time.perf_counter()
        frame = generate(rows, seed)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # two runs may generate at once
        frame.write_parquet(tmp)
        tmp.rename(path)  # a cache that is never half-written
        print(f"generated {rows} rows in {time.perf_counter() - started:.1f}s → {path}", flush=True)
    return path


# ---- measuring -------------------------------------------------------------------------------


def peak_mib() -> float:
    """Peak RSS of this process: VmHWM belongs to this address space (``ru_maxrss`` of a child
    started by fork+exec can carry the parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


class Timed:
    """A filter that records how long its calls took; ``curate`` sees the same filter."""

    def __init__(self, inner: Filter) -> None:
        self.inner = inner
        self.category = inner.category
        self.seconds = 0.0
        self.rows_in = 0

    def __call__(self, batch: Batch) -> Findings:
        self.rows_in += batch.rows.height
        started = time.perf_counter()
        found = self.inner(batch)
        self.seconds += time.perf_counter() - started
        return found


@dataclass(frozen=True)
class QualitySubset:
    """``QualityFilter`` restricted to the rules the baseline implements (``empty_answer`` and
    ``non_printing``): the filter has no switch for its other two, and a high
    ``repetition_min_words`` would still pay for counting words."""

    category: ClassVar[str] = "quality"
    inner: Any  # QualityFilter (imported late: the parent process never needs polars filters)

    def __call__(self, batch: Batch) -> Findings:
        import polars as pl

        from curation.filters.base import FINDINGS, Findings

        parts = [self.inner.empty_answer(batch), self.inner.non_printing(batch)]
        return Findings(
            ledger=pl.concat([p.select(FINDINGS.names()).cast(FINDINGS) for p in parts])
        )


def comparable_filters(count_tokens: Callable[[list[str]], list[int]]) -> list[Filter]:
    """The default chain cut down to the rules the baseline implements (see module docstring)."""
    from curation.curate import build_filters
    from curation.filters.safety import CATEGORIES

    config = {"safety": {"rules": list(CATEGORIES)}, "duplicates": {"near": False}}
    filters: list[Filter] = []
    for step in build_filters(config, count_tokens):
        if step.category == "quality":
            step = QualitySubset(step)
        elif step.category == "pii":
            # Labels come from OpenAssistant meta, which the baseline does not parse (and the
            # generated meta has none); build_filters cannot set a float field to None.
            step = dataclasses.replace(step, label_threshold=None)  # type: ignore[type-var]
        filters.append(step)
    return filters


def child_postforge(data: Path, chain: str, limit: int | None, ledger_out: Path | None) -> None:
    import polars as pl
    from tokenizers import Tokenizer

    from curation.curate import build_filters, curate
    from curation.tokens import TokenCounter

    load_start = os.getloadavg()[0]
    counter = TokenCounter(Tokenizer.from_file(str(ensure_tokenizer())))
    filters = build_filters({}, counter) if chain == "full" else comparable_filters(counter)
    timed = [Timed(f) for f in filters]
    code = code_version()["curation_sha256"]  # after the imports: the code this child runs
    started = time.perf_counter()
    conversations = pl.read_parquet(data, n_rows=limit)
    read_s = time.perf_counter() - started
    loaded_mib = peak_mib()
    started = time.perf_counter()
    result = curate(conversations, timed)
    curate_s = time.perf_counter() - started
    if ledger_out is not None:
        result.ledger.select("row_id", "rule", "verdict").write_parquet(ledger_out)
    per_filter = {
        t.inner.__class__.__name__: {"seconds": round(t.seconds, 3), "rows_in": t.rows_in}
        for t in timed
    }
    print(
        json.dumps(
            {
                "rows": conversations.height,
                "read_seconds": read_s,
                "seconds": curate_s,
                "rows_per_s": conversations.height / curate_s,
                "peak_mib": peak_mib(),
                "peak_mib_after_read": loaded_mib,
                "filters": per_filter,
                "outside_filters_seconds": curate_s - sum(t.seconds for t in timed),
                "states": result.counts(),
                "rules": dict(result.ledger.group_by("rule").len().sort("rule").iter_rows()),
                "load_average": [load_start, os.getloadavg()[0]],
                "curation_sha256": code,
            }
        )
    )


# ---- the pandas row-by-row baseline ------------------------------------------------------------


def _python_pattern(pattern: str) -> str:
    r"""Rust's ``\x{HHHH}`` escape as Python's ``\uHHHH``/``\UHHHHHHHH`` (the only syntax in
    the quality patterns that Python's ``re`` reads differently)."""

    def escape(m: re.Match[str]) -> str:
        code = int(m.group(1), 16)
        return f"\\u{code:04X}" if code <= 0xFFFF else f"\\U{code:08X}"

    return re.sub(r"\\x\{([0-9A-Fa-f]+)\}", escape, pattern)


# Rust's \s (Unicode White_Space), spelled out: Python's \s also takes \x1c-\x1f.
_WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_WS_RUN = re.compile(f"[{_WHITE_SPACE}]+")
# dedup.normalise drops \p{P} (Unicode punctuation), which Python's re has no class for.
_PUNCTUATION = {
    cp: None for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp)).startswith("P")
}


def normalise(text: str) -> str:
    """``curation.filters.dedup.normalise`` for one string: lowercase, no punctuation, every
    whitespace run one space, no spaces at the ends."""
    return _WS_RUN.sub(" ", text.lower().translate(_PUNCTUATION)).strip(" ")


Turns = list[tuple[str, str]]  # (role, content) in turn order
Verdicts = list[tuple[str, str]]  # (rule, verdict)


class RowByRow:
    """Every covered rule for one row at a time, in the pipeline's order, with its rewrites
    carried forward and its drops ending the row (as ``curate`` does)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        # Every module up front, so that the code measured is the code at start-up (the
        # digest each child reports is taken right after its imports).
        from curation.filters import options, pii, quality, references, safety

        self.redact = pii.redact
        self.detect, self.strip = references.detect, references.strip
        self.requested, self.left_nothing = references.requested, references.left_nothing
        self.has_options, self.resolve = options.has_options, options.resolve
        self.strip_options = options.strip_options
        self.scan = safety.scan
        self.tokenizer = tokenizer
        self.visible = re.compile(_python_pattern(quality.VISIBLE))
        self.control = re.compile(quality.CONTROL)
        self.junk = re.compile(_python_pattern(quality.JUNK))
        self.letter_candidate = re.compile(options.LETTER_CANDIDATE)
        self.prompt_letter_ref = re.compile(options.PROMPT_LETTER_REF)
        self.max_junk_share = quality.QualityFilter().max_junk_share
        self.seen: set[str] = set()  # exact-duplicate keys of the rows kept so far
        # The filters compile their Python patterns on first use: here, before any timed row.
        options.has_options("")
        options.resolve("", None)
        options.strip_options("")
        references.detect("")
        references.strip("")
        references.requested("")
        safety.scan("")

    def __call__(self, row: pd.Series) -> list[tuple[str, str]]:
        turns = [(m["role"], m["content"]) for m in row["messages"]]
        found = self.role_order(turns)
        if found:
            return found
        for stage in (self.quality, self.pii, self.references, self.options, self.safety):
            turns, verdicts = stage(turns)
            found += verdicts
            if any(v == "drop" for _, v in verdicts):
                return found
        for stage in (self.length, self.duplicate):
            verdicts = stage(turns)
            found += verdicts
            if any(v == "drop" for _, v in verdicts):
                return found
        return found

    @staticmethod
    def role_order(turns: Turns) -> Verdicts:
        """``curate``'s structural ``structure.role_order``, which runs before every filter:
        user and assistant alternate after an optional leading system message (a conversation
        may end on a user turn). The generated rows are all in order; the check is here so
        that a change to the generator cannot make the two sides disagree unseen."""
        lead = 1 if turns and turns[0][0] == "system" else 0
        for i, (role, _) in enumerate(turns):
            expected = "system" if i < lead else ("user", "assistant")[(i - lead) % 2]
            if role != expected:
                return [("structure.role_order", "drop")]
        return []

    def quality(self, turns: Turns) -> tuple[Turns, Verdicts]:
        out = []
        if not any(self.visible.search(c) for r, c in turns if r == "assistant"):
            out.append(("quality.empty_answer", "drop"))
        for _, content in turns:
            control = len(self.control.findall(content))
            junk = len(self.junk.findall(content))
            if control > 0 or (junk and junk / len(content) > self.max_junk_share):
                out.append(("quality.non_printing", "drop"))
                break
        return turns, out

    def pii(self, turns: Turns) -> tuple[Turns, Verdicts]:
        fired: set[str] = set()
        new = []
        for role, content in turns:
            text, counts = self.redact(content)
            fired.update(counts)
            new.append((role, text))
        return new, [(rule, "rewrite") for rule in sorted(fired)]

    def references(self, turns: Turns) -> tuple[Turns, Verdicts]:
        fired: set[str] = set()
        per_turn: list[list[str]] = []
        for role, content in turns:
            rules = self.detect(content) if role == "assistant" else []
            fired.update(rules)
            per_turn.append(rules)
        if not fired:
            return turns, []
        # A prompt that asks for references gets its answer unchanged (keep_requested).
        if any(self.requested(c) for role, c in turns if role != "assistant"):
            return turns, [(rule, "keep") for rule in sorted(fired)]
        emptied = False
        new = []
        for (role, content), rules in zip(turns, per_turn, strict=True):
            if rules:
                stripped = self.strip(content, rules)
                # Nothing left, or only the line that introduced the removed list.
                emptied = emptied or (stripped != content and self.left_nothing(content, stripped))
                content = stripped
            new.append((role, content))
        verdict = "drop" if emptied else "rewrite"
        return (turns if emptied else new), [(rule, verdict) for rule in sorted(fired)]

    def options(self, turns: Turns) -> tuple[Turns, Verdicts]:
        new = list(turns)
        unresolved = emptied = hit = False
        for i, (role, content) in enumerate(turns):
            if role != "user" or not self.has_options(content):
                continue
            hit = True
            answer = (
                turns[i + 1][1] if i + 1 < len(turns) and turns[i + 1][0] == "assistant" else None
            )
            prompt, new_answer = content, answer
            # The filter sends only these pairs to ``resolve``; for the others it is a no-op.
            if (answer is not None and self.letter_candidate.search(answer)) or (
                self.prompt_letter_ref.search(content)
            ):
                resolution = self.resolve(content, answer)
                prompt, new_answer = resolution.prompt, resolution.answer
                unresolved = unresolved or resolution.unresolved is not None
            prompt = self.strip_options(prompt)
            emptied = emptied or prompt == ""
            new[i] = (role, prompt)
            if answer is not None and new_answer is not None:
                new[i + 1] = ("assistant", new_answer)
        if not hit:
            return turns, []
        if unresolved or emptied:
            out = [("options.explicit", "drop")]
            if unresolved:
                out.append(("options.unresolvable_letter", "drop"))
            return turns, out
        return new, [("options.explicit", "rewrite")]

    def safety(self, turns: Turns) -> tuple[Turns, Verdicts]:
        out: set[tuple[str, str]] = set()
        # The paired rules (weapons and drug steps, minors) look for their subject, and for what
        # clears it, in every turn: the prompt names what the answer's steps build.
        conversation = "\n\n".join(content for _, content in turns)
        for role, content in turns:
            for rule in self.scan(content, conversation=conversation):
                if role == "assistant":
                    out.add((rule, "drop"))
                else:
                    out.add((rule.replace("safety.", "safety.prompt_"), "flag"))
        return turns, sorted(out)

    def length(self, turns: Turns) -> Verdicts:
        from curation.filters.quality import LengthFilter

        bounds = LengthFilter()
        out = []
        answers, prompt = [], 0
        for role, content in turns:
            n = len(self.tokenizer.encode(content, add_special_tokens=False))
            if role == "assistant":
                answers.append(n)
            else:
                prompt += n
        if bounds.min_answer_tokens is not None and any(
            n < bounds.min_answer_tokens for n in answers
        ):
            out.append(("length.too_short", "drop"))
        if bounds.max_answer_tokens is not None and any(
            n > bounds.max_answer_tokens for n in answers
        ):
            out.append(("length.too_long", "drop"))
        if bounds.max_prompt_tokens is not None and prompt > bounds.max_prompt_tokens:
            out.append(("length.prompt_too_long", "drop"))
        return out

    def duplicate(self, turns: Turns) -> Verdicts:
        norms = [(role, normalise(c)) for role, c in turns if role in ("user", "assistant")]
        if not any(norm for _, norm in norms):
            return []  # nothing to compare: never a duplicate (dedup.exact_duplicates)
        key = "\x1e".join(f"{role[0]}:{norm}" for role, norm in norms)
        if key in self.seen:
            return [("duplicate.exact", "drop")]
        self.seen.add(key)
        return []


def child_pandas(data: Path, limit: int, verdicts_out: Path) -> None:
    import pandas as pd
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer

    load_start = os.getloadavg()[0]
    judge = RowByRow(Tokenizer.from_file(str(ensure_tokenizer())))
    code = code_version()["curation_sha256"]  # after the imports: the code this child runs
    started = time.perf_counter()
    df = pq.read_table(data).slice(0, limit).to_pandas()
    read_s = time.perf_counter() - started
    loaded_mib = peak_mib()
    started = time.perf_counter()
    verdicts = df.apply(judge, axis=1)
    seconds = time.perf_counter() - started
    long = pd.DataFrame(
        [
            (rid, rule, v)
            for rid, found in zip(df["id"], verdicts, strict=True)
            for rule, v in found
        ],
        columns=["row_id", "rule", "verdict"],
    )
    long.to_parquet(verdicts_out)
    print(
        json.dumps(
            {
                "rows": len(df),
                "read_seconds": read_s,
                "seconds": seconds,
                "rows_per_s": len(df) / seconds,
                "peak_mib": peak_mib(),
                "peak_mib_after_read": loaded_mib,
                "rules": {k: int(v) for k, v in long["rule"].value_counts().sort_index().items()},
                "load_average": [load_start, os.getloadavg()[0]],
                "curation_sha256": code,
            }
        )
    )


# ---- the parent --------------------------------------------------------------------------------


def code_version() -> dict[str, Any]:
    """The commit measured, whether the filters differed from it, and a digest of their text:
    the filters change often, and a digest taken before and after a run shows an edit made
    while it ran (the children import the modules at different times)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    digest = hashlib.sha256()
    for path in sorted((ROOT / "curation").rglob("*.py")):
        digest.update(path.read_bytes())
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "curation_dirty": bool(git("status", "--porcelain", "--", "curation")),
        "curation_sha256": digest.hexdigest()[:16],
    }


def run_child(args: list[str]) -> dict:
    command = [sys.executable, __file__, *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.stderr.write(done.stderr)
        raise RuntimeError(f"child {args} failed with {done.returncode}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {' '.join(args[:2])}: done in {time.perf_counter() - started:.0f}s", flush=True)
    return result


def compare(postforge: Path, baseline: Path, ids: Iterable[str]) -> dict:
    """Verdict sets on the baseline's rows: (row_id, rule), and the verdict of each."""
    import polars as pl

    rows = pl.DataFrame({"row_id": pl.Series(list(ids), dtype=pl.String)})
    ours = pl.read_parquet(postforge).join(rows, on="row_id", how="semi").unique()
    theirs = pl.read_parquet(baseline).unique()
    keys = ["row_id", "rule"]
    only_ours = ours.join(theirs, on=keys, how="anti")
    only_theirs = theirs.join(ours, on=keys, how="anti")
    verdict = ours.join(theirs, on=keys, suffix="_pandas").filter(
        pl.col("verdict") != pl.col("verdict_pandas")
    )
    examples = (
        pl.concat(
            [
                only_ours.select(*keys, side=pl.lit("postforge only"), verdict="verdict"),
                only_theirs.select(*keys, side=pl.lit("pandas only"), verdict="verdict"),
                verdict.select(
                    *keys,
                    side=pl.lit("verdict differs"),
                    verdict=pl.format("{} vs {}", "verdict", "verdict_pandas"),
                ),
            ]
        )
        .sort("row_id", "rule")
        .head(10)
    )

    def by_rule(frame: pl.DataFrame) -> dict[str, int]:
        return dict(frame.group_by("rule").len().sort("rule").iter_rows())

    return {
        "rows_compared": rows.height,
        "detections_postforge": ours.height,
        "detections_pandas": theirs.height,
        "only_postforge": only_ours.height,
        "only_pandas": only_theirs.height,
        "verdict_differs": verdict.height,
        "mismatch_by_rule": {
            "postforge_only": by_rule(only_ours),
            "pandas_only": by_rule(only_theirs),
            "verdict_differs": by_rule(verdict),
        },
        "examples": examples.to_dicts(),
        "verdicts_identical": only_ours.height == 0
        and only_theirs.height == 0
        and verdict.height == 0,
    }


def table(record: dict) -> str:
    rows = [("run", "rows", "seconds", "rows/s", "peak MiB")]
    for name in ("postforge_full", "postforge_comparable", "postforge_comparable_slice", "pandas"):
        r = record[name]
        rows.append(
            (
                name,
                f"{r['rows']:,}",
                f"{r['seconds']:.1f}",
                f"{r['rows_per_s']:,.0f}",
                f"{r['peak_mib']:,.0f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]

    def line(cells: tuple[str, ...]) -> str:
        # The run name left-aligned, the numbers right-aligned.
        return "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        )

    lines = [line(r) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    for name in ("postforge_full", "postforge_comparable"):
        lines.append(f"\nper filter, {name} (seconds, rows in):")
        for filt, t in record[name]["filters"].items():
            lines.append(f"  {filt:<16} {t['seconds']:8.2f}  {t['rows_in']:>10,}")
        lines.append(f"  {'outside filters':<16} {record[name]['outside_filters_seconds']:8.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--slice", type=int, default=100_000, help="rows the baseline runs on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--regenerate", action="store_true")
    parser.add_argument("--no-record", action="store_true", help="do not append to the results")
    parser.add_argument("--child", choices=["postforge", "pandas"])
    parser.add_argument("--chain", choices=["comparable", "full"], default="comparable")
    parser.add_argument("--data")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.child == "postforge":
        out = Path(args.out) if args.out else None
        child_postforge(Path(args.data), args.chain, args.limit, out)
        return
    if args.child == "pandas":
        child_pandas(Path(args.data), args.limit, Path(args.out))
        return

    sys.path.insert(0, str(ROOT))
    import polars as pl

    OUT.mkdir(parents=True, exist_ok=True)
    ensure_tokenizer()
    data = ensure_data(args.rows, args.seed, args.regenerate)
    size = min(args.slice, args.rows)
    record: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"polars {pl.__version__}, python {platform.python_version()}",
        "load_average_at_start": os.getloadavg(),  # other work on the machine skews timings
        "rows": args.rows,
        "pandas_slice": size,
        "code": code_version(),
    }
    # Per-run files: two runs at once (a small trial beside the big one) must not read each
    # other's ledgers.
    run_dir = OUT / f"run_{args.rows}_{size}_{os.getpid()}"
    run_dir.mkdir(parents=True, exist_ok=True)
    ledger = run_dir / "ledger_comparable.parquet"
    base = ["--data", str(data)]
    print("running (each in its own process):", flush=True)
    record["postforge_full"] = run_child(["--child", "postforge", "--chain", "full", *base])
    record["postforge_comparable"] = run_child(
        ["--child", "postforge", "--chain", "comparable", *base, "--out", str(ledger)]
    )
    if size < args.rows:
        record["postforge_comparable_slice"] = run_child(
            ["--child", "postforge", "--chain", "comparable", *base, "--limit", str(size)]
        )
    else:
        record["postforge_comparable_slice"] = record["postforge_comparable"]
    verdicts = run_dir / "verdicts_pandas.parquet"
    record["pandas"] = run_child(
        ["--child", "pandas", *base, "--limit", str(size), "--out", str(verdicts)]
    )
    pandas_rate = record["pandas"]["rows_per_s"]
    record["pandas"]["extrapolated_seconds_for_rows"] = args.rows / pandas_rate
    record["speedup"] = record["postforge_comparable"]["rows_per_s"] / pandas_rate
    record["speedup_at_slice"] = record["postforge_comparable_slice"]["rows_per_s"] / pandas_rate
    ids = pl.read_parquet(data, columns=["id"], n_rows=size)["id"]
    record["verdicts"] = compare(ledger, verdicts, ids)
    record["verdicts_identical"] = record["verdicts"]["verdicts_identical"]
    record["targets"] = {
        "speedup_at_least_10x": record["speedup"] >= 10,
        "end_to_end_at_least_50k_rows_per_s": record["postforge_full"]["rows_per_s"] >= 50_000,
    }
    record["load_average_at_end"] = os.getloadavg()
    record["code_changed_during_run"] = code_version() != record["code"]
    # What matters is that every child imported the same code, whatever changed afterwards.
    runs = ("postforge_full", "postforge_comparable", "postforge_comparable_slice", "pandas")
    record["children_ran_same_code"] = len({record[r]["curation_sha256"] for r in runs}) == 1

    print(table(record))
    if size < args.rows:
        print(
            f"\npandas ran on the first {size:,} rows; at {pandas_rate:,.0f} rows/s "
            f"{args.rows:,} rows would take ~{args.rows / pandas_rate:,.0f}s (linear)."
        )
    print(
        f"speedup (comparable chain, {args.rows:,} rows vs pandas): {record['speedup']:.1f}x; "
        f"at equal size ({size:,} rows): {record['speedup_at_slice']:.1f}x"
    )
    v = record["verdicts"]
    print(
        f"verdicts on the first {v['rows_compared']:,} rows: identical={v['verdicts_identical']} "
        f"(postforge {v['detections_postforge']:,}, pandas {v['detections_pandas']:,}; "
        f"only postforge {v['only_postforge']}, only pandas {v['only_pandas']}, "
        f"verdict differs {v['verdict_differs']})"
    )
    for example in v["examples"]:
        print("  ", example)
    print("targets:", record["targets"])
    if record["code_changed_during_run"]:
        print(
            "WARNING: curation/ changed while this ran; the runs may have measured different code"
        )
    if args.no_record:
        return
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
