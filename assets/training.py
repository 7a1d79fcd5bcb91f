# Dagster reads these annotations at definition time: no "from __future__ import annotations".
"""Training assets: data mixtures, then each stage as a subprocess through Dagster Pipes (the
same command runs under ``accelerate launch`` or moves to Kubernetes with ``PipesK8sClient``),
all in the ``gpu`` pool so one stage holds the accelerator at a time."""

import base64
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import polars as pl
import yaml
from pydantic import Field

from assets.io_manager import preview_markdown
from assets.resources import StorageResource, resolve
from curation.datasets import ExportConfig, export, sft_rows
from curation.mixing import MixConfig, mix
from curation.storage import write_parquet
from curation.synthetic import check_answer, generate_tasks
from curation.tokens import TokenCounter
from training.checkpoint import read_lineage
from training.recipe import build, read_recipe
from training.reporting import read_metrics
from training.tokenizer import load_tokenizer, to_transformers

GROUP = "training"
POOL = "gpu"


class RecipeConfig(dg.Config):
    recipe: str = Field(
        default="recipes/tiny-cpu.yaml", description="Recipe YAML (project-relative)."
    )


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


def recipe_section(path: str, name: str) -> dict:
    return dict(read_recipe(resolve(path)).get(name) or {})


def counted(texts: pl.DataFrame, counter: TokenCounter) -> pl.DataFrame:
    return texts.with_columns(tokens=pl.Series(counter(texts["text"].to_list()), dtype=pl.Int64))


def rendered_instructions(curated: pl.DataFrame, tokenizer_path: Path) -> pl.DataFrame:
    """Instruction conversations as chat-template text, so they mix with pretraining text."""
    chat = to_transformers(load_tokenizer(tokenizer_path))
    rows = sft_rows(curated)
    texts = [chat.apply_chat_template(m, tokenize=False) for m in rows["messages"].to_list()]
    return rows.select("id", "source").with_columns(text=pl.Series(texts, dtype=pl.String))


def mixture_asset(
    name: str, storage: StorageResource, mixture, shares: dict
) -> dg.MaterializeResult:
    rows = mixture.rows.select("id", "source", "text", "tokens")
    summary = export(name, rows, storage.path("datasets"), ExportConfig(eval_fraction=0.02))
    return dg.MaterializeResult(
        metadata={
            "target_shares": shares,
            "achieved": dg.MetadataValue.md(preview_markdown(mixture.report, 20)),
            "tokens": int(mixture.rows["tokens"].sum()),
            "train_rows": summary["rows"]["train"],
            "test_rows": summary["rows"]["test"],
            "path": dg.MetadataValue.path(summary["path"]),
        }
    )


@dg.asset(group_name=GROUP, deps=["project_tokenizer"], kinds={"polars"})
def pretrain_mixture(
    config: RecipeConfig,
    storage: StorageResource,
    pretrain_corpus: pl.DataFrame,
    curated_conversations: pl.DataFrame,
) -> dg.MaterializeResult:
    """Stable-phase data: pretraining text, with instruction data mixed in at the recipe's share
    (0 by default: MiniCPM keeps instructions for the decay phase)."""
    recipe = build(
        MixingRecipe, recipe_section(config.recipe, "mixing"), f"{config.recipe}: mixing"
    )
    tokenizer_path = storage.path("project_tokenizer")
    counter = TokenCounter(load_tokenizer(tokenizer_path))
    pretrain = counted(pretrain_corpus.select("id", "source", "text"), counter)
    share = recipe.pretrain_instruction_share
    sources = {"pretrain": pretrain}
    shares = {"pretrain": 1.0 - share}
    if share > 0:
        sources["instruction"] = counted(
            rendered_instructions(curated_conversations, tokenizer_path), counter
        )
        shares["instruction"] = share
    total = int(pretrain["tokens"].sum() / (1.0 - share))
    mixture = mix(sources, MixConfig(proportions=shares, total_tokens=total, seed=recipe.seed))
    return mixture_asset("pretrain_mixture", storage, mixture, shares)


@dg.asset(group_name=GROUP, deps=["project_tokenizer"], kinds={"polars"})
def decay_mixture(
    config: RecipeConfig,
    storage: StorageResource,
    pretrain_corpus: pl.DataFrame,
    curated_conversations: pl.DataFrame,
) -> dg.MaterializeResult:
    """Decay-phase data: pretraining text and instruction data at exact token shares."""
    recipe = build(
        MixingRecipe, recipe_section(config.recipe, "mixing"), f"{config.recipe}: mixing"
    )
    tokenizer_path = storage.path("project_tokenizer")
    counter = TokenCounter(load_tokenizer(tokenizer_path))
    sources = {
        "pretrain": counted(pretrain_corpus.select("id", "source", "text"), counter),
        "instruction": counted(
            rendered_instructions(curated_conversations, tokenizer_path), counter
        ),
    }
    mixture = mix(
        sources,
        MixConfig(
            proportions=recipe.decay_shares, total_tokens=recipe.decay_tokens, seed=recipe.seed
        ),
    )
    return mixture_asset("decay_mixture", storage, mixture, recipe.decay_shares)


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


