# Dagster reads these annotations at definition time: no "from __future__ import annotations".
"""Training assets: data mixtures, then each stage as a subprocess through Dagster Pipes (the
same command runs under ``accelerate launch`` or moves to Kubernetes with ``PipesK8sClient``),
all in the ``gpu`` pool so one stage holds the accelerator at a time."""

import base64
import functools
import io
import json
import os
import re
import shlex
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import polars as pl
import yaml
from pydantic import Field

from assets.io_manager import preview_markdown
from assets.resources import StorageResource, checkpoint_version, dataset_version, resolve
from curation.datasets import ExportConfig, export, sft_rows, split_expr
from curation.mixing import EOS_PER_DOCUMENT, MixConfig, Mixture, mix
from curation.storage import write_parquet
from curation.synthetic import SyntheticTask, check_answer, generate_tasks
from curation.tokens import TokenCounter
from training.checkpoint import METRICS, read_lineage
from training.recipe import RecipeError, build, read_recipe
from training.reporting import read_metrics
from training.runs import last_run_checkpoint, lineage_sha256
from training.stages import FAILURE_FILE_ENV, check_recipe
from training.tokenizer import load_tokenizer, to_transformers

GROUP = "training"
POOL = "gpu"


@dataclass(frozen=True)
class MixingRecipe:
    """The recipe's ``mixing`` section.

    Attributes:
        pretrain_instruction_share: share of instruction tokens mixed into pretraining.
        decay_shares: ``pretrain`` and ``instruction`` shares of the decay-phase mixture.
        decay_tokens: size of the decay-phase mixture in tokens.
        seed: order of documents.
    """

    pretrain_instruction_share: float = 0.0
    decay_shares: dict[str, float] = field(
        default_factory=lambda: {"pretrain": 0.7, "instruction": 0.3}
    )
    decay_tokens: int = 40_000
    seed: int = 0

    def __post_init__(self) -> None:
        # the pretraining mixture keeps every pretraining token and scales the total by
        # 1 / (1 - share), so a share of 1 would ask for an infinite mixture
        if not 0.0 <= self.pretrain_instruction_share < 1.0:
            raise ValueError(
                f"pretrain_instruction_share: {self.pretrain_instruction_share} is not in "
                "[0, 1); pretraining needs some pretraining text"
            )


DEFAULT_RECIPE = "recipes/tiny-cpu.yaml"
RECIPE_TAG = "postforge/recipe"  # the run tag that says which recipe trained its checkpoints


class RecipeResource(dg.ConfigurableResource):
    """The training recipe of a run: every stage a run launches reads the same file. Chosen in
    the launch form (resources, ``recipe``, ``path``); automated runs use POSTFORGE_RECIPE.
    The whole recipe is checked (every section's keys and types) before an asset uses it, so a
    typo in a late stage's section fails the run before the early stages spend their time."""

    path: str = Field(default=DEFAULT_RECIPE, description="Recipe YAML (project-relative).")

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # Automated runs are tagged with POSTFORGE_RECIPE; a recipe set in the launch form
        # must not run under that tag, so the tag follows the recipe actually used.
        run, instance = context.dagster_run, context.instance
        if run is not None and instance is not None and run.tags.get(RECIPE_TAG) != self.path:
            instance.add_run_tags(run.run_id, {RECIPE_TAG: self.path})

    def section(self, name: str) -> dict:
        self.check()
        return dict(read_recipe(resolve(self.path)).get(name) or {})

    def check(self) -> None:
        file = resolve(self.path)
        stamp = file.stat().st_mtime_ns if file.exists() else None
        _checked_recipe(str(file), stamp)


@functools.lru_cache(maxsize=8)
def _checked_recipe(path: str, stamp: int | None) -> None:
    """Once per file version and process: checking imports every stage's config class."""
    try:
        check_recipe(path, {"mixing": MixingRecipe})
    except RecipeError as error:
        raise dg.Failure(description=f"recipe: {error}") from None


def counted(texts: pl.DataFrame, counter: TokenCounter) -> pl.DataFrame:
    return texts.with_columns(tokens=pl.Series(counter(texts["text"].to_list()), dtype=pl.Int64))


