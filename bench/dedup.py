"""DedupFilter on N generated conversations with planted duplicates, plus the quality and length
filters on the same rows, each in a fresh process (so peak RSS is its own).

    .venv/bin/python bench/dedup.py --rows 1000000

Planted, in batch order after their originals: ``--exact-share`` exact copies (a third
upper-cased, a third with trailing punctuation, a third with doubled spaces: the normalised key
must see through all three), and ``--near-share`` near copies with about one word in thirty
replaced (at least one): half of them edited in the prompt only ("the same question reworded,
the same answer"), half edited in the answer only. The answer guard (``answer_threshold``) is
meant to reject many of the second kind, so recall is reported per kind. The true word/char
shingle Jaccard of a sample of planted near pairs is computed exactly, so recall can also be read
against the pairs that really are at or above the threshold.

Results are appended to bench/results/dedup.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
RESULTS = HERE / "results" / "dedup.jsonl"
KINDS = ("original", "exact", "near_prompt", "near_answer")


def generate(rows: int, exact_share: float, near_share: float, seed: int = 0):
    """Conversations (canonical columns Batch needs) and the planted truth per row."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    syllables = ["ka", "lo", "mi", "ren", "tu", "sa", "vel", "or", "in", "da", "pe", "qu", "ist"]
    vocab = np.array(
        ["".join(rng.choice(syllables, size=rng.integers(1, 4))) for _ in range(6000)]
        + list(".,?!")
    )
    weights = 1.0 / np.arange(1, len(vocab) + 1)
    weights /= weights.sum()

    # Which rows are copies, and of which earlier original.
    u = rng.random(rows)
    kind = np.zeros(rows, dtype=np.int8)
    kind[u < exact_share + near_share] = 3
    kind[u < exact_share + near_share / 2] = 2
    kind[u < exact_share] = 1
    kind[: min(rows, 1000)] = 0  # some originals first, so every copy has one to copy
    originals = np.flatnonzero(kind == 0)
    before = np.searchsorted(originals, np.arange(rows), side="left")  # originals before i
    pick = np.floor(rng.random(rows) * np.maximum(before, 1)).astype(np.int64)
    source = np.where(kind == 0, -1, originals[np.minimum(pick, len(originals) - 1)])

    def words(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = rng.choice(len(vocab), size=int(lengths.sum()), p=weights).astype(np.int32)
        return flat, np.concatenate([[0], np.cumsum(lengths)])

    def runs(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Flat indices of the runs [start, start + length), one after another."""
        before = np.cumsum(lengths) - lengths
        return np.repeat(starts - before, lengths) + np.arange(int(lengths.sum()))

    def copy_rows(flat, offsets, rows_from):
        lengths = np.diff(offsets)[rows_from]
        return flat[runs(offsets[rows_from], lengths)], lengths

    def edit(flat, lengths):
        """Replace about one word in thirty, and at least one, per row."""
        flat = flat.copy()
        mask = rng.random(flat.size) < 1 / 30
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        forced = starts + np.floor(rng.random(lengths.size) * lengths).astype(np.int64)
        mask[forced[lengths > 0]] = True
        flat[mask] = rng.choice(len(vocab) - 4, size=int(mask.sum())).astype(np.int32)
        return flat

    in_len = np.clip(rng.lognormal(3.6, 0.6, rows).astype(np.int64), 1, 600)
    out_len = np.clip(rng.lognormal(2.2, 0.9, rows).astype(np.int64), 1, 400)
    prompt_flat, prompt_off = words(in_len)
    answer_flat, answer_off = words(out_len)
    # Copies take the original's words (then edits); rebuild the flat arrays row by row order.
    row_src = np.where(kind == 0, np.arange(rows), source)
    prompt_words, prompt_lengths = copy_rows(prompt_flat, prompt_off, row_src)
    answer_words, answer_lengths = copy_rows(answer_flat, answer_off, row_src)
    for flat, lengths, which in (
        (prompt_words, prompt_lengths, 2),
        (answer_words, answer_lengths, 3),
    ):
        starts = np.cumsum(lengths) - lengths
        rows_edit = np.flatnonzero(kind == which)
        idx = runs(starts[rows_edit], lengths[rows_edit])
        flat[idx] = edit(flat[idx], lengths[rows_edit])

    def texts(flat, lengths) -> pl.Series:
        frame = pl.DataFrame(
            {"row": np.repeat(np.arange(rows), lengths), "w": pl.Series(vocab)[flat]}
        )
        joined = frame.group_by("row", maintain_order=True).agg(pl.col("w").str.join(" "))
        return joined["w"]

    prompts, answers = texts(prompt_words, prompt_lengths), texts(answer_words, answer_lengths)
    style = np.arange(rows) % 3
    exact = pl.Series(kind == 1)
    s = pl.Series(style)
    frame = pl.DataFrame({"prompt": prompts, "answer": answers, "exact": exact, "style": s})
    frame = frame.with_columns(
        pl.when(pl.col("exact") & (pl.col("style") == 0))
        .then(pl.col("prompt").str.to_uppercase())
        .when(pl.col("exact") & (pl.col("style") == 1))
        .then(pl.col("prompt") + " ?!")
        .when(pl.col("exact") & (pl.col("style") == 2))
        .then(pl.col("prompt").str.replace_all(" ", "  "))
        .otherwise(pl.col("prompt"))
        .alias("prompt")
    )
    ids = pl.Series([f"{i:016x}" for i in range(rows)])
    conversations = pl.DataFrame(
        {
            "id": ids,
            "source": pl.Series(["bench"] * rows),
            "lang": pl.Series(["en"] * rows),
            "meta": pl.Series(["{}"] * rows),
        }
    ).with_columns(
        messages=pl.concat_list(
            pl.struct(role=pl.lit("user"), content=frame["prompt"]),
            pl.struct(role=pl.lit("assistant"), content=frame["answer"]),
        )
    )
    truth = pl.DataFrame(
        {"id": ids, "kind": pl.Series(kind).replace_strict(dict(enumerate(KINDS)))}
    ).with_columns(
        source_id=pl.when(pl.Series(source) >= 0)
        .then(ids.gather(pl.Series(np.maximum(source, 0))))
        .otherwise(None)
    )
    return conversations, truth


def true_jaccard(conversations, truth, sample: int, threshold: float, seed: int = 0):
    """Exact shingle Jaccard (the filter's rules, in plain Python) of sampled planted near pairs."""
    import polars as pl

    from curation.filters.dedup import DedupFilter

    min_words = DedupFilter(threshold=threshold).min_words()

    def norm(text: str) -> str:
        text = re.sub(r"[^\w\s+]", "", text.lower())  # the generated text has only .,?! marks
        return re.sub(r"\s+", " ", text).strip()

    def shingles(text: str) -> set:
        w = text.split(" ")
        if len(w) >= min_words:
            return {tuple(w[i : i + 3]) for i in range(len(w) - 2)}
        return {text[i : i + 5] for i in range(max(1, len(text) - 4))}

    texts = dict(
        zip(
            conversations["id"].to_list(),
            conversations["messages"].list.eval(pl.element().struct.field("content")).to_list(),
            strict=True,
        )
    )
    pairs = truth.filter(pl.col("kind").is_in(["near_prompt", "near_answer"]))
    pairs = pairs.sample(min(sample, pairs.height), seed=seed)
    values = []
    for a, b in zip(pairs["id"], pairs["source_id"], strict=True):
        sa = shingles(norm(" ".join(texts[a])))
        sb = shingles(norm(" ".join(texts[b])))
        values.append(len(sa & sb) / len(sa | sb))
    return pairs.select("id", "kind", jaccard=pl.Series(values))


def near_recall(findings: Path, sampled, threshold: float) -> dict:
    """Per kind of planted near copy: how many of the sampled ones have true Jaccard at or
    above the threshold, and how many of those (and of the others) the filter reported."""
    import polars as pl

    reported = pl.read_parquet(findings).select(pl.col("row_id").alias("id"), found=pl.lit(True))
    scored = sampled.join(reported, on="id", how="left").with_columns(
        pl.col("found").fill_null(False), above=pl.col("jaccard") >= threshold
    )
    out = {}
    for kind in ("near_prompt", "near_answer"):
        rows = scored.filter(pl.col("kind") == kind)
        above, below = rows.filter("above"), rows.filter(~pl.col("above"))
        out[kind] = {
            "sampled": rows.height,
            "median_true_jaccard": float(rows["jaccard"].median() or 0.0),
            "share_at_or_above_threshold": above.height / max(rows.height, 1),
            "recall_at_or_above_threshold": float(above["found"].mean() or 0.0),
            "reported_below_threshold": float(below["found"].mean() or 0.0),
        }
    return out


# --- the measured runs, each in its own process -----------------------------------------------


def peak_mib() -> float:
    """Peak RSS of this process. VmHWM, not ``getrusage``: on Linux a child started by
    fork+exec inherits the parent's ``ru_maxrss`` (the parent here holds the generated data),
    while VmHWM belongs to the new address space."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(which: str, data: Path, findings_out: Path, tokenizer: Path | None) -> None:
    import polars as pl

    from curation.filters.base import Batch

    # The batch was built and stored by the parent: the child's peak is the batch plus what
    # the filter itself needs, not the conversations frame and the explode that built it.
    batch = Batch(
        messages=pl.read_parquet(data.with_suffix(".messages.parquet")),
        rows=pl.read_parquet(data.with_suffix(".rows.parquet")),
    )
    loaded_mib = peak_mib()
    phases: list[dict] = []
    if which == "dedup":
        from curation.filters.dedup import DedupFilter

        chosen = DedupFilter()
        phases = collect_phases("curation.filters.dedup")
    elif which == "quality":
        from curation.filters.quality import QualityFilter

        chosen = QualityFilter()
    else:
        from curation.filters.quality import LengthFilter

        counter = None
        if tokenizer is not None:
            from tokenizers import Tokenizer

            from curation.tokens import TokenCounter

            counter = TokenCounter(Tokenizer.from_file(str(tokenizer)))
        chosen = LengthFilter(count_tokens=counter)
    load_before = os.getloadavg()[0]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    t2 = time.perf_counter()
    findings = chosen(batch)
    t3 = time.perf_counter()
    spent = resource.getrusage(resource.RUSAGE_SELF)
    findings.ledger.write_parquet(findings_out)
    result = {
        "filter_seconds": t3 - t2,
        # CPU seconds of the call (all threads): on a shared machine, wall time alone
        # cannot tell a slower filter from a busier machine.
        "filter_cpu_seconds": spent.ru_utime - usage.ru_utime + spent.ru_stime - usage.ru_stime,
        "filter_sys_seconds": spent.ru_stime - usage.ru_stime,
        "load_average_before_after": [load_before, os.getloadavg()[0]],
        "peak_mib": peak_mib(),
        "peak_mib_before_filter": loaded_mib,
        "findings": findings.ledger.height,
    }
    if phases:
        result["phases"] = phases
    print(json.dumps(result))


def collect_phases(logger: str) -> list[dict]:
    """The per-phase timings a filter logs at DEBUG (``curation.filters.dedup._phase``)."""
    import logging

    phases: list[dict] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if hasattr(record, "phase"):
                keys = ("phase", "wall_s", "cpu_s", "rows", "pairs")
                phases.append({k: getattr(record, k) for k in keys if hasattr(record, k)})

    target = logging.getLogger(logger)
    target.setLevel(logging.DEBUG)
    target.addHandler(Collect())
    return phases


def measure(which: str, data: Path, rows: int, tokenizer: Path | None) -> dict:
    findings = OUT / f"findings_{which}.parquet"
    command = [sys.executable, __file__, "--child", which, "--data", str(data)]
    command += ["--findings", str(findings)]
    if tokenizer is not None:
        command += ["--tokenizer", str(tokenizer)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["rows_per_s"] = rows / result["filter_seconds"]
    result["findings_path"] = str(findings)
    return result


def score(findings: Path, truth) -> dict:
    """Precision and recall of the planted duplicates, and whether the named row is the
    planted original."""
    import polars as pl

    ledger = pl.read_parquet(findings).with_columns(
        kept=pl.col("reason").str.extract(r"duplicate of ([0-9a-f]+)")
    )
    joined = ledger.join(truth, left_on="row_id", right_on="id", how="left")
    planted = truth.filter(pl.col("kind") != "original")
    out: dict = {"reported": ledger.height}
    out["precision"] = float((joined["kind"] != "original").mean()) if ledger.height else 1.0
    out["kept_is_planted_original"] = (
        float((joined["kept"] == joined["source_id"]).mean()) if ledger.height else 1.0
    )
    for kind in ("exact", "near_prompt", "near_answer"):
        rows = planted.filter(pl.col("kind") == kind)
        hit = rows.join(ledger, left_on="id", right_on="row_id", how="semi")
        out[f"recall_{kind}"] = hit.height / max(rows.height, 1)
    rows = planted.filter(pl.col("kind") == "exact")
    exact_hits = rows.join(
        ledger.filter(pl.col("rule") == "duplicate.exact"), left_on="id", right_on="row_id"
    )
    out["exact_found_by_exact_pass"] = exact_hits.height / max(rows.height, 1)
    out["rules"] = dict(ledger.group_by("rule").len().sort("rule").iter_rows())
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--exact-share", type=float, default=0.05)
    parser.add_argument("--near-share", type=float, default=0.05)
    parser.add_argument("--filters", default="dedup,quality,length")
    parser.add_argument("--child")
    parser.add_argument("--data")
    parser.add_argument("--findings")
    parser.add_argument("--tokenizer")
    args = parser.parse_args()
    if args.child:
        tokenizer = Path(args.tokenizer) if args.tokenizer else None
        child(args.child, Path(args.data), Path(args.findings), tokenizer)
        return

    sys.path.insert(0, str(ROOT))
    import polars as pl

    OUT.mkdir(exist_ok=True)
    tag = f"{args.rows}_{args.exact_share}_{args.near_share}"
    data, truth_path = OUT / f"dedup_{tag}.parquet", OUT / f"dedup_{tag}_truth.parquet"
    if not (data.exists() and truth_path.exists()):
        t0 = time.perf_counter()
        conversations, truth = generate(args.rows, args.exact_share, args.near_share)
        conversations.write_parquet(data)
        truth.write_parquet(truth_path)
        from curation.filters.base import Batch

        batch = Batch.from_conversations(conversations)
        batch.messages.write_parquet(data.with_suffix(".messages.parquet"))
        batch.rows.write_parquet(data.with_suffix(".rows.parquet"))
        del batch, conversations
        print(f"generated {args.rows} rows in {time.perf_counter() - t0:.1f}s", flush=True)
    truth = pl.read_parquet(truth_path)
    tokenizer = OUT / "tokenizer" / "tokenizer.json"
    record: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, polars {pl.__version__}",
        "load_average_at_start": os.getloadavg()[0],  # other work on the machine skews timings
        "rows": args.rows,
        "planted": dict(truth.group_by("kind").len().sort("kind").iter_rows()),
    }
    for which in args.filters.split(","):
        result = measure(which, data, args.rows, tokenizer if tokenizer.exists() else None)
        if which == "dedup":
            result["quality"] = score(Path(result["findings_path"]), truth)
        if which == "length":
            result["tokens"] = "tokenizer" if tokenizer.exists() else "whitespace words"
        record[which] = {k: v for k, v in result.items() if k != "findings_path"}
        print(which, json.dumps(result, indent=1), flush=True)
    if "dedup" in record:
        from curation.filters.dedup import DedupFilter

        conversations = pl.read_parquet(data)
        threshold = DedupFilter().threshold
        sampled = true_jaccard(conversations, truth, 4000, threshold)
        findings = OUT / "findings_dedup.parquet"
        record["dedup"]["near_recall"] = near_recall(findings, sampled, threshold)
        print(json.dumps(record["dedup"]["near_recall"], indent=1))
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
