"""Training sets in TRL's formats, with a stable train/eval split, written as Parquet and as a
``datasets`` ``save_to_disk`` folder with a dataset card (``export``), or append-only as one
train/test Parquet pair per drop behind a manifest (``export_parts``: a refresh writes the new
drop's pair only; ``datasets``' parquet loader reads the parts as one dataset).

- sft: ``messages`` (conversational; TRL's SFTTrainer applies the chat template)
- preference: ``prompt``, ``chosen``, ``rejected`` (conversational; RewardTrainer, DPOTrainer)
- prompt: ``prompt`` (the conversation up to the last user turn; PPO, GRPO, RLOO)
- pretrain: ``text``

Every set keeps ``id`` and ``source`` so a checkpoint can be traced back to its rows.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from curation.storage import Part, PartUpdate, read_manifest, write_parquet, write_parts

SPLIT_BUCKETS = 10_000


def split_expr(eval_fraction: float, key: str = "id") -> pl.Expr:
    """ "train" or "test" from a hash of the row id: stable across runs, machines and library
    versions, and a row never moves between splits when other rows are added."""
    threshold = round(eval_fraction * SPLIT_BUCKETS)

    def buckets(ids: pl.Series) -> pl.Series:
        return pl.Series(
            [
                int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest()) % SPLIT_BUCKETS
                for i in ids
            ],
            dtype=pl.Int64,
        )

    bucket = pl.col(key).map_batches(buckets, return_dtype=pl.Int64)
    return pl.when(bucket < threshold).then(pl.lit("test")).otherwise(pl.lit("train"))


def sft_rows(curated: pl.DataFrame) -> pl.DataFrame:
    """Conversations that end with an assistant turn (SFT learns the assistant's tokens)."""
    last_role = pl.col("messages").list.last().struct.field("role")
    return curated.filter(last_role == "assistant").select("id", "source", "messages")


def prompt_rows(curated: pl.DataFrame) -> pl.DataFrame:
    """Prompts for online RL: each conversation up to (and with) its last user turn."""
    roles = pl.col("messages").list.eval(pl.element().struct.field("role"))
    last_user = roles.list.eval(
        pl.when(pl.element() == "user").then(pl.int_range(pl.len())).otherwise(None)
    ).list.max()
    return (
        curated.with_columns(last_user=last_user)
        .filter(pl.col("last_user").is_not_null())
        .select(
            "id",
            "source",
            pl.col("messages").list.slice(0, pl.col("last_user") + 1).alias("prompt"),
        )
    )


def preference_rows(preferences: pl.DataFrame) -> pl.DataFrame:
    """TRL's RewardTrainer reads a column named ``margin`` into its loss (and fails on nulls);
    our margins mix rank and score differences across sources, so they travel under another
    name and a recipe opts in by renaming."""
    return preferences.select(
        "id",
        "source",
        "origin",
        "prompt",
        "chosen",
        "rejected",
        pl.col("margin").alias("pair_margin"),
    )


def pretrain_rows(texts: pl.DataFrame) -> pl.DataFrame:
    return texts.select("id", "source", "text")


@dataclass(frozen=True)
class ExportConfig:
    """Attributes:
    eval_fraction: share of rows (by id hash) in the ``test`` split.
    save_hf: also write a ``datasets`` folder (``load_from_disk``) beside the Parquet files.
    """

    eval_fraction: float = 0.05
    save_hf: bool = True


def export(
    name: str,
    rows: pl.DataFrame,
    out_dir: Path,
    config: ExportConfig = ExportConfig(),
    card: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``out_dir/<name>/{train,test}.parquet`` and ``out_dir/<name>/hf/`` (DatasetDict
    with a README.md card). Returns counts and paths for metadata."""
    target = out_dir / name
    shutil.rmtree(target / PARTS, ignore_errors=True)  # an earlier export by parts
    split = rows.with_columns(split=split_expr(config.eval_fraction))
    parts = {s: split.filter(pl.col("split") == s).drop("split") for s in ("train", "test")}
    for split_name, part in parts.items():
        write_parquet(part, target / f"{split_name}.parquet")
    summary: dict[str, Any] = {
        "name": name,
        "rows": {s: p.height for s, p in parts.items()},
        "by_source": dict(rows.group_by("source").len().sort("source").iter_rows()),
        "path": str(target),
    }
    if config.save_hf:
        summary["hf_path"] = str(save_hf(parts, target / "hf", name, {**summary, **(card or {})}))
    return summary


def save_hf(parts: Mapping[str, pl.DataFrame], path: Path, name: str, card: Mapping) -> Path:
    """A ``DatasetDict`` folder, written beside and then renamed into place (atomic)."""
    import shutil

    import datasets

    datasets.disable_progress_bars()  # logs, not terminals, read this output
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # datasets cannot store an empty split; an empty test split is left out of the folder.
    dataset = datasets.DatasetDict(
        {
            split: datasets.Dataset(part.to_arrow())
            for split, part in parts.items()
            if part.height or split == "train"
        }
    )
    dataset.save_to_disk(str(tmp))
    (tmp / "README.md").write_text(dataset_card(name, card), encoding="utf-8")
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def dataset_card(name: str, card: Mapping[str, Any]) -> str:
    rows = card.get("rows", {})
    lines = [
        "---",
        "license: cc0-1.0" if card.get("license") is None else f"license: {card['license']}",
        "configs:",
        "- config_name: default",
        "---",
        f"# postforge `{name}`",
        "",
        f"Rows: train {rows.get('train', 0)}, test {rows.get('test', 0)} "
        "(split by a hash of `id`).",
        "",
        "## Sources",
        "",
        *(f"- {source}: {count}" for source, count in card.get("by_source", {}).items()),
    ]
    if card.get("filters"):
        lines += ["", "## Curation (rows per rule)", ""]
        lines += [f"- {rule}: {count}" for rule, count in card["filters"].items()]
    if card.get("config"):
        lines += ["", "## Config", "", "```json", json.dumps(card["config"], indent=2), "```"]
    return "\n".join(lines) + "\n"


PARTS = "parts"
SPLITS = ("train", "test")


def rows_tag(rows: pl.DataFrame) -> str:
    """What ``rows`` hold, as a tag for ``export_parts``: their count and a digest of every row
    in order (and of the schema), so rows that change in any way, move or go make another tag
    and the same rows the same one."""
    digest = hashlib.sha256(rows.hash_rows(seed=0).to_numpy().tobytes())
    digest.update(str(rows.schema).encode())
    return f"rows {rows.height} sha256 {digest.hexdigest()[:16]}"


def export_parts(
    name: str,
    parts: Sequence[tuple[Part, Callable[[], pl.DataFrame]]],
    out_dir: Path,
    config: ExportConfig = ExportConfig(),
    card: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``out_dir/<name>/parts/``: one folder per source part with its ``train.parquet`` and
    ``test.parquet``, and a manifest written last. A part already exported from the same
    source part (name and tag) under the same split fraction is kept as it is, without calling
    its loader; the others are built from their loader. So a part's tag must change whenever
    its loader's rows do (``rows_tag``): a tag that names only where the rows came from keeps
    a stale export for good. The split is by id hash, so a row's split never depends on other
    parts. A whole export's files (``train.parquet``, ``hf/``) are removed once the manifest
    is in place. Returns counts and paths for metadata."""
    target = out_dir / name
    folder = target / PARTS
    base = read_manifest(folder)
    known = {(p.name, p.tag): p for p in base.parts} if base is not None else {}
    entries, new = [], {}
    for part, load in parts:
        tag = f"{part.tag}|eval {config.eval_fraction}"
        if (part.name, tag) in known:
            entries.append(known[(part.name, tag)])
            continue
        rows = load().with_columns(split=split_expr(config.eval_fraction))
        frames = {s: rows.filter(pl.col("split") == s).drop("split") for s in SPLITS}
        by_source = dict(rows.group_by("source").len().sort("source").iter_rows())
        stats = {**{s: frames[s].height for s in SPLITS}, "by_source": by_source}
        entries.append(Part(part.name, tag, rows=rows.height, stats=stats))
        new[part.name] = frames
    table = write_parts(folder, PartUpdate(entries, new, base, SPLITS))
    for stale in ("train.parquet", "test.parquet"):
        (target / stale).unlink(missing_ok=True)
    shutil.rmtree(target / "hf", ignore_errors=True)
    summary: dict[str, Any] = {
        "name": name,
        "rows": {s: sum(p.stats.get(s, 0) for p in table.parts) for s in SPLITS},
        "by_source": dict(sorted(table.summed("by_source").items())),
        "path": str(target),
        "hf_path": str(folder),
        "parts_written": list(new),
    }
    (target / "README.md").write_text(dataset_card(name, {**summary, **(card or {})}))
    return summary
