# Dagster reads these annotations at definition time: no "from __future__ import annotations".
"""AI and human feedback: candidate answers sampled from the SFT checkpoint and taken from the
sources, ranked by a judge (an OpenAI-compatible endpoint, or the embedded offline judge by
default) and by people through an annotation tool, then turned into preference pairs that the
``preference_dataset`` merges with the sources' own pairs."""

import json
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from assets.io_manager import preview_markdown
from assets.resources import StorageResource, resolve
from assets.training import POOL, RecipeResource, dataset_path, launch_stage
from curation.feedback.annotation import (
    export_argilla,
    export_label_studio,
    import_argilla,
    import_label_studio,
)
from curation.feedback.candidates import merge_candidates, source_rankings, source_sets
from curation.feedback.pairs import PairsConfig, rankings_to_pairs
from curation.feedback.quality import judge_quality
from curation.feedback.schema import RANKINGS, read_candidates
from curation.judge.tables import build_judge, error_share_report, judge_candidates
from curation.judge.types import Judge

GROUP = "feedback"


class JudgeResource(dg.ConfigurableResource):
    """Which judge ranks candidates. ``offline`` (the default, used by ``make demo``) needs no
    network; ``openai`` talks to any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama,
    llama.cpp). Bind ``api_key`` to ``dg.EnvVar(...)`` so the key never sits in config, logs or
    metadata. The settings mirror ``curation.judge.JudgeConfig``, whose docstring explains each.
    """

    backend: str = Field(default="offline", description="offline | openai")
    base_url: str | None = Field(default=None, description="e.g. http://127.0.0.1:8000/v1")
    model: str = Field(default="judge", description="model name the endpoint serves")
    api_key: str | None = Field(default=None, description="bind to dg.EnvVar, never a literal")
    template: str = Field(default="listwise", description="listwise | pairwise")
    permutations: int = Field(default=2, description="presentation orders per candidate list")
    on_inconsistent: str = Field(default="tie", description="tie | drop")
    max_concurrency: int = 8
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_retries: int = 4
    timeout_s: float = 60.0
    json_mode: bool = False
    price_input_per_1m: float = 0.0
    price_output_per_1m: float = 0.0

    def build(self, cache_path: Path) -> Judge:
        if self.backend == "offline":
            return build_judge({"backend": "offline"})
        settings = self.model_dump(exclude={"backend", "api_key"})
        if not settings.get("base_url"):
            raise ValueError("judge: backend 'openai' needs base_url")
        return build_judge(
            {"backend": "openai", **settings, "cache_path": str(cache_path)}, api_key=self.api_key
        )