def rendered_instructions(curated: pl.DataFrame, tokenizer_path: Path) -> pl.DataFrame:
    """Instruction conversations as chat-template text, so they mix with pretraining text."""
    chat = to_transformers(load_tokenizer(tokenizer_path))
    rows = sft_rows(curated)
    texts = [chat.apply_chat_template(m, tokenize=False) for m in rows["messages"].to_list()]
    return rows.select("id", "source").with_columns(text=pl.Series(texts, dtype=pl.String))


MIXTURE_EVAL_FRACTION = 0.02  # held-out documents for the stages' eval loss


def mixture_asset(name: str, storage: StorageResource, mixture: Mixture) -> dg.MaterializeResult:
    """Export a mixture mixed split by split (``MixConfig.eval_fraction``): the export's id hash
    puts every row in the split it was mixed for, which is checked, so the train split training
    reads has the exact shares reported."""
    rows = mixture.rows.select("id", "source", "text", "tokens")
    summary = export(
        name, rows, storage.path("datasets"), ExportConfig(eval_fraction=MIXTURE_EVAL_FRACTION)
    )
    mixed = dict(mixture.rows.group_by("split").len().iter_rows())
    if summary["rows"] != {s: mixed.get(s, 0) for s in ("train", "test")}:
        raise dg.Failure(
            description=f"{name}: exported splits {summary['rows']} differ from the splits it "
            f"was mixed for {mixed}"
        )
    train = mixture.report.filter(pl.col("split") == "train")
    return dg.MaterializeResult(
        metadata={
            "target_shares": dict(zip(train["source"], train["target_share"], strict=True)),
            # tokens as the train split's packing sees them: text tokens plus one EOS a document
            "achieved": dg.MetadataValue.md(preview_markdown(mixture.report, 20)),
            "achieved_train_shares": dict(
                zip(train["source"], train["achieved_share"], strict=True)
            ),
            "train_tokens": int(train["tokens"].sum()),
            "tokens": int(mixture.report["tokens"].sum()),
            "train_rows": summary["rows"]["train"],
            "test_rows": summary["rows"]["test"],
            "path": dg.MetadataValue.path(summary["path"]),
        },
        data_version=dataset_version(summary["path"]),
    )


def tokens_by_split(rows: pl.DataFrame, share: float) -> dict[str, int]:
    """Per split, the tokens (EOS included) of a mixture that keeps every token of ``rows`` and
    gives them ``1 - share`` of it (rounded down: at worst a token of one document is cut,
    rather than a document repeated for a token)."""
    cost = pl.col("tokens") + EOS_PER_DOCUMENT
    split = rows.with_columns(split=split_expr(MIXTURE_EVAL_FRACTION))
    return {
        s: int(split.filter(pl.col("split") == s).select(cost.sum()).item() / (1.0 - share))
        for s in ("train", "test")
    }


@dg.asset(group_name=GROUP, deps=["project_tokenizer"], kinds={"polars"})
def pretrain_mixture(
    recipe: RecipeResource,
    storage: StorageResource,
    pretrain_corpus: pl.DataFrame,
    curated_conversations: pl.DataFrame,
) -> dg.MaterializeResult:
    """Stable-phase data: pretraining text, with instruction data mixed in at the recipe's share
    (0 by default: MiniCPM keeps instructions for the decay phase)."""
    mixing = build(MixingRecipe, recipe.section("mixing"), f"{recipe.path}: mixing")
    tokenizer_path = storage.path("project_tokenizer")
    counter = TokenCounter(load_tokenizer(tokenizer_path))
    pretrain = counted(pretrain_corpus.select("id", "source", "text"), counter)
    share = mixing.pretrain_instruction_share
    sources = {"pretrain": pretrain}
    shares = {"pretrain": 1.0 - share}
    if share > 0:
        sources["instruction"] = counted(
            rendered_instructions(curated_conversations, tokenizer_path), counter
        )
        shares["instruction"] = share
    split_tokens = tokens_by_split(pretrain, share)
    config = MixConfig(
        proportions=shares,
        total_tokens=sum(split_tokens.values()),
        seed=mixing.seed,
        eval_fraction=MIXTURE_EVAL_FRACTION,
        test_tokens=split_tokens["test"],
    )
    return mixture_asset("pretrain_mixture", storage, mix(sources, config))