def launch_stage(
    context: dg.AssetExecutionContext,
    pipes: dg.PipesSubprocessClient,
    storage: StorageResource,
    recipe_path: str,
    stage: str,
    settings: dict,
    folder: str = "checkpoints",
) -> tuple[dg.MaterializeResult, Path]:
    """Write the resolved stage config beside the run and launch ``python -m training``; the
    recipe's section is the base and the asset's settings (paths, inputs) win."""
    output_dir = storage.path(folder, stage)
    output_dir.mkdir(parents=True, exist_ok=True)
    if "inputs" in settings:
        settings = {**settings, "inputs": described_inputs(context, settings["inputs"])}
    section = {**recipe_section(recipe_path, stage), **settings, "output_dir": str(output_dir)}
    resolved = output_dir / "stage.yaml"
    resolved.write_text(yaml.safe_dump({stage: section}, sort_keys=True), encoding="utf-8")
    command = [sys.executable, "-m", "training", stage, "--config", str(resolved)]
    result = pipes.run(command=command, context=context).get_materialize_result()
    return result, output_dir


def run_stage(
    context: dg.AssetExecutionContext,
    pipes: dg.PipesSubprocessClient,
    storage: StorageResource,
    recipe_path: str,
    stage: str,
    settings: dict,
) -> dg.MaterializeResult:
    """A training stage whose product is a checkpoint: its lineage, loss curve and speed become
    the asset's metadata."""
    result, output_dir = launch_stage(context, pipes, storage, recipe_path, stage, settings)
    checkpoint = output_dir / "checkpoint"
    lineage = read_lineage(checkpoint)
    metrics = read_metrics(output_dir / "metrics.jsonl")
    speeds = [m["tokens_per_s"] for m in metrics if "tokens_per_s" in m]
    utilization = [m["mfu"] for m in metrics if "mfu" in m]  # recorded on a known GPU only
    return dg.MaterializeResult(
        metadata={
            **(result.metadata or {}),
            "checkpoint": dg.MetadataValue.path(str(checkpoint)),
            "loss_curve": dg.MetadataValue.md(loss_plot(metrics, f"{stage} loss")),
            "tokens_per_s": speeds[-1] if speeds else None,
            **({"mfu": utilization[-1]} if utilization else {}),
            "lineage": dg.MetadataValue.json(lineage),
            "recipe": recipe_path,
        }
    )


def dataset_path(storage: StorageResource, name: str) -> str:
    return str(storage.path("datasets", name))


@dg.asset(
    group_name=GROUP, deps=["pretrain_mixture", "project_tokenizer"], pool=POOL, kinds={"pytorch"}
)
def base_checkpoint(
    context: dg.AssetExecutionContext,
    config: RecipeConfig,
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
    return run_stage(context, pipes_subprocess_client, storage, config.recipe, "pretrain", settings)


@dg.asset(group_name=GROUP, deps=["decay_mixture", base_checkpoint], pool=POOL, kinds={"pytorch"})
def midtrain_checkpoint(
    context: dg.AssetExecutionContext,
    config: RecipeConfig,
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
    return run_stage(context, pipes_subprocess_client, storage, config.recipe, "midtrain", settings)


@dg.asset(group_name=GROUP, deps=["sft_dataset", midtrain_checkpoint], pool=POOL, kinds={"pytorch"})
def sft_checkpoint(
    context: dg.AssetExecutionContext,
    config: RecipeConfig,
    storage: StorageResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    """Supervised fine-tuning through TRL from the midtrained checkpoint."""
    settings = {
        "data": dataset_path(storage, "sft"),
        "init_from": str(storage.path("checkpoints", "midtrain", "checkpoint")),
        "inputs": {"asset": "sft_dataset"},
    }
    return run_stage(context, pipes_subprocess_client, storage, config.recipe, "sft", settings)


class EvaluationConfig(RecipeConfig):
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
        section = {**recipe_section(config.recipe, "evaluate"), **settings}
        resolved = out.with_suffix(".yaml")
        resolved.write_text(yaml.safe_dump({"evaluate": section}), encoding="utf-8")
        command = [sys.executable, "-m", "training", "evaluate", "--config", str(resolved)]
        pipes_subprocess_client.run(command=command, context=context)
        result = json.loads((out / "evaluation.json").read_text())
        outputs = [
            json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()
        ]
        correct = sum(check_answer(t, o["output"]) for t, o in zip(tasks, outputs, strict=True))
        rows.append(
            {
                "stage": stage,
                "heldout_loss": result["heldout_loss"],
                "perplexity": result["perplexity"],
                "exact_match": correct / len(tasks),
            }
        )
    table = pl.DataFrame(rows)
    write_parquet(table, folder / "summary.parquet")
    return dg.MaterializeResult(
        metadata={
            "by_stage": dg.MetadataValue.md(preview_markdown(table, 10)),
            **{f"exact_match_{r['stage']}": r["exact_match"] for r in rows},
            "path": dg.MetadataValue.path(str(folder / "summary.parquet")),
        }
    )


# sft_checkpoint trains from midtrain_checkpoint (see its deps): the stage SFT must beat.
SFT_START = "midtrain"


@dg.asset_check(asset=training_evaluation)
def sft_beats_its_start_on_exact_match(storage: StorageResource) -> dg.AssetCheckResult:
    """Compares exact-match accuracy (greedy decoding, the evaluation's synthetic tasks) of the
    sft stage with midtrain, the checkpoint SFT starts from: passes when sft is strictly higher.
    A warning, not a block: recipes that train a few steps (recipes/test-cpu.yaml) score 0 on
    both."""
    path = storage.path("evaluation", "summary.parquet")
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
