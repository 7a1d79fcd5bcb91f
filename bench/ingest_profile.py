"""Ingest + length profile of N generated FLAN-format conversations: postforge versus a
straightforward pandas implementation of the same steps, each in a fresh process (so peak RSS
is its own), with identical outputs checked. Also token counting versus bare ``encode_batch``.

    .venv/bin/python bench/ingest_profile.py --rows 1000000

Results are appended to bench/results/ingest_profile.jsonl; bench/README.md records them.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
RESULTS = HERE / "results" / "ingest_profile.jsonl"
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """Instruction-like rows: Zipf words, long prompts and short targets, as FLAN has."""
    import numpy as np

    rng = np.random.default_rng(seed)
    syllables = ["ka", "lo", "mi", "ren", "tu", "sa", "vel", "or", "in", "da", "pe", "qu", "ist"]
    vocab = np.array(
        ["".join(rng.choice(syllables, size=rng.integers(1, 4))) for _ in range(6000)]
        + list(".,?!")
    )
    weights = 1.0 / np.arange(1, len(vocab) + 1)
    weights /= weights.sum()
    sources = ["Flan2021", "P3", "NIv2", "CoT", "Dialog"]
    with path.open("w", encoding="utf-8") as handle:
        for start in range(0, rows, 50_000):
            n = min(50_000, rows - start)
            in_len = np.clip(rng.lognormal(3.6, 0.6, n).astype(int), 1, 600)
            out_len = np.clip(rng.lognormal(2.2, 0.9, n).astype(int), 1, 400)
            words = rng.choice(vocab, size=int(in_len.sum() + out_len.sum()), p=weights)
            at = 0
            lines = []
            for i in range(n):
                inputs = " ".join(words[at : at + in_len[i]])
                at += in_len[i]
                targets = " ".join(words[at : at + out_len[i]])
                at += out_len[i]
                lines.append(
                    json.dumps(
                        {
                            "inputs": inputs,
                            "targets": targets,
                            "task_source": sources[(start + i) % 5],
                            "task_name": f"task{(start + i) % 97}",
                            "template_type": "zs_noopt",
                        }
                    )
                )
            handle.write("\n".join(lines) + "\n")


def ensure_tokenizer(data: Path, target: Path) -> None:
    if target.exists():
        return
    from itertools import islice

    from training.tokenizer import TokenizerConfig, save_tokenizer, train_tokenizer

    with data.open() as handle:
        texts = [json.loads(line)["inputs"] for line in islice(handle, 20_000)]
    save_tokenizer(train_tokenizer(texts, TokenizerConfig(vocab_size=4096)), target.parent)


# --- the two implementations, each run in its own process -------------------------------------


def run_postforge(data: Path, tokenizer_path: Path | None, stats_out: Path) -> None:
    from curation.ingest import ingest
    from curation.profile import profile
    from curation.tokens import TokenCounter
    from training.tokenizer import load_tokenizer

    counter = TokenCounter(load_tokenizer(tokenizer_path)) if tokenizer_path else None
    result = ingest("flan", [data])
    stats = profile(result.conversations, counter).stats
    stats.write_parquet(stats_out)


def run_pandas(data: Path, tokenizer_path: Path | None, stats_out: Path) -> None:
    """What one would write first: read_json, row-wise apply, groupby quantiles."""
    import hashlib

    import pandas as pd

    df = pd.read_json(data, lines=True, dtype=False)
    df["source"] = "flan"
    df["source_id"] = [f"{data.name}:{i + 1}" for i in range(len(df))]
    df["id"] = df.apply(
        lambda r: hashlib.blake2b(
            f"{r['source']}\x1f{r['source_id']}".encode(), digest_size=8
        ).hexdigest(),
        axis=1,
    )
    df["messages"] = df.apply(
        lambda r: [
            {"role": "user", "content": r["inputs"]},
            {"role": "assistant", "content": r["targets"]},
        ],
        axis=1,
    )
    messages = df[["source", "messages"]].explode("messages")
    messages["role"] = messages["messages"].apply(lambda m: m["role"])
    messages["content"] = messages["messages"].apply(lambda m: m["content"])
    messages["chars"] = messages["content"].str.len()
    messages["words"] = messages["content"].str.split().str.len()
    if tokenizer_path:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer_path))
        messages["tokens"] = messages["content"].apply(
            lambda t: len(tok.encode(t, add_special_tokens=False).ids)
        )
    measures = ["chars", "words"] + (["tokens"] if tokenizer_path else [])
    long = messages.melt(
        id_vars=["source", "role"], value_vars=measures, var_name="measure", value_name="value"
    )
    grouped = long.groupby(["source", "role", "measure"])["value"]
    stats = grouped.agg(["count", "mean", "min", "max"])
    for q in QUANTILES:
        stats[f"p{round(q * 100)}"] = grouped.quantile(q, interpolation="lower")
    stats.reset_index().to_parquet(stats_out)


def child(args: argparse.Namespace) -> None:
    tokenizer = Path(args.tokenizer) if args.tokenizer else None
    started = time.perf_counter()
    {"postforge": run_postforge, "pandas": run_pandas}[args.impl](
        Path(args.data), tokenizer, Path(args.stats)
    )
    seconds = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mib": peak_mib}))


def measure(impl: str, data: Path, tokenizer: Path | None, rows: int) -> dict:
    stats = OUT / f"stats_{impl}_{'tok' if tokenizer else 'notok'}.parquet"
    command = [
        sys.executable,
        __file__,
        "--child",
        impl,
        "--data",
        str(data),
        "--stats",
        str(stats),
    ]
    if tokenizer:
        command += ["--tokenizer", str(tokenizer)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result = json.loads(output.strip().splitlines()[-1])
    result.update(impl=impl, rows_per_s=rows / result["seconds"], stats=str(stats))
    return result


def same_stats(ours: Path, theirs: Path) -> bool:
    import polars as pl

    columns = ["source", "role", "measure", "count", "min", "max"] + [
        f"p{round(q * 100)}" for q in QUANTILES
    ]
    a = pl.read_parquet(ours).select(columns).cast({c: pl.Int64 for c in columns[3:]})
    b = pl.read_parquet(theirs).select(columns).cast({c: pl.Int64 for c in columns[3:]})
    keys = ["source", "role", "measure"]
    return a.sort(keys).equals(b.sort(keys))


def token_throughput(data: Path, tokenizer_path: Path, texts_n: int = 200_000) -> dict:
    from itertools import islice

    from tokenizers import Tokenizer

    from curation.tokens import TokenCounter

    with data.open() as handle:
        texts = [json.loads(line)["inputs"] for line in islice(handle, texts_n)]
    tok = Tokenizer.from_file(str(tokenizer_path))
    best: dict[str, float] = {}
    for _ in range(3):
        t0 = time.perf_counter()
        bare = tok.encode_batch(texts, add_special_tokens=False)
        t1 = time.perf_counter()
        ours = TokenCounter(tok)(texts)  # a fresh cache each round: no help from the last
        t2 = time.perf_counter()
        best["bare"] = min(best.get("bare", 1e9), t1 - t0)
        best["ours"] = min(best.get("ours", 1e9), t2 - t1)
        assert [len(e.ids) for e in bare] == ours
        del bare
    return {
        "texts": len(texts),
        "bare_encode_batch_texts_per_s": len(texts) / best["bare"],
        "count_tokens_texts_per_s": len(texts) / best["ours"],
        "ratio": best["bare"] / best["ours"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--child")
    parser.add_argument("--data")
    parser.add_argument("--stats")
    parser.add_argument("--tokenizer")
    parser.add_argument("--skip-pandas-tokens", action="store_true")
    args = parser.parse_args()
    if args.child:
        args.impl = args.child
        child(args)
        return
    OUT.mkdir(exist_ok=True)
    data = OUT / f"flan_{args.rows}.jsonl"
    if not data.exists():
        generate(data, args.rows)
    tokenizer = OUT / "tokenizer" / "tokenizer.json"
    ensure_tokenizer(data, tokenizer)
    record = {
        "date": date.today().isoformat(),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{__import__('os').cpu_count()} cores",
        "rows": args.rows,
        "file_mib": data.stat().st_size / 2**20,
    }
    for label, tok in (("without_tokens", None), ("with_tokens", tokenizer)):
        ours = measure("postforge", data, tok, args.rows)
        theirs = measure("pandas", data, tok, args.rows)
        record[label] = {
            "postforge": ours,
            "pandas": theirs,
            "speedup": theirs["seconds"] / ours["seconds"],
            "identical_stats": same_stats(Path(ours["stats"]), Path(theirs["stats"])),
        }
        print(label, json.dumps(record[label], indent=1), flush=True)
    record["token_counting"] = token_throughput(data, tokenizer)
    print(json.dumps(record["token_counting"], indent=1))
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