@dg.asset(group_name=GROUP, deps=["project_tokenizer"], kinds={"polars"})
def decay_mixture(
    recipe: RecipeResource,
    storage: StorageResource,
    pretrain_corpus: pl.DataFrame,
    curated_conversations: pl.DataFrame,
) -> dg.MaterializeResult:
    """Decay-phase data: pretraining text and instruction data at exact token shares."""
    mixing = build(MixingRecipe, recipe.section("mixing"), f"{recipe.path}: mixing")
    tokenizer_path = storage.path("project_tokenizer")
    counter = TokenCounter(load_tokenizer(tokenizer_path))
    sources = {
        "pretrain": counted(pretrain_corpus.select("id", "source", "text"), counter),
        "instruction": counted(
            rendered_instructions(curated_conversations, tokenizer_path), counter
        ),
    }
    config = MixConfig(
        proportions=mixing.decay_shares,
        total_tokens=mixing.decay_tokens,
        seed=mixing.seed,
        eval_fraction=MIXTURE_EVAL_FRACTION,
    )
    return mixture_asset("decay_mixture", storage, mix(sources, config))


def loss_plot(metrics: list[dict], title: str) -> str:
    """The loss curve as an inline PNG for the asset's metadata."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(m["step"], m["loss"]) for m in metrics if "loss" in m and "step" in m]
    figure, axis = plt.subplots(figsize=(6, 3.2), dpi=100)
    if points:
        axis.plot(*zip(*points, strict=True), marker=".")
    axis.set_xlabel("step")
    axis.set_ylabel("training loss")
    axis.set_title(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return f"![loss](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()})"


DATA_VERSION_TAG = "dagster/data_version"  # where Dagster records a materialization's version


def described_inputs(context: dg.AssetExecutionContext, inputs: dict) -> dict:
    """The stage's ``inputs`` as its lineage.json records them: the dataset asset it reads with
    the data version and train rows of that asset's latest materialization (the one on disk)."""
    name = inputs.get("asset")
    event = context.instance.get_latest_materialization_event(dg.AssetKey(name)) if name else None
    if event is None or event.asset_materialization is None:
        return inputs
    materialization = event.asset_materialization
    rows = materialization.metadata.get("train_rows")
    return {
        **inputs,
        "data_version": materialization.tags.get(DATA_VERSION_TAG),
        "train_rows": rows.value if rows is not None else None,
    }


# What runs ``-m training <stage>``: this interpreter by default, or a multi-process launcher
# for several GPUs, e.g. "torchrun --nproc_per_node 8" or "accelerate launch --multi_gpu".
LAUNCHER_ENV = "POSTFORGE_LAUNCHER"


def launcher() -> list[str]:
    command = shlex.split(os.environ.get(LAUNCHER_ENV, ""))
    return command or [sys.executable]


def launch(
    context: dg.AssetExecutionContext,
    pipes: dg.PipesSubprocessClient,
    stage: str,
    section: dict,
    resolved: Path,
) -> dg.PipesClientCompletedInvocation:
    """Run ``python -m training <stage>`` (or ``$POSTFORGE_LAUNCHER -m training <stage>``) on
    ``section`` (written to ``resolved`` for the record and the command line). A failed stage
    fails the asset with the stage's own one-line reason, or, when the process was killed,
    with the signal and what it usually means."""
    resolved.parent.mkdir(parents=True, exist_ok=True)
    resolved.write_text(yaml.safe_dump({stage: section}, sort_keys=True), encoding="utf-8")
    failure = resolved.with_name(f"{resolved.stem}.failure.txt")
    failure.unlink(missing_ok=True)
    command = [*launcher(), "-m", "training", stage, "--config", str(resolved)]
    try:
        return pipes.run(command=command, context=context, env={FAILURE_FILE_ENV: str(failure)})
    except Exception as error:  # Dagster raises DagsterPipesExecutionError, not exported
        if not failure.exists() and "failed with code" not in str(error):
            raise
        runs = Path(section.get("output_dir") or resolved.parent) / "runs"
        raise dg.Failure(
            description=f"{stage} failed: {failure_reason(failure, str(error))}",
            metadata={
                "stage": stage,
                "config": dg.MetadataValue.path(str(resolved)),
                "last_good_save": last_run_checkpoint(runs) if runs.is_dir() else None,
            },
        ) from error


