# Dagster reads these annotations at definition time: no "from __future__ import annotations".
"""Alignment: a reward model on ranked comparisons, then the SFT policy optimised against it
(PPO) or directly on the pairs (DPO), with GRPO and RLOO as alternatives; each a Pipes
subprocess in the ``gpu`` pool, and a report that shows whether each stage helped."""

import base64
import io
import json

import dagster as dg
import polars as pl
from pydantic import Field

from assets.feedback import JudgeResource
from assets.io_manager import preview_markdown
from assets.resources import StorageResource
from assets.training import (
    POOL,
    RecipeResource,
    answers_by_id,
    dataset_path,
    launch,
    run_stage,
)
from curation.judge.types import RankRequest
from curation.storage import write_parquet
from curation.synthetic import check_answer, generate_tasks
from training.checkpoint import read_lineage

GROUP = "alignment"


def checkpoint_path(storage: StorageResource, stage: str) -> str:
    return str(storage.path("checkpoints", stage, "checkpoint"))


@dg.asset(
    group_name=GROUP, deps=["preference_dataset", "sft_checkpoint"], pool=POOL, kinds={"pytorch"}
)
def reward_checkpoint(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    storage: StorageResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    """Bradley-Terry reward model (a score head on the SFT checkpoint) on the preference pairs;
    held-out accuracy and margin by origin (human, ai) in its lineage."""
    settings = {
        "data": dataset_path(storage, "preference"),
        "init_from": checkpoint_path(storage, "sft"),
        "inputs": {"asset": "preference_dataset"},
    }
    return run_stage(context, pipes_subprocess_client, storage, recipe, "reward", settings)


@dg.asset(
    group_name=GROUP, deps=["preference_dataset", "sft_checkpoint"], pool=POOL, kinds={"pytorch"}
)
def dpo_checkpoint(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    storage: StorageResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    """DPO from the SFT checkpoint, the SFT checkpoint as the frozen reference."""
    settings = {
        "data": dataset_path(storage, "preference"),
        "init_from": checkpoint_path(storage, "sft"),
        "inputs": {"asset": "preference_dataset"},
    }
    return run_stage(context, pipes_subprocess_client, storage, recipe, "dpo", settings)


def _policy_settings(storage: StorageResource, recipe: RecipeResource, stage: str) -> dict:
    """PPO always optimises against the reward model; GRPO/RLOO get it only when their recipe
    weighs it (their other reward, the checkable answer, needs no model)."""
    settings = {
        "data": dataset_path(storage, "prompt"),
        "init_from": checkpoint_path(storage, "sft"),
        "inputs": {"asset": "prompt_dataset"},
    }
    weights = recipe.section(stage).get("reward_weights") or {}
    if stage == "ppo" or "reward_model" in weights:
        settings["reward_model"] = checkpoint_path(storage, "reward")
        settings["inputs"]["reward_model"] = "reward_checkpoint"
    return settings


def policy_asset(stage: str, description: str) -> dg.AssetsDefinition:
    """An online-RL stage from the SFT policy against the reward model and/or the checkable
    answer: PPO and its alternatives differ only in the stage they launch."""

    @dg.asset(
        name=f"{stage}_checkpoint",
        description=description,
        group_name=GROUP,
        deps=["prompt_dataset", "sft_checkpoint", reward_checkpoint],
        pool=POOL,
        kinds={"pytorch"},
    )
    def policy_checkpoint(
        context: dg.AssetExecutionContext,
        recipe: RecipeResource,
        storage: StorageResource,
        pipes_subprocess_client: dg.PipesSubprocessClient,
    ) -> dg.MaterializeResult:
        settings = _policy_settings(storage, recipe, stage)
        return run_stage(context, pipes_subprocess_client, storage, recipe, stage, settings)

    return policy_checkpoint


ppo_checkpoint = policy_asset(
    "ppo", "PPO against the reward model with a KL penalty to the frozen SFT policy."
)
grpo_checkpoint = policy_asset(
    "grpo",
    "GRPO (an alternative to PPO): group-relative advantages, rewards from the recipe's reward "
    "functions (the reward model and/or the checkable answer).",
)
rloo_checkpoint = policy_asset(
    "rloo", "RLOO (an alternative to PPO): leave-one-out baselines over several samples per prompt."
)


POLICIES = ("pretrain", "midtrain", "sft", "dpo", "ppo", "grpo", "rloo")


class AlignmentReportConfig(dg.Config):
    tasks: int = Field(
        default=1000,
        description="Synthetic tasks generated for the report; any whose prompt is in a training "
        "dataset is left out, so every scored task is held out. 200 cannot tell a gain of 5 "
        "tasks from noise; 1000 can.",
    )
    seed: int = Field(default=1234, description="Seed of the held-out tasks.")
    max_kl: float = Field(
        default=50.0, description="Bound on KL(policy || SFT) in nats per response (check)."
    )


def training_prompts(storage: StorageResource) -> set[str]:
    """Every user prompt of the datasets the policies trained on (SFT, preference, prompt sets,
    both splits): a report task with one of these prompts is not held out."""
    prompts: set[str] = set()
    for name, column in (("sft", "messages"), ("preference", "prompt"), ("prompt", "prompt")):
        folder = storage.path("datasets", name)
        # train/test Parquet at the top or in per-partition folders (parts/<key>/train.parquet)
        files = sorted(folder.glob("**/train.parquet")) + sorted(folder.glob("**/test.parquet"))
        files = [f for f in files if "hf" not in f.relative_to(folder).parts]
        if not files:
            raise FileNotFoundError(
                f"{folder}: no train.parquet; cannot tell which report tasks were trained on"
            )
        for path in files:
            for messages in pl.read_parquet(path, columns=[column])[column].to_list():
                prompts.update(m["content"].strip() for m in messages if m["role"] == "user")
    return prompts


def heldout_tasks(storage: StorageResource, count: int, seed: int) -> tuple[list, int]:
    """``generate_tasks(count, seed)`` less those whose prompt some training set holds, and how
    many were left out for that."""
    seen = training_prompts(storage)
    tasks = generate_tasks(count, seed=seed)
    kept = [t for t in tasks if t.prompt.strip() not in seen]
    return kept, len(tasks) - len(kept)


def win_rate(judge, tasks, policy: list[str], reference: list[str]) -> float:  # noqa: ANN001
    """Share of prompts where the judge prefers the policy's answer to the SFT answer (a tie
    counts half)."""
    requests = [
        RankRequest(t.id, [{"role": "user", "content": t.prompt}], [("a", a), ("b", b)], t.answer)
        for t, a, b in zip(tasks, policy, reference, strict=True)
    ]
    score = 0.0
    for result in judge.rank(requests):
        if result.ranks is None or result.ranks[0] == result.ranks[1]:
            score += 0.5
        elif result.ranks[0] < result.ranks[1]:
            score += 1.0
    return score / max(len(requests), 1)


def mcnemar_p(gained: int, lost: int) -> float:
    """Exact two-sided McNemar (sign) test on the tasks where two policies disagree: the chance,
    if either were as likely to win each such task, of a split at least this uneven. On 200
    tasks a gain of 1 is noise; this says how far beyond noise a gain is."""
    from math import comb

    n = gained + lost
    if n == 0:
        return 1.0
    tail = sum(comb(n, k) for k in range(min(gained, lost) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_with_reference(
    tasks: list, answers: list[str], reference: list[str]
) -> dict[str, float | int]:  # noqa: ANN001
    """Tasks the policy answers right where the reference (SFT) is wrong, the reverse, and
    McNemar's p for that split."""
    right = [check_answer(t, a) for t, a in zip(tasks, answers, strict=True)]
    base = [check_answer(t, a) for t, a in zip(tasks, reference, strict=True)]
    gained = sum(r and not b for r, b in zip(right, base, strict=True))
    lost = sum(b and not r for r, b in zip(right, base, strict=True))
    p = round(mcnemar_p(gained, lost), 4)
    return {"gained_vs_sft": gained, "lost_vs_sft": lost, "p_vs_sft": p}


def exact_match_by_kind(tasks: list, answers_by_policy: dict[str, list[str]]) -> pl.DataFrame:
    """Right answers per task kind (rows) and policy (columns), as "right/total"."""
    kinds = list(dict.fromkeys(t.kind for t in tasks))
    rows = []
    for kind in kinds:
        row: dict[str, str] = {"kind": kind}
        indices = [i for i, t in enumerate(tasks) if t.kind == kind]
        for name, answers in answers_by_policy.items():
            right = sum(check_answer(tasks[i], answers[i]) for i in indices)
            row[name] = f"{right}/{len(indices)}"
        rows.append(row)
    return pl.DataFrame(rows)


def bar_plots(table: pl.DataFrame) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measures = [
        c
        for c in ("exact_match", "win_rate_vs_sft", "reward_model_score", "kl_to_sft")
        if c in table.columns
    ]
    figure, axes = plt.subplots(1, len(measures), figsize=(3.2 * len(measures), 3), dpi=100)
    for axis, measure in zip(list(axes) if len(measures) > 1 else [axes], measures, strict=True):
        axis.bar(table["policy"].to_list(), table[measure].fill_null(0).to_list())
        axis.set_title(measure)
        axis.tick_params(axis="x", rotation=45)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return f"![alignment](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()})"


@dg.asset(
    group_name=GROUP,
    deps=[
        "base_checkpoint",
        "midtrain_checkpoint",
        "sft_checkpoint",
        dpo_checkpoint,
        ppo_checkpoint,
        grpo_checkpoint,
        rloo_checkpoint,
        reward_checkpoint,
    ],
    pool=POOL,
    kinds={"pytorch"},
)
def alignment_report(
    context: dg.AssetExecutionContext,
    config: AlignmentReportConfig,
    recipe: RecipeResource,
    storage: StorageResource,
    judge: JudgeResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    """Per policy: reward-model score on held-out prompts, win rate against SFT by the judge,
    KL to SFT, exact match on held-out synthetic tasks, mean response length; a table, plots,
    and ``alignment_report.md`` beside the checkpoints."""
    tasks, seen_in_training = heldout_tasks(storage, config.tasks, config.seed)
    folder = storage.path("alignment")
    folder.mkdir(parents=True, exist_ok=True)
    prompts = folder / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"id": t.id, "prompt": [{"role": "user", "content": t.prompt}]}) + "\n"
            for t in tasks
        ),
        encoding="utf-8",
    )
    policies = {
        name: checkpoint_path(storage, name)
        for name in POLICIES
        if storage.path("checkpoints", name, "checkpoint", "lineage.json").exists()
    }
    section = {
        **recipe.section("alignment"),
        "policies": policies,
        "reference": checkpoint_path(storage, "sft"),
        "reward_model": checkpoint_path(storage, "reward"),
        "prompts": str(prompts),
        "output": str(folder),
    }
    launch(context, pipes_subprocess_client, "alignment", section, folder / "stage.yaml")
    measured = json.loads((folder / "alignment.json").read_text())["policies"]
    # Prompts too long for a model's context are skipped for every policy: scored as wrong,
    # or judged as "" against "", they would only add noise, so the report leaves them out.
    answered = answers_by_id(folder / "generations_sft.jsonl")
    tasks = [t for t in tasks if t.id in answered]

    def outputs(name: str) -> list[str]:
        """The policy's answer to each task, in task order."""
        answers = answers_by_id(folder / f"generations_{name}.jsonl")
        return [answers[t.id] for t in tasks]

    built = judge.build(storage.path("feedback", "judge_cache.sqlite"))
    sft_answers = outputs("sft")
    rows = []
    answers_by_policy = {}
    for name, found in measured.items():
        answers = answers_by_policy[name] = outputs(name)
        rows.append(
            {
                "policy": name,
                "exact_match": sum(map(check_answer, tasks, answers)) / len(tasks),
                **paired_with_reference(tasks, answers, sft_answers),
                "win_rate_vs_sft": win_rate(built, tasks, answers, sft_answers),
                "reward_model_score": found.get("reward_model_score"),
                "kl_to_sft": found["kl_to_reference"],
                "mean_response_tokens": found["mean_response_tokens"],
                "moved_tensors": found["moved_tensors"],
            }
        )
    table = pl.DataFrame(rows)
    write_parquet(table, folder / "report.parquet")
    by_kind = exact_match_by_kind(tasks, answers_by_policy)
    reward_lineage = read_lineage(checkpoint_path(storage, "reward"))
    markdown = (
        "# Alignment report\n\n"
        f"Held-out synthetic tasks: {len(tasks)} (seed {config.seed}; {seen_in_training} of "
        f"the {config.tasks} generated left out because a training set holds their prompt); "
        f"judge: {built.name}; "
        f"reference: SFT. gained/lost: tasks right where SFT is wrong and the reverse; p: "
        f"exact McNemar test of that split.\n\n{preview_markdown(table, len(rows))}\n\n"
        f"Exact match by task kind:\n\n{preview_markdown(by_kind, by_kind.height)}\n\n"
        f"Reward model held-out metrics: {json.dumps(reward_lineage.get('metrics', {}))}\n"
    )
    (storage.path("checkpoints") / "alignment_report.md").write_text(markdown, encoding="utf-8")
    return dg.MaterializeResult(
        metadata={
            "by_policy": dg.MetadataValue.md(preview_markdown(table, len(rows))),
            "by_kind": dg.MetadataValue.md(preview_markdown(by_kind, by_kind.height)),
            "plots": dg.MetadataValue.md(bar_plots(table)),
            "report": dg.MetadataValue.path(
                str(storage.path("checkpoints", "alignment_report.md"))
            ),
            **{f"exact_match_{r['policy']}": r["exact_match"] for r in rows},
            "judge": built.name,
            "heldout_tasks": len(tasks),
            "tasks_seen_in_training": seen_in_training,
        }
    )


@dg.asset_check(asset=reward_checkpoint)
def reward_model_beats_chance(storage: StorageResource) -> dg.AssetCheckResult:
    """The reward model orders held-out pairs better than a coin."""
    metrics = read_lineage(checkpoint_path(storage, "reward")).get("metrics", {})
    accuracy = metrics.get("heldout_accuracy")
    return dg.AssetCheckResult(
        passed=accuracy is not None and accuracy > 0.5,
        metadata={k: v for k, v in metrics.items() if isinstance(v, int | float)},
    )


@dg.asset_check(asset=alignment_report)
def policies_moved_within_kl_bound(
    storage: StorageResource, config: AlignmentReportConfig
) -> dg.AssetCheckResult:
    """DPO and PPO changed the policy (parameters moved, KL above zero) and stayed within the
    configured KL of the SFT policy."""
    table = pl.read_parquet(storage.path("alignment", "report.parquet"))
    trained = table.filter(pl.col("policy").is_in(["dpo", "ppo"]))
    moved = trained.height == 2 and bool((trained["moved_tensors"] > 0).all())
    kl = trained["kl_to_sft"].to_list()
    within = all(0 < value <= config.max_kl for value in kl)
    return dg.AssetCheckResult(
        passed=moved and within,
        metadata={"kl": dict(zip(trained["policy"], kl, strict=True)), "max_kl": config.max_kl},
    )