@dg.asset(group_name=GROUP, deps=["prompt_dataset", "sft_checkpoint"], pool=POOL, kinds={"pytorch"})
def model_candidates(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    storage: StorageResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    """N sampled answers per prompt from the SFT checkpoint (the recipe's ``candidates``
    section: N, temperature, top-p, seed, other checkpoints); resumable per batch."""
    settings = {
        "prompt_dataset": dataset_path(storage, "prompt"),
        "checkpoints": [str(storage.path("checkpoints", "sft", "checkpoint"))],
        "inputs": {"asset": "prompt_dataset"},
    }
    result, out = launch_stage(
        context, pipes_subprocess_client, storage, recipe, "candidates", settings, "feedback"
    )
    frame = read_candidates(out / "candidates.parquet")
    sizes = frame["candidates"].list.len()
    return dg.MaterializeResult(
        metadata={
            **(result.metadata or {}),
            "prompts": frame.height,
            "candidates": int(sizes.sum()),
            "path": dg.MetadataValue.path(str(out / "candidates.parquet")),
        }
    )


class CandidateSetsConfig(dg.Config):
    max_candidates: int = Field(default=9, description="a judge ranks at most 9")
    include_reference: bool = Field(
        default=True, description="add the human reference answer as a candidate"
    )


@dg.asset(group_name=GROUP, deps=[model_candidates], kinds={"polars"})
def candidate_sets(
    config: CandidateSetsConfig,
    storage: StorageResource,
    curated_preferences: pl.DataFrame,
    curated_conversations: pl.DataFrame,
) -> dg.Output[pl.DataFrame]:
    """One row per prompt: model samples merged with the sources' own completions (UltraFeedback
    completions, OpenAssistant siblings) and the human reference answer, each with its origin."""
    from curation.feedback.candidates import MergeCandidatesConfig

    model = read_candidates(storage.path("feedback", "candidates", "candidates.parquet"))
    frame, report = merge_candidates(
        model,
        source_sets(curated_preferences),
        curated_conversations,
        MergeCandidatesConfig(
            max_candidates=config.max_candidates, include_reference=config.include_reference
        ),
    )
    origins = frame.select(pl.col("candidates").list.eval(pl.element().struct.field("origin")))
    counts = origins.explode("candidates")["candidates"].value_counts().sort("candidates")
    return dg.Output(
        frame, metadata={**report, "origins": dg.MetadataValue.md(preview_markdown(counts, 10))}
    )


@dg.asset(group_name=GROUP, kinds={"json"})
def annotation_tasks(
    storage: StorageResource, candidate_sets: pl.DataFrame
) -> dg.MaterializeResult:
    """The candidate sets in Label Studio's and Argilla's import formats, for people to rank;
    their completed exports come back through ``human_rankings``."""
    folder = storage.path("feedback", "annotation")
    label_studio = export_label_studio(candidate_sets, folder / "label_studio")
    argilla = export_argilla(candidate_sets, folder / "argilla")
    return dg.MaterializeResult(
        metadata={
            "label_studio": dg.MetadataValue.json(_jsonable(label_studio)),
            "argilla": dg.MetadataValue.json(_jsonable(argilla)),
            "folder": dg.MetadataValue.path(str(folder)),
        }
    )


def _jsonable(value) -> dict:  # noqa: ANN001
    return json.loads(json.dumps(value, default=str))


class AiRankingsConfig(dg.Config):
    max_error_share: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description=(
            "largest share (0..1) of candidate sets the judge may fail on (status error: HTTP "
            "errors after the client's retries, timeouts, protocol errors) for the step to "
            "succeed. Above it the step fails, retryably, after every answered call is in the "
            "cache, so the step's retry (or a re-run) pays only for the failed sets; at or below "
            "it the rankings are written and metadata failed_sets counts the failures. Sets "
            "skipped for their input (too few or too many candidates) never count."
        ),
    )


@dg.asset(group_name=GROUP, kinds={"polars"})
def ai_rankings(
    context: dg.AssetExecutionContext,
    config: AiRankingsConfig,
    storage: StorageResource,
    judge: JudgeResource,
    candidate_sets: pl.DataFrame,
    curated_preferences: pl.DataFrame,
) -> dg.Output[pl.DataFrame]:
    """The judge's ranking of every candidate set, and how far the judge can be trusted (its
    agreement with the sources' human ranks and the checkable answers, consistency, ties,
    length bias). Answers are cached by (model, template, prompt, candidates), so a refresh
    pays only for new sets and a killed run resumes. More failed sets than
    ``max_error_share`` allows fail the step (retryably), so the missing rankings do not stay
    missing until someone re-materializes by hand."""
    built = judge.build(storage.path("feedback", "judge_cache.sqlite"))
    rankings = judge_candidates(candidate_sets, built)
    summary = dict(getattr(built, "summary", {}) or {})
    statuses = dict(rankings.group_by("status").len().iter_rows())
    context.log.info(f"judge {built.name}: {statuses}")
    errors, problem = error_share_report(rankings, config.max_error_share)
    if problem is not None:
        raise dg.Failure(
            description=problem,
            metadata={"judge": built.name, "statuses": statuses, **errors},
            allow_retries=True,
        )
    quality, by_source = judge_quality_report(rankings, candidate_sets, curated_preferences)
    return dg.Output(
        rankings,
        metadata={
            "judge": built.name,
            "statuses": statuses,
            "failed_sets": errors["failed_sets"],
            "summary": dg.MetadataValue.json(_jsonable(summary)),
            "quality": dg.MetadataValue.json(_jsonable(quality)),
            "quality_by_source": dg.MetadataValue.md(preview_markdown(by_source, 20)),
        },
    )