def failure_reason(failure: Path, pipes_error: str) -> str:
    """The stage's own line; else what its exit code says (a negative code is a signal)."""
    if failure.exists():
        return failure.read_text(encoding="utf-8").strip()
    found = re.search(r"code (-?\d+)", pipes_error)
    code = int(found.group(1)) if found else None
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        why = (
            " (most often the kernel's out-of-memory killer: host memory ran out; see `dmesg`)"
            if -code == signal.SIGKILL
            else ""
        )
        return f"the process was killed by {name}{why}"
    return pipes_error


# Where a stage starts from is the upstream asset's by default, but a recipe that names its
# own checkpoint is obeyed: "or any checkpoint the recipe names" holds under Dagster as it does
# for python -m training. lineage.json records it.
RECIPE_MAY_CHOOSE = ("init_from",)
# Not the tokenizer: the mixtures are counted, and cut to exact shares, in project_tokenizer's
# tokens, so another tokenizer would train on silently cut documents. Under Dagster a hub or
# local tokenizer is chosen in project_tokenizer's launch form instead.
PROJECT_OWNED = ("tokenizer",)


def launch_stage(
    context: dg.AssetExecutionContext,
    pipes: dg.PipesSubprocessClient,
    storage: StorageResource,
    recipe: RecipeResource,
    stage: str,
    settings: dict,
    folder: str = "checkpoints",
) -> tuple[dg.MaterializeResult, Path]:
    """The stage with the recipe's section as the base and the asset's settings (paths,
    inputs) winning, except where the stage starts from (``RECIPE_MAY_CHOOSE``); the resolved
    config is kept beside the run as ``stage.yaml``."""
    output_dir = storage.path(folder, stage)
    output_dir.mkdir(parents=True, exist_ok=True)
    if "inputs" in settings:
        settings = {**settings, "inputs": described_inputs(context, settings["inputs"])}
    own = recipe.section(stage)
    for key in PROJECT_OWNED:
        if own.get(key) and key in settings:
            raise dg.Failure(
                description=f"{recipe.path}: {stage}.{key}: under Dagster the {key} is the "
                "project_tokenizer asset's (its launch form's path takes a local path or a hub "
                "id), because the mixtures are counted in its tokens; remove it from the recipe"
            )
    for key in RECIPE_MAY_CHOOSE:
        if own.get(key) and key in settings and own[key] != settings[key]:
            context.log.info(f"{stage}: {key} from the recipe, {own[key]}, not {settings[key]}")
            settings = {k: v for k, v in settings.items() if k != key}
    section = {**own, **settings, "output_dir": str(output_dir)}
    completed = launch(context, pipes, stage, section, output_dir / "stage.yaml")
    return completed.get_materialize_result(), output_dir


def run_stage(
    context: dg.AssetExecutionContext,
    pipes: dg.PipesSubprocessClient,
    storage: StorageResource,
    recipe: RecipeResource,
    stage: str,
    settings: dict,
) -> dg.MaterializeResult:
    """A training stage whose product is a checkpoint: its lineage, loss curve and speed become
    the asset's metadata, those of the run that trained it; ``trained`` says whether that was
    this materialization or an earlier one whose checkpoint already answered the recipe, data
    and parent."""
    checkpoint = storage.path("checkpoints", stage, "checkpoint")
    before = lineage_sha256(checkpoint)
    result, output_dir = launch_stage(context, pipes, storage, recipe, stage, settings)
    lineage = read_lineage(checkpoint)
    version = checkpoint_version(checkpoint)
    trained = version is None or version.value != before
    if not trained:
        context.log.info(f"{stage}: reused {checkpoint}, trained {lineage.get('finished_at')}")
    records = checkpoint / METRICS
    metrics = read_metrics(records if records.exists() else output_dir / METRICS)
    speeds = [m["tokens_per_s"] for m in metrics if "tokens_per_s" in m]
    utilization = [m["mfu"] for m in metrics if "mfu" in m]  # recorded on a known GPU only
    return dg.MaterializeResult(
        metadata={
            **(result.metadata or {}),
            "checkpoint": dg.MetadataValue.path(str(checkpoint)),
            "loss_curve": dg.MetadataValue.md(loss_plot(metrics, f"{stage} loss")),
            "tokens_per_s": speeds[-1] if speeds else None,
            **({"mfu": utilization[-1]} if utilization else {}),
            "lineage": dg.MetadataValue.json(lineage_for_metadata(lineage)),
            "trained": trained,
            "recipe": recipe.path,
        },
        data_version=version,
    )


