"""``postforge``: the command line, thin over the same functions the assets call.

Bad input never produces a traceback: a whole input that cannot be read is one line on stderr
and exit status 2; unreadable rows are written to ``rejected.parquet`` and the run succeeds.

``ingest``, ``profile`` and ``curate`` own their ``--out`` folder: a run writes all its files
into a fresh folder beside it and swaps that in whole (curation.folders), so a later command
never reads one run's conversations beside another run's preferences, whether the earlier run
was killed half-way or simply wrote fewer files. A run replaces only a folder that is new,
empty or holds exactly what an earlier run of the same command recorded in
``postforge_outputs.json``; anything else there (another command's outputs included) is refused
(exit 2) rather than deleted.

``ingest --format hf`` reads hub ids offline (from the Hugging Face cache) unless told
``--allow-hub``: a mistyped local folder must not turn into half a minute of requests to the hub.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_JUDGE_FAILED = 3  # judge: outputs written, but more sets failed than --max-error-share
JUDGE_KEY_ENV = "POSTFORGE_JUDGE_API_KEY"
OUTPUTS_RECORD = "postforge_outputs.json"  # what a run wrote into --out, so the next may replace it
# Only run_demo imports dagster (and assets/, which import it): the other commands start
# without it, which saves about a second on every run.
PROJECT_ROOT = Path(__file__).resolve().parents[1]


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
    ingest.add_argument("--split", help="--format hf only: the split to read (default: train)")
    ingest.add_argument(
        "--allow-hub",
        action="store_true",
        help=(
            "--format hf only: let a hub id be downloaded from the Hugging Face Hub (default: "
            "offline, a hub id is read only from the local Hugging Face cache)"
        ),
    )
    ingest.set_defaults(handler=run_ingest)

    profile = commands.add_parser("profile", help="length profile of an ingested folder")
    profile.add_argument("input", type=Path, metavar="DIR")
    profile.add_argument("--out", required=True, type=Path)
    profile.add_argument("--tokenizer", help="tokenizer.json or its folder (default: train a BPE)")
    profile.add_argument(
        "--vocab-size",
        type=_vocab_size,
        default=4096,
        help="vocabulary of the BPE trained when no --tokenizer is given (default 4096, min 260)",
    )
    profile.set_defaults(handler=run_profile)

    curate = commands.add_parser("curate", help="filter an ingested folder; write training sets")
    curate.add_argument("input", type=Path, metavar="IN_DIR")
    curate.add_argument("--out", required=True, type=Path)
    curate.add_argument("--config", type=Path, help="YAML or JSON: filter sections and settings")
    curate.add_argument("--tokenizer", help="tokenizer.json or its folder (default: train a BPE)")
    curate.add_argument(
        "--eval-fraction",
        type=_eval_fraction,
        default=0.05,
        metavar="SHARE",
        help=(
            "share of each dataset's rows (by a hash of the row id) held out in its test split: "
            "0 <= SHARE < 1 (default 0.05)"
        ),
    )
    curate.set_defaults(handler=run_curate)

    trace = commands.add_parser(
        "trace",
        help="lineage: a checkpoint back to its datasets and raw rows, or one raw row forward",
    )
    trace.add_argument(
        "checkpoint", nargs="?", type=Path, metavar="CHECKPOINT_DIR", help="checkpoint to trace"
    )
    trace.add_argument(
        "--row",
        metavar="ID",
        help="follow one raw row instead: our row id, the source's own id, or FILE:LINE",
    )
    trace.add_argument(
        "--outputs",
        type=Path,
        default=default_outputs(),
        help="the pipeline's outputs folder (default: $POSTFORGE_OUTPUTS or outputs/)",
    )
    trace.add_argument("--json", action="store_true", help="print the report as JSON")
    trace.set_defaults(handler=run_trace)

    judge = commands.add_parser(
        "judge",
        help="rank candidate answers with a judge; write rankings and preference pairs",
        description=(
            "Rank IN_DIR/candidates.parquet with a judge and write rankings.parquet, "
            "preferences.parquet and summary.json to --out. Exit status: 0 done; "
            f"{EXIT_BAD_INPUT} bad input or an unusable endpoint (nothing judged); "
            f"{EXIT_JUDGE_FAILED} outputs written, but the judge failed on more candidate sets "
            "than --max-error-share allows (re-run: answered calls are cached, so it pays only "
            "for the failed sets)."
        ),
    )
    judge.add_argument(
        "input", type=Path, metavar="IN_DIR", help="folder holding candidates.parquet"
    )
    judge.add_argument("--out", required=True, type=Path)
    judge.add_argument(
        "--config", type=Path, help="YAML: judge settings (curation.judge.JudgeConfig) and pairs"
    )
    judge.add_argument("--base-url", help="OpenAI-compatible endpoint (default: offline judge)")
    judge.add_argument("--model", help="model name the endpoint serves (needs --base-url)")
    judge.add_argument(
        "--concurrency",
        type=_positive_int,
        help="requests in flight at once (needs --base-url)",
    )
    judge.add_argument(
        "--max-error-share",
        type=_share,
        default=0.0,
        metavar="SHARE",
        help=(
            "largest share (0..1) of candidate sets the judge may fail on (HTTP errors after "
            f"retries, timeouts) before the exit status is {EXIT_JUDGE_FAILED} (default 0: any)"
        ),
    )
    judge.add_argument(
        "--api-key-env",
        metavar="NAME",
        help=(
            f"environment variable holding the API key (default {JUDGE_KEY_ENV}); a local "
            "server needs none"
        ),
    )
    judge.set_defaults(handler=run_judge)

    demo = commands.add_parser("demo", help="materialize the whole asset graph on embedded data")
    demo.set_defaults(handler=run_demo)
    return parser


def replace_outputs(
    out: Path, command: str, write: Callable[[Path], None], inputs: Sequence[Path] = ()
) -> None:
    """Run ``write`` on an empty folder that then replaces ``out`` whole (see the module
    docstring); ``inputs``: what the run reads, which must not lie in ``out``."""
    import json

    from curation.folders import replace_folder

    check_out(out, command, inputs)

    def fill(folder: Path) -> None:
        write(folder)
        record = {"command": command, "outputs": sorted(p.name for p in folder.iterdir())}
        (folder / OUTPUTS_RECORD).write_text(json.dumps(record, indent=2) + "\n")

    replace_folder(out.resolve(), fill)


def check_out(out: Path, command: str, inputs: Sequence[Path] = ()) -> None:
    """BadInput unless a run of ``command`` may replace ``out``. Commands call it before their
    work, so a refused run stops at once; ``replace_outputs`` again just before the swap. The
    outputs of another command are refused too: ``ingest --out`` a curate folder would delete
    the curated datasets, where the user most likely mistyped a folder."""
    from curation.folders import sweep_folder

    target = out.resolve()
    if target.parent == target or target == Path.cwd() or target in Path.cwd().parents:
        raise BadInput(f"--out {out}: give a folder of its own (it is replaced as a whole)")
    for source in inputs:
        if source.resolve() == target or target in source.resolve().parents:
            raise BadInput(f"--out {out}: holds the input {source}; write to another folder")
    sweep_folder(target)  # first: a run killed mid-swap left the previous outputs aside
    if target.exists() and not target.is_dir():
        raise BadInput(f"--out {out}: exists and is not a folder")
    recorded = _recorded_command(target)
    if recorded is not None and recorded != command:
        raise BadInput(
            f"--out {out}: holds the outputs of `postforge {recorded}` ({OUTPUTS_RECORD}), "
            f"which `postforge {command}` would delete; give another folder, or remove "
            f"{out} first if you no longer need them"
        )
    foreign = _foreign_entries(target)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if foreign[5:] else "")
        raise BadInput(
            f"--out {out}: holds files no postforge run recorded writing there ({shown}); "
            "give a new or empty folder, or remove them"
        )


def _recorded_command(folder: Path) -> str | None:
    """The command ``folder``'s outputs record names as their writer (None: no record)."""
    import json

    try:
        record = json.loads((folder / OUTPUTS_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    command = record.get("command") if isinstance(record, dict) else None
    return command if isinstance(command, str) else None


def _foreign_entries(folder: Path) -> list[str]:
    """What ``folder`` holds beyond the outputs its record lists (everything, without one)."""
    import json

    if not folder.is_dir():
        return []
    entries = {p.name for p in folder.iterdir()}
    try:
        record = json.loads((folder / OUTPUTS_RECORD).read_text(encoding="utf-8"))
        ours = {OUTPUTS_RECORD, *record["outputs"]}
    except (OSError, ValueError, KeyError, TypeError):
        ours = set()
    return sorted(entries - ours)


def run_ingest(args: argparse.Namespace) -> int:
    from curation.ingest import ReadOptions, ingest
    from curation.readers.generic import ColumnMappingError, HubOffline

    columns = {}
    for item in args.column:
        canonical, sep, column = item.partition("=")
        if not sep or not canonical or not column:
            raise BadInput(f"--column {item!r}: expected CANONICAL=INPUT")
        columns[canonical] = column
    if args.format != "hf":
        for flag, given in (("--split", args.split is not None), ("--allow-hub", args.allow_hub)):
            if given:
                raise BadInput(f"{flag} applies only to --format hf")
    elif not args.allow_hub:
        # Read by huggingface_hub and datasets when first imported, which is below.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
    split = args.split if args.split is not None else "train"
    options = ReadOptions(source=args.source, columns=columns, split=split)
    inputs = [Path(p) for p in args.inputs if Path(p).exists()]  # not hub ids
    check_out(args.out, "ingest", inputs)
    try:
        result = ingest(args.format, args.inputs, options)
    except ColumnMappingError as error:
        raise error.naming("--column CANONICAL=INPUT") from None
    except HubOffline as error:
        raise BadInput(f"{error}; pass --allow-hub to download it from the hub") from None

    def write(out: Path) -> None:
        result.conversations.write_parquet(out / "conversations.parquet")
        if result.preferences.height:
            result.preferences.write_parquet(out / "preferences.parquet")
        result.rejected.write_parquet(out / "rejected.parquet")
        if result.ledger.height:
            result.ledger.write_parquet(out / "ledger.parquet")

    replace_outputs(args.out, "ingest", write, inputs)
    print(f"ingested {args.format}: {result.summary()} -> {args.out}")
    return 0


def run_profile(args: argparse.Namespace) -> int:

    from curation.profile import profile, write_profile
    from curation.tokens import TokenCounter

    check_out(args.out, "profile", [args.input])
    conversations = _read_ingested(args.input, "conversations")["conversations"]
    tokenizer = _tokenizer(args.tokenizer, conversations, args.vocab_size)
    result = profile(conversations, TokenCounter(tokenizer))
    written: dict[str, Path] = {}
    replace_outputs(
        args.out, "profile", lambda out: written.update(write_profile(result, out)), [args.input]
    )
    print(result.table("tokens"))
    print(f"profiled {conversations.height} conversations -> {args.out} ({len(written)} files)")
    return 0


def _read_ingested(folder: Path, *names: str) -> dict:
    """The tables ``names`` (the first required) of an ingested folder, all from the same
    ingest run even while another run replaces the folder."""
    from curation.folders import read_tables

    try:
        tables = read_tables(folder, names)
    except FileNotFoundError:
        tables = {}
    except ValueError as error:  # names the damaged file
        raise BadInput(str(error)) from None
    if names[0] not in tables:
        source = folder / f"{names[0]}.parquet"
        raise BadInput(f"{source}: no such file (run `postforge ingest --out {folder}` first)")
    return tables


def _tokenizer(path: str | None, conversations, vocab_size: int = 4096):
    from training.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer

    if path:
        try:
            return load_tokenizer(path)
        except Exception as error:  # tokenizers raises bare Exceptions for bad files
            raise BadInput(f"{path}: cannot load tokenizer ({error})") from None
    return train_tokenizer(_tokenizer_corpus(conversations), TokenizerConfig(vocab_size=vocab_size))


def run_curate(args: argparse.Namespace) -> int:
    from curation.curate import ConfigError, build_filters, curate
    from curation.datasets import ExportConfig, export, preference_rows, prompt_rows, sft_rows
    from curation.preferences import curate_preferences
    from curation.tokens import TokenCounter

    check_out(args.out, "curate", [args.input])
    settings = _load_config(args.config) if args.config else {}
    try:  # the whole config, before reading anything or training a tokenizer
        build_filters(settings)
    except ConfigError as error:
        raise BadInput(f"{args.config}: {error}") from None
    ingested = _read_ingested(args.input, "conversations", "preferences")
    conversations = ingested["conversations"]
    filters = build_filters(settings, TokenCounter(_tokenizer(args.tokenizer, conversations)))
    result = curate(conversations, filters)
    pairs = None
    if "preferences" in ingested:
        pairs = curate_preferences(ingested["preferences"], filters)
    export_config = ExportConfig(eval_fraction=args.eval_fraction)

    def write(out: Path) -> None:
        result.curated.write_parquet(out / "curated.parquet")
        result.ledger.write_parquet(out / "ledger.parquet")
        result.states.write_parquet(out / "states.parquet")
        export("sft", sft_rows(result.curated), out / "datasets", export_config)
        export("prompt", prompt_rows(result.curated), out / "datasets", export_config)
        if pairs is not None:
            pairs.curated.write_parquet(out / "curated_preferences.parquet")
            pairs.ledger.write_parquet(out / "preference_ledger.parquet")
            pairs.states.write_parquet(out / "preference_states.parquet")
            export("preference", preference_rows(pairs.curated), out / "datasets", export_config)

    out = args.out
    replace_outputs(out, "curate", write, [args.input])
    for rule, verdict, rows in result.rule_counts().iter_rows():
        print(f"  {rule:<32} {verdict:<8} {rows}")
    counts = " ".join(f"{k}={v}" for k, v in result.counts().items())
    curated = f"curated {conversations.height} conversations: {counts}"
    if pairs is not None:
        pair_counts = " ".join(f"{k}={v}" for k, v in pairs.counts().items())
        curated += f"; {ingested['preferences'].height} preference pairs: {pair_counts}"
    print(f"{curated} -> {out}")
    return 0


def _load_config(path: Path) -> dict:
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except yaml.YAMLError as error:
        raise BadInput(f"{path}: not valid YAML/JSON ({error})") from None
    if not isinstance(loaded, dict):
        raise BadInput(
            f"{path}: expected a mapping of filter sections, got {type(loaded).__name__}"
        )
    return loaded


def _tokenizer_corpus(conversations) -> list[str]:
    """The embedded pretraining corpus when present (what the demo trains on), else the texts
    being profiled."""
    import polars as pl

    from training.tokenizer import corpus_texts

    # assets.resources.SAMPLES, named here because importing assets imports dagster
    embedded = PROJECT_ROOT / "data" / "samples" / "pretrain.jsonl"
    if embedded.exists():
        return list(corpus_texts(embedded))
    contents = pl.col("messages").list.eval(pl.element().struct.field("content"))
    return conversations.select(contents.list.join("\n")).to_series().to_list()


def default_outputs() -> str:
    """The folder the pipeline writes to (as pipelines.definitions decides), without importing
    Dagster, so a trace starts fast."""
    return os.environ.get("POSTFORGE_OUTPUTS", str(PROJECT_ROOT / "outputs"))


def run_trace(args: argparse.Namespace) -> int:
    import json

    from curation.trace import (
        TraceError,
        format_checkpoint_trace,
        format_row_trace,
        trace_checkpoint,
        trace_row,
    )

    if (args.checkpoint is None) == (args.row is None):
        raise BadInput("give either CHECKPOINT_DIR or --row ID (one of them)")
    if "://" in str(args.outputs):
        raise BadInput(f"--outputs {args.outputs}: trace reads a local folder; copy it here first")
    try:
        if args.row is not None:
            report = trace_row(args.row, args.outputs)
            text = format_row_trace
        else:
            report = trace_checkpoint(args.checkpoint, args.outputs)
            text = format_checkpoint_trace
    except TraceError as error:
        raise BadInput(str(error)) from None
    print(json.dumps(report, indent=2) if args.json else text(report))
    return 0


def run_judge(args: argparse.Namespace) -> int:
    """Judge settings come from --config and the flags; the key only from the environment."""
    import json

    from curation.feedback.pairs import PairsConfig, rankings_to_pairs
    from curation.feedback.schema import read_candidates
    from curation.judge import JudgeEndpointError
    from curation.judge.tables import error_share_report, judge_candidates
    from curation.storage import write_parquet

    if args.input.exists() and not args.input.is_dir():
        raise BadInput(
            f"{args.input}: not a folder; give IN_DIR, the folder holding candidates.parquet"
        )
    source = args.input / "candidates.parquet"
    if not source.exists():
        raise BadInput(f"{source}: no such file (expected IN_DIR/candidates.parquet)")
    settings = _load_config(args.config) if args.config else {}
    key_env = args.api_key_env or JUDGE_KEY_ENV
    where = str(args.config) if args.config else "judge settings"
    try:
        pairs_config = PairsConfig.from_settings(settings.pop("pairs", None))
        judge = _build_judge(judge_settings(settings, args), os.environ.get(key_env) or None)
    except (TypeError, ValueError) as error:
        raise BadInput(f"{where}: {error}") from None
    try:
        candidates = read_candidates(source)
    except (OSError, ValueError) as error:
        message = str(error)
        raise BadInput(message if str(source) in message else f"{source}: {message}") from None
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        rankings = judge_candidates(candidates, judge)
    except JudgeEndpointError as error:
        message = str(error)
        if error.no_key:
            state = "empty" if key_env in os.environ else "unset"
            message += f": the key is read from the environment variable {key_env}, now {state}"
        raise BadInput(message) from None
    pairs = rankings_to_pairs(rankings, candidates, pairs_config)
    errors, problem = error_share_report(rankings, args.max_error_share)
    write_parquet(rankings, args.out / "rankings.parquet")
    write_parquet(pairs.pairs, args.out / "preferences.parquet")
    summary = {
        "judge": judge.name,
        **getattr(judge, "summary", {}),
        **errors,
        "pairs": pairs.counts,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    statuses = dict(rankings.group_by("status").len().iter_rows())
    print(
        f"judged {rankings.height} candidate sets with {judge.name} ({statuses}); "
        f"{pairs.pairs.height} pairs -> {args.out}"
    )
    if problem is not None:
        print(f"postforge judge: error: {problem}", file=sys.stderr)
        return EXIT_JUDGE_FAILED
    return 0


JUDGE_CACHE = "judge_cache.sqlite"
PANEL_KEYS = ("panel", "vote", "weights")  # what a panel's settings hold beside its members


def judge_settings(settings: dict, args: argparse.Namespace) -> dict:
    """The settings ``build_judge`` takes, from the config file and the flags, checked the same
    way whatever the judge: a setting or flag the chosen judge would not use is refused rather
    than ignored (a typo must not quietly switch to the offline judge, or an endpoint judge run
    without the answer cache). Every endpoint judge, a panel's members included, caches its
    answers in ``--out``/judge_cache.sqlite: the cache key holds the model, template, messages
    and sampling, so members share the file without sharing answers (``_shared_answers``
    refuses the one case where they would)."""
    flags = {"--base-url": "base_url", "--model": "model", "--concurrency": "max_concurrency"}
    given = {flag: key for flag, key in flags.items() if getattr(args, key_attr(key)) is not None}
    cache = str(args.out / JUDGE_CACHE)
    if "panel" in settings:
        if given:
            raise BadInput(
                f"{', '.join(given)}: a panel names each member's endpoint and settings in "
                "--config (panel: [...]); give them there"
            )
        beside = sorted(set(settings) - set(PANEL_KEYS), key=str)
        if beside:
            raise ValueError(
                f"{beside} beside panel would apply to no judge: a panel takes only "
                f"{list(PANEL_KEYS)}; put judge settings in each member"
            )
        members = settings["panel"]
        if not isinstance(members, list) or not members:
            raise ValueError("panel: expected a list of judge settings, one per member")
        checked = []
        for index, member in enumerate(members):
            if not isinstance(member, dict):
                raise ValueError(
                    f"panel[{index}]: expected a mapping of judge settings, "
                    f"got {type(member).__name__}"
                )
            member = dict(member)
            try:
                _check_endpoint_settings(member)
            except ValueError as error:
                raise ValueError(f"panel[{index}]: {error}") from None
            if _has_endpoint(member):
                member.setdefault("cache_path", cache)
            checked.append(member)
        return {**settings, "panel": checked}
    settings = {**settings, **{key: getattr(args, key_attr(key)) for key in given.values()}}
    if not _has_endpoint(settings):
        endpoint_flags = [*given, *(["--api-key-env"] if args.api_key_env else [])]
        if endpoint_flags:
            raise BadInput(
                f"{', '.join(endpoint_flags)}: only for an endpoint judge; give --base-url "
                "(without an endpoint the offline judge ranks, and would ignore them)"
            )
    _check_endpoint_settings(settings)
    if _has_endpoint(settings):
        settings.setdefault("cache_path", cache)
    return settings


def key_attr(setting: str) -> str:
    """The argparse attribute of the flag for a judge setting."""
    return "concurrency" if setting == "max_concurrency" else setting


def _has_endpoint(settings: dict) -> bool:
    return settings.get("backend", "openai" if "base_url" in settings else "offline") == "openai"


def _check_endpoint_settings(settings: dict) -> None:
    """ValueError for an unknown setting, or a known one given to the offline judge, which
    takes none of them."""
    from dataclasses import fields

    from curation.judge.config import JudgeConfig

    known = {f.name for f in fields(JudgeConfig)}
    unknown = sorted(set(settings) - known - {"backend"}, key=str)
    if unknown:
        raise ValueError(f"unknown judge setting(s) {unknown}; known: {sorted(known)}")
    if not _has_endpoint(settings) and settings.get("backend", "offline") == "offline":
        ignored = sorted(set(settings) - {"backend"})
        if ignored:
            raise ValueError(
                f"{ignored}: settings of an endpoint judge, but no endpoint is given (base_url "
                "or --base-url), so the offline judge would rank and ignore them; give the "
                "endpoint or remove them"
            )


def _build_judge(settings: dict, api_key: str | None):
    """``build_judge``, with a panel's member errors naming the member."""
    from curation.judge.tables import build_judge

    if "panel" in settings:
        for index, member in enumerate(settings["panel"]):
            try:
                build_judge(member, api_key)
            except (TypeError, ValueError) as error:
                raise ValueError(f"panel[{index}]: {error}") from None
    judge = build_judge(settings, api_key=api_key)
    _shared_answers(judge)
    return judge


def _shared_answers(judge) -> None:
    """BadInput when two panel members on different endpoints would read each other's cached
    answers: the cache key leaves the base URL out (a model moved to another host keeps its
    answers), so two servers that serve different models under one name, asked alike, share
    keys. Members that differ in model, template or sampling never do."""
    from itertools import combinations

    from curation.judge.client import OpenAIJudge, answer_namespace
    from curation.judge.config import redact_url

    members = [j for j in getattr(judge, "judges", []) if isinstance(j, OpenAIJudge)]
    for first, second in combinations(members, 2):
        a, b = first.config, second.config
        if (
            a.cache_path is not None
            and a.cache_path == b.cache_path
            and a.base_url != b.base_url
            # the cache key's own parts: messages can coincide however the prompts are shaped
            and answer_namespace(a) == answer_namespace(b)
        ):
            raise BadInput(
                f"panel members {first.name!r} ({redact_url(a.base_url)}) and {second.name!r} "
                f"({redact_url(b.base_url)}) ask model {a.model!r} alike, so they would share "
                f"cached answers in {a.cache_path}; give one of them its own cache_path"
            )


def _positive_int(text: str) -> int:
    """An argparse type: a whole number above 0."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a whole number above 0, got {text!r}")
    return value


def _eval_fraction(text: str) -> float:
    """An argparse type: a share from 0 up to, not including, 1 (1 would leave no train rows)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(
            f"expected a share with 0 <= SHARE < 1 (1 leaves no train rows), got {text!r}"
        )
    return value


def _vocab_size(text: str) -> int:
    """An argparse type: a vocabulary the BPE trainer can make."""
    from training.tokenizer import MIN_VOCAB_SIZE

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < MIN_VOCAB_SIZE:
        raise argparse.ArgumentTypeError(
            f"expected a whole number >= {MIN_VOCAB_SIZE} (the 256 byte tokens and the special "
            f"tokens every byte-level BPE holds), got {text!r}"
        )
    return value


def _share(text: str) -> float:
    """An argparse type: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


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
