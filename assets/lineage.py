# Dagster reads these annotations at definition time: no "from __future__ import annotations".
"""Row-level lineage in the UI: beside every checkpoint, a check that the chain from the
checkpoint through its parents, datasets and row-id hashes down to raw files is unbroken (the
same walk as ``postforge trace``), with the chain as a table in the check's metadata."""

import dagster as dg
import polars as pl

from assets.io_manager import preview_markdown
from assets.resources import StorageResource
from curation.trace import checkpoint_records, trace_checkpoint

# checkpoint asset -> the stage folder its checkpoint is published in
CHECKPOINTS = {
    "base_checkpoint": "pretrain",
    "midtrain_checkpoint": "midtrain",
    "sft_checkpoint": "sft",
    "reward_checkpoint": "reward",
    "dpo_checkpoint": "dpo",
    "ppo_checkpoint": "ppo",
    "grpo_checkpoint": "grpo",
    "rloo_checkpoint": "rloo",
}


def lineage_table(storage: StorageResource, stage: str) -> tuple[bool, list[str], str]:
    """Whether the chain is unbroken, the problems found, and the chain as a Markdown table."""
    outputs = storage.path()
    report = trace_checkpoint(outputs / "checkpoints" / stage / "checkpoint", outputs)
    problems = [p for s in report["stages"] for p in s["problems"]]
    table = pl.DataFrame(checkpoint_records(report), infer_schema_length=None)
    return report["ok"], problems, preview_markdown(table, 50)


def lineage_check(asset_key: str, stage: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=asset_key, name="lineage_is_unbroken")
    def check(storage: StorageResource) -> dg.AssetCheckResult:
        ok, problems, table = lineage_table(storage, stage)
        return dg.AssetCheckResult(
            passed=ok,
            metadata={"problems": problems, "chain": dg.MetadataValue.md(table)},
        )

    check.__doc__ = (
        f"{asset_key}: checkpoint → parents → datasets (row-id hashes re-computed) → raw files."
    )
    return check


lineage_checks = [lineage_check(key, stage) for key, stage in CHECKPOINTS.items()]