# Ids listed in a lineage (the rows a stage left out) beyond this many are counted in the
# asset's metadata, not copied: the event log keeps every materialization's metadata.
LISTED_IDS = 100


def lineage_for_metadata(lineage: dict) -> dict:
    """The lineage as the asset shows it: long id lists become a count and where to read them."""
    inputs = dict(lineage.get("inputs") or {})
    for key, value in inputs.items():
        if isinstance(value, list) and len(value) > LISTED_IDS:
            inputs[key] = f"{len(value)} ids, listed in the checkpoint's lineage.json"
    return {**lineage, "inputs": inputs}


def dataset_path(storage: StorageResource, name: str) -> str:
    return str(storage.path("datasets", name))


@dg.asset(
    group_name=GROUP, deps=["pretrain_mixture", "project_tokenizer"], pool=POOL, kinds={"pytorch"}
)
def base_checkpoint(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    storage: StorageResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    """Stable phase: a preset model trained on the pretraining mixture."""
    settings = {
        "stage": "pretrain",
        "data": dataset_path(storage, "pretrain_mixture"),
        "tokenizer": str(storage.path("project_tokenizer")),
        "inputs": {"asset": "pretrain_mixture"},
    }
    return run_stage(context, pipes_subprocess_client, storage, recipe, "pretrain", settings)


@dg.asset(group_name=GROUP, deps=["decay_mixture", base_checkpoint], pool=POOL, kinds={"pytorch"})
def midtrain_checkpoint(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    storage: StorageResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    """Decay phase: from the stable checkpoint (weights and optimizer), on the decay mixture."""
    settings = {
        "stage": "midtrain",
        "data": dataset_path(storage, "decay_mixture"),
        "init_from": str(storage.path("checkpoints", "pretrain", "checkpoint")),
        "inputs": {"asset": "decay_mixture"},
    }
    return run_stage(context, pipes_subprocess_client, storage, recipe, "midtrain", settings)


@dg.asset(group_name=GROUP, deps=["sft_dataset", midtrain_checkpoint], pool=POOL, kinds={"pytorch"})
def sft_checkpoint(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    storage: StorageResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    """Supervised fine-tuning through TRL from the midtrained checkpoint."""
    settings = {
        "data": dataset_path(storage, "sft"),
        "init_from": str(storage.path("checkpoints", "midtrain", "checkpoint")),
        "inputs": {"asset": "sft_dataset"},
    }
    return run_stage(context, pipes_subprocess_client, storage, recipe, "sft", settings)


class EvaluationConfig(dg.Config):
    tasks: int = Field(default=200, description="Synthetic tasks with checkable answers.")
    seed: int = Field(
        default=1234, description="Seed of the evaluation tasks (not the training ones)."
    )


@dg.asset(
    group_name=GROUP,
    deps=[base_checkpoint, midtrain_checkpoint, sft_checkpoint],
    pool=POOL,
    kinds={"pytorch"},
)
def training_evaluation(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    recipe: RecipeResource,
    storage: StorageResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    """Held-out loss and perplexity per stage, and exact-match accuracy on synthetic tasks
    (greedy decoding) that no stage trained on."""
    tasks = generate_tasks(config.tasks, seed=config.seed)
    folder = storage.path("evaluation")
    folder.mkdir(parents=True, exist_ok=True)
    prompts = folder / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"id": t.id, "prompt": [{"role": "user", "content": t.prompt}]}) + "\n"
            for t in tasks
        ),
        encoding="utf-8",
    )
    rows = []
    for stage in ("pretrain", "midtrain", "sft"):
        out = folder / stage
        settings = {
            "checkpoint": str(storage.path("checkpoints", stage, "checkpoint")),
            "output": str(out),
            "heldout": dataset_path(storage, "sft"),
            "prompts": str(prompts),
        }
        section = {**recipe.section("evaluate"), **settings}
        launch(context, pipes_subprocess_client, "evaluate", section, out.with_suffix(".yaml"))
        rows.append(evaluation_row(stage, out, tasks))
    table = pl.DataFrame(rows)
    write_parquet(table, folder / "summary.parquet")
    return dg.MaterializeResult(
        metadata={
            "by_stage": dg.MetadataValue.md(preview_markdown(table, 10)),
            **{f"exact_match_{r['stage']}": r["exact_match"] for r in rows},
            # what the scores leave out, never silently: held-out rows cut to max_length or
            # with nothing to score, prompts too long to answer within the model's context
            **{
                f"{count}_{r['stage']}": r[count]
                for r in rows
                for count in EVALUATION_COUNTS
                if r[count] is not None
            },
            "path": dg.MetadataValue.path(str(folder / "summary.parquet")),
        }
    )


