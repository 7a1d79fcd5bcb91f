"""``postforge``: the command line, thin over the same functions the assets call.

Bad input never produces a traceback: a whole input that cannot be read is one line on stderr
and exit status 2; unreadable rows are written to ``rejected.parquet`` and the run succeeds.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_BAD_INPUT = 2


class BadInput(Exception):
    """A problem with what the user gave us, reported as one line."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from curation.errors import SourceError

    try:
        return args.handler(args)
    except (SourceError, BadInput) as error:
        print(f"postforge {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


def build_parser() -> argparse.ArgumentParser:
    from curation.ingest import READERS

    parser = argparse.ArgumentParser(prog="postforge", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    ingest = commands.add_parser("ingest", help="read raw files into canonical Parquet tables")
    ingest.add_argument("--format", required=True, choices=sorted(READERS))
    ingest.add_argument("inputs", nargs="+", metavar="INPUT")
    ingest.add_argument("--out", required=True, type=Path)
    ingest.add_argument("--source", help="name for the source column (default: the format)")
    ingest.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="CANONICAL=INPUT",
        help="column mapping for generic formats, e.g. --column prompt=question",
    )
    ingest.add_argument("--split", default="train", help="split for --format hf")
    ingest.set_defaults(handler=run_ingest)

    profile = commands.add_parser("profile", help="length profile of an ingested folder")
    profile.add_argument("input", type=Path, metavar="DIR")
    profile.add_argument("--out", required=True, type=Path)
    profile.add_argument("--tokenizer", help="tokenizer.json or its folder (default: train a BPE)")
    profile.add_argument("--vocab-size", type=int, default=4096)
    profile.set_defaults(handler=run_profile)

    demo = commands.add_parser("demo", help="materialize the whole asset graph on embedded data")
    demo.set_defaults(handler=run_demo)
    return parser


def run_ingest(args: argparse.Namespace) -> int:
    from curation.ingest import ReadOptions, ingest
    from curation.storage import write_parquet

    columns = {}
    for item in args.column:
        canonical, sep, column = item.partition("=")
        if not sep or not canonical or not column:
            raise BadInput(f"--column {item!r}: expected CANONICAL=INPUT")
        columns[canonical] = column
    options = ReadOptions(source=args.source, columns=columns, split=args.split)
    result = ingest(args.format, args.inputs, options)
    args.out.mkdir(parents=True, exist_ok=True)
    write_parquet(result.conversations, args.out / "conversations.parquet")
    if result.preferences.height:
        write_parquet(result.preferences, args.out / "preferences.parquet")
    write_parquet(result.rejected, args.out / "rejected.parquet")
    if result.ledger.height:
        write_parquet(result.ledger, args.out / "ledger.parquet")
    print(f"ingested {args.format}: {result.summary()} -> {args.out}")
    return 0


def run_profile(args: argparse.Namespace) -> int:
    import polars as pl

    from curation.profile import profile, write_profile
    from curation.tokens import TokenCounter
    from training.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer

    source = args.input / "conversations.parquet"
    if not source.exists():
        raise BadInput(f"{source}: no such file (run `postforge ingest --out {args.input}` first)")
    conversations = pl.read_parquet(source)
    if args.tokenizer:
        try:
            tokenizer = load_tokenizer(args.tokenizer)
        except Exception as error:  # tokenizers raises bare Exceptions for bad files
            raise BadInput(f"{args.tokenizer}: cannot load tokenizer ({error})") from None
    else:
        tokenizer = train_tokenizer(
            _tokenizer_corpus(conversations), TokenizerConfig(vocab_size=args.vocab_size)
        )
    result = profile(conversations, TokenCounter(tokenizer))
    written = write_profile(result, args.out)
    print(result.table("tokens"))
    print(f"profiled {conversations.height} conversations -> {args.out} ({len(written)} files)")
    return 0


def _tokenizer_corpus(conversations) -> list[str]:
    """The embedded pretraining corpus when present (what the demo trains on), else the texts
    being profiled."""
    import polars as pl

    from assets.resources import SAMPLES
    from training.tokenizer import corpus_texts

    embedded = SAMPLES / "pretrain.jsonl"
    if embedded.exists():
        return list(corpus_texts(embedded))
    contents = pl.col("messages").list.eval(pl.element().struct.field("content"))
    return conversations.select(contents.list.join("\n")).to_series().to_list()


def run_demo(args: argparse.Namespace) -> int:
    from pipelines.instance import ensure_dagster_home

    home = ensure_dagster_home()
    import dagster as dg

    from pipelines.definitions import OUTPUTS, defs

    instance = dg.DagsterInstance.get()
    result = defs.resolve_job_def("demo").execute_in_process(instance=instance)
    if not result.success:
        raise BadInput("the demo run failed; see the run in the UI (make ui)")
    print(f"demo run {result.run_id} succeeded")
    print(f"  outputs:  {OUTPUTS}")
    print(f"  instance: {home} (DAGSTER_HOME)")
    print("  open the UI with `make ui`, then http://127.0.0.1:3000")
    return 0


if __name__ == "__main__":
    sys.exit(main())