def judge_quality_report(
    rankings: pl.DataFrame, candidate_sets: pl.DataFrame, curated_preferences: pl.DataFrame
) -> tuple[dict, pl.DataFrame]:
    references = source_rankings(source_sets(curated_preferences), candidate_sets)
    return judge_quality(rankings, candidate_sets, references)


class HumanRankingsConfig(dg.Config):
    folder: str = Field(
        default="data/annotations",
        description="completed exports: label_studio/*.json and argilla/*.json (project-relative)",
    )


@dg.asset(group_name=GROUP, kinds={"polars"})
def human_rankings(config: HumanRankingsConfig) -> dg.Output[pl.DataFrame]:
    """Rankings people made in Label Studio or Argilla, imported with origin ``human``; empty
    until someone drops a completed export into the folder."""
    folder = resolve(config.folder)
    frames, counts = [pl.DataFrame(schema=RANKINGS)], {}
    for kind, reader in (("label_studio", import_label_studio), ("argilla", import_argilla)):
        for path in sorted((folder / kind).glob("*.json")) if folder.is_dir() else []:
            frame, report = reader(path)
            frames.append(frame)
            counts[str(path)] = report
    rankings = pl.concat(frames, how="vertical_relaxed")
    return dg.Output(
        rankings, metadata={"files": dg.MetadataValue.json(counts), "rankings": rankings.height}
    )


class PairsAssetConfig(dg.Config):
    strategy: str = Field(default="all", description="all (C(K,2), InstructGPT) | best_vs_worst")
    min_margin: int = Field(default=1, description="least rank difference of a kept pair")
    require_consistent: bool = Field(
        default=False, description="skip rankings whose order-swap check disagreed"
    )


@dg.asset(group_name=GROUP, kinds={"polars"})
def feedback_preferences(
    config: PairsAssetConfig,
    candidate_sets: pl.DataFrame,
    ai_rankings: pl.DataFrame,
    human_rankings: pl.DataFrame,
) -> dg.Output[pl.DataFrame]:
    """Preference pairs from the judge's and people's rankings, with origin and judge kept;
    ties are dropped and counted."""
    rankings = pl.concat([ai_rankings, human_rankings], how="vertical_relaxed")
    result = rankings_to_pairs(
        rankings,
        candidate_sets,
        PairsConfig(
            strategy=config.strategy,
            min_margin=config.min_margin,
            require_consistent=config.require_consistent,
        ),
    )
    origins = dict(result.pairs.group_by("origin").len().iter_rows())
    return dg.Output(result.pairs, metadata={**result.counts, "by_origin": origins})


@dg.asset_check(
    asset=ai_rankings,
    additional_ins={"candidate_sets": dg.AssetIn(), "curated_preferences": dg.AssetIn()},
)
def judge_agrees_with_checkable_answers(
    ai_rankings: pl.DataFrame, candidate_sets: pl.DataFrame, curated_preferences: pl.DataFrame
) -> dg.AssetCheckResult:
    """Judge quality: agreement with OpenAssistant/UltraFeedback ranks and with the synthetic
    tasks' checkable answers, order-swap consistency, tie rate, length bias and the
    generation-versus-judgment gap. Fails when the judge orders checkable answers no better
    than a coin."""
    overall, by_source = judge_quality_report(ai_rankings, candidate_sets, curated_preferences)
    accuracy = overall.get("answer_pairwise_accuracy")
    return dg.AssetCheckResult(
        passed=accuracy is None or accuracy > 0.5,
        metadata={
            **{k: v for k, v in overall.items() if isinstance(v, int | float) or v is None},
            "by_source": dg.MetadataValue.md(preview_markdown(by_source, 20)),
        },
    )