# What evaluation.json counts beside the scores, carried into the summary.
EVALUATION_COUNTS = ("rows_truncated", "rows_without_scored_tokens", "prompts_too_long")


def answers_by_id(generations: Path) -> dict[str, str]:
    """A ``generations*.jsonl`` file (evaluate, alignment) as prompt id → answer: a stage
    skips prompts too long for its context, so answers are matched to tasks by id, never by
    position."""
    rows = map(json.loads, generations.read_text(encoding="utf-8").splitlines())
    return {row["id"]: row["output"] for row in rows}


def evaluation_row(stage: str, out: Path, tasks: list[SyntheticTask]) -> dict:
    """One stage's summary from the ``evaluate`` stage's files in ``out``. Answers are matched
    by id: a prompt evaluate skipped (too long for the context) has none and counts as wrong."""
    result = json.loads((out / "evaluation.json").read_text())
    answers = answers_by_id(out / "generations.jsonl")
    correct = sum(check_answer(t, answers[t.id]) for t in tasks if t.id in answers)
    return {
        "stage": stage,
        "heldout_loss": result["heldout_loss"],
        "perplexity": result["perplexity"],
        "exact_match": correct / len(tasks),
        **{count: result.get(count) for count in EVALUATION_COUNTS},
    }


# sft_checkpoint trains from midtrain_checkpoint (see its deps): the stage SFT must beat.
SFT_START = "midtrain"


@dg.asset_check(asset=training_evaluation)
def sft_beats_its_start_on_exact_match(storage: StorageResource) -> dg.AssetCheckResult:
    """Compares exact-match accuracy (greedy decoding, the evaluation's synthetic tasks) of the
    sft stage with midtrain, the checkpoint SFT starts from: passes when sft is strictly higher.
    A warning, not a block: recipes that train a few steps (recipes/test-cpu.yaml) score 0 on
    both."""
    path = storage.path("evaluation", "summary.parquet")
    start = str(storage.path("checkpoints", SFT_START, "checkpoint"))
    sft_lineage = storage.path("checkpoints", "sft", "checkpoint", "lineage.json")
    parent = (
        json.loads(sft_lineage.read_text())["parent_checkpoint"] if sft_lineage.exists() else start
    )
    if parent is None or Path(parent).resolve() != Path(start).resolve():
        # a recipe's init_from: SFT's start is not among the evaluated stages
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"sft started from {parent}, not {SFT_START}'s checkpoint; "
            "training_evaluation does not score that start, so there is nothing to compare",
            metadata={"sft_parent": parent},
        )
    by_stage = {row["stage"]: row for row in pl.read_parquet(path).iter_rows(named=True)}
    missing = [stage for stage in ("sft", SFT_START) if stage not in by_stage]
    if missing:
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"{path} has no row for stage {', '.join(missing)}",
            metadata={"path": dg.MetadataValue.path(str(path))},
        )
    sft, start = by_stage["sft"], by_stage[SFT_START]
    return dg.AssetCheckResult(
        passed=sft["exact_match"] > start["exact_match"],
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "exact_match_sft": sft["exact_match"],
            f"exact_match_{SFT_START}": start["exact_match"],
            "heldout_loss_sft": sft["heldout_loss"],
            f"heldout_loss_{SFT_START}": start["heldout_loss"],
            "path": dg.MetadataValue.path(str(path)),
        },
    )
