"""Candidate answers for AI (or human) feedback: for each prompt of ``prompt_dataset``, N sampled
outputs from one or more checkpoints, each keeping where it came from (checkpoint, sampling
settings, sample index), so a ranking can later be traced back to the policy that produced it.

Sampling is seeded per (checkpoint, batch of prompts): the same config on the same device gives
the same candidates, and a killed run regenerates nothing it already wrote, because every batch
lands in its own shard, written atomically, before the next starts. Shards are reused only for
the same settings and the same checkpoints (by lineage: one republished at the same path is
new), and a shard row only for the same prompt: each row carries the digest of its prompt's id
and messages, so a refresh that adds prompts samples the new ones alone, and an edit under the
same id is sampled again. (One digest over the whole prompt list made every new prompt discard
every shard, so the judge paid again for every set.) ``candidates.parquet`` is assembled from
the shards at the end (pyarrow, temp file + rename); existing completions of the sources
(UltraFeedback, OpenAssistant siblings, reference answers) are merged in later by
``curation.feedback`` (this module must not import polars).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from training.checkpoint import OPTIMIZER_TENSORS, verify
from training.common import load_splits, load_training_tokenizer
from training.datafiles import files_digest
from training.files import write_atomic_text
from training.ranks import (
    is_main_process,
    join_process_group,
    local_device,
    rank,
    sum_over_ranks,
    wait_for_everyone,
    world_size,
)
from training.reporting import Reporter
from training.runs import lineage_sha256

MIN_CANDIDATES = 2
MAX_CANDIDATES = 9  # what a listwise judge (or a person) can rank in one go
OUTPUT = "candidates.parquet"
SHARDS = "shards"
MANIFEST = "manifest.json"

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
CANDIDATE = pa.struct(
    [
        ("candidate_id", pa.string()),
        ("text", pa.string()),
        ("origin", pa.string()),
        ("model", pa.string()),
        ("sampling", pa.string()),
    ]
)
# A prompt too long to sample is a row with no candidates: it is settled, not pending.
SHARD_SCHEMA = pa.schema(
    [("id", pa.string()), ("prompt_sha256", pa.string()), ("candidates", pa.list_(CANDIDATE))]
)
# The shared data model's candidates table (reference and answer are filled by curation).
CANDIDATES_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("prompt", pa.list_(MESSAGE)),
        ("reference", pa.string()),
        ("answer", pa.string()),
        ("candidates", pa.list_(CANDIDATE)),
    ]
)


@dataclass(frozen=True)
class CandidatesConfig:
    """Sampling candidate answers (the ``candidates`` stage).

    Attributes:
        prompt_dataset: the ``prompt_dataset`` folder (train/test Parquet with ``id``,
            ``source``, ``prompt`` as messages, or a ``save_to_disk`` folder).
        checkpoints: published checkpoint directories to sample from (the SFT checkpoint in
            recipes); each is verified before any work.
        output_dir: where ``candidates.parquet``, ``shards/`` and ``metrics.jsonl`` go.
        num_candidates: outputs per prompt over all checkpoints, 2..9; split as evenly as
            possible, earlier checkpoints taking the remainder.
        temperature: sampling temperature (> 0: greedy decoding would repeat one answer).
        top_p: nucleus sampling mass, in (0, 1].
        max_new_tokens: answer length cap.
        max_prompt_length: prompts longer than this (in tokens, with the chat template) are
            skipped and counted rather than truncated, which would change the question.
        batch_size: prompts per generation batch (left-padded); also the shard size.
        seed: seeds each (checkpoint, batch); same seed and batch_size give the same outputs.
        splits: which splits of the prompt dataset to answer.
        max_prompts: answer only the first N prompts (demo and tests); None for all.
        dtype: ``float32`` or ``bfloat16``.
        use_cpu: stay on the CPU even when a GPU is present.
        resume: keep the shards of an earlier run with the same settings.
        inputs: what the caller knows of the inputs (asset key, data version), reported back.
    """

    prompt_dataset: str = ""
    checkpoints: list[str] = field(default_factory=list)
    output_dir: str = "outputs/candidates"
    num_candidates: int = 4
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 64
    max_prompt_length: int = 512
    batch_size: int = 8
    seed: int = 0
    splits: list[str] = field(default_factory=lambda: ["train"])
    max_prompts: int | None = None
    dtype: str = "float32"
    use_cpu: bool = False
    resume: bool = True
    inputs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.prompt_dataset:
            raise ValueError("prompt_dataset: the prompt dataset folder is required")
        if not self.checkpoints:
            raise ValueError("checkpoints: name at least one checkpoint to sample from")
        if not MIN_CANDIDATES <= self.num_candidates <= MAX_CANDIDATES:
            raise ValueError(
                f"num_candidates: expected {MIN_CANDIDATES}..{MAX_CANDIDATES}, "
                f"got {self.num_candidates}"
            )
        if len(self.checkpoints) > self.num_candidates:
            raise ValueError(
                f"checkpoints: {len(self.checkpoints)} checkpoints but num_candidates is "
                f"{self.num_candidates}; each checkpoint needs at least one candidate"
            )
        if not self.temperature > 0:
            raise ValueError(f"temperature: expected > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: expected a value in (0, 1], got {self.top_p}")
        for name in ("max_new_tokens", "max_prompt_length", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        unknown = [s for s in self.splits if s not in ("train", "test")]
        if not self.splits or unknown:
            raise ValueError(
                f"splits: expected a non-empty subset of train, test; got {self.splits}"
            )
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ValueError(f"max_prompts: expected >= 1 or null, got {self.max_prompts}")


def samples_per_checkpoint(num_candidates: int, checkpoints: int) -> list[int]:
    """``num_candidates`` split over the checkpoints, the first ones taking the remainder."""
    base, extra = divmod(num_candidates, checkpoints)
    return [base + (1 if i < extra else 0) for i in range(checkpoints)]


# How a sampled candidate's id names its model (see ``weights_stamp``); in each shard manifest.
CANDIDATE_IDS = "weights-sha256"
# How shards are keyed: by prompt digest per row. Folders of the batch-position layout go.
SHARD_LAYOUT = "prompt-sha256-rows"


def candidate_id(origin: str, model: str, sampling: str, text: str) -> str:
    """Stable hash of a candidate's text and origin; equals
    ``curation.schema.stable_id(origin, f"{model}\\x1f{sampling}\\x1f{text}")``."""
    key = f"{origin}\x1f{model}\x1f{sampling}\x1f{text}"
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def batch_seed(seed: int, checkpoint: int, batch: int | str) -> int:
    digest = hashlib.blake2b(f"{seed}:{checkpoint}:{batch}".encode(), digest_size=4).digest()
    return int.from_bytes(digest)


def batch_key(first_position: int, batch_size: int) -> int | str:
    """What seeds a batch: its index when it starts on a multiple of ``batch_size`` in the
    prompt list (every batch of a first run, and of a resume, which continues whole batches:
    both sample what an unbroken run samples), else the position of its first prompt (a
    refresh's new prompts), so no two batches of one list share a seed."""
    if first_position % batch_size == 0:
        return first_position // batch_size
    return f"at{first_position}"


def load_prompts(config: CandidatesConfig) -> list[dict[str, Any]]:
    """Rows with ``id``, ``source`` and ``prompt`` from the requested splits, in file order."""
    splits = load_splits(config.prompt_dataset)
    rows: list[dict[str, Any]] = []
    for name in config.splits:
        if name not in splits:
            continue
        split = splits[name]
        missing = [c for c in ("id", "prompt") if c not in split.column_names]
        if missing:
            raise ValueError(
                f"{config.prompt_dataset}: split {name!r} has no column {', '.join(missing)}"
            )
        sources = split["source"] if "source" in split.column_names else [None] * len(split)
        for index, (row_id, source, prompt) in enumerate(
            zip(split["id"], sources, split["prompt"], strict=True)
        ):
            if not prompt or not all(isinstance(m, dict) and "role" in m for m in prompt):
                raise ValueError(
                    f"{config.prompt_dataset}: split {name!r} row {index} (id {row_id}): "
                    "prompt: expected a list of {role, content} messages"
                )
            rows.append({"id": str(row_id), "source": source, "prompt": list(prompt)})
    if config.max_prompts is not None:
        rows = rows[: config.max_prompts]
    if not rows:
        raise ValueError(f"{config.prompt_dataset}: no prompts in splits {config.splits}")
    return rows


def checkpoint_stamp(checkpoint: str) -> str:
    """What names a checkpoint's weights beyond its path: the digest of its lineage (a new one
    whenever a stage publishes again, even at the same path), else of its config and weights."""
    stamp = lineage_sha256(checkpoint)
    return stamp if stamp is not None else weights_stamp(checkpoint)


def weights_stamp(checkpoint: str) -> str:
    """sha256 of a checkpoint's config and safetensors by content, wherever it lies. Candidate
    ids hash this rather than the path (or the lineage, which names paths): the preference split
    and the order pairs train in follow the ids, so a checkout in another folder must get the
    same ones for the demo's numbers to reproduce. Optimizer state is not the model: a stable
    checkpoint published with it samples what one without it does."""
    folder = Path(checkpoint)
    weights = sorted(f for f in folder.glob("*.safetensors") if f.name != OPTIMIZER_TENSORS)
    files = [folder / "config.json", *weights]
    return hashlib.sha256(
        "\n".join(files_digest(f) for f in files if f.is_file()).encode()
    ).hexdigest()


def prompt_sha256(row: dict) -> str:
    """A prompt's id and messages: an edited prompt under the same id must not be paired with
    answers sampled for its old text."""
    payload = [row["id"], row["prompt"]]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def manifest(config: CandidatesConfig, checkpoints: Sequence[str]) -> dict:
    """What every shard's content depends on; a run reuses shards only when it matches (each
    row then by its prompt's digest). Checkpoints count by path and by lineage, and
    ``candidate_ids`` names how ids are made: shards from before ids hashed the weights are
    not reused."""
    return {
        "candidate_ids": CANDIDATE_IDS,
        "shard_layout": SHARD_LAYOUT,
        "checkpoints": list(checkpoints),
        "checkpoint_stamps": [checkpoint_stamp(c) for c in checkpoints],
        "num_candidates": config.num_candidates,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "max_new_tokens": config.max_new_tokens,
        "max_prompt_length": config.max_prompt_length,
        "batch_size": config.batch_size,
        "seed": config.seed,
        "dtype": config.dtype,
    }


def prepare_shards(shards: Path, expected: dict, resume: bool, reporter: Reporter) -> None:
    path = shards / MANIFEST
    if shards.exists():
        previous = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
        if resume and previous == expected:
            return
        if not resume:
            reason = "resume is off"
        elif not isinstance(previous, dict):
            reason = f"no {MANIFEST} says what they were made from"
        else:
            keys = sorted({*expected, *previous})
            changed = [k for k in keys if previous.get(k) != expected.get(k)]
            reason = f"changed since: {', '.join(changed)}"
        reporter.log(f"candidates: discarding earlier shards in {shards} ({reason})")
        shutil.rmtree(shards)
    shards.mkdir(parents=True)
    write_atomic_text(path, json.dumps(expected, indent=2, sort_keys=True))


def write_table(table: pa.Table, path: Path) -> Path:
    """Parquet written beside the target and renamed over it: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def shard_path(shards: Path, checkpoint: int, digests: Sequence[str]) -> Path:
    """Named by the prompts it answers, so a batch of other prompts never lands on it."""
    name = hashlib.blake2b("\n".join(digests).encode(), digest_size=8).hexdigest()
    return shards / f"c{checkpoint:02d}-{name}.parquet"


def settled_rows(shards: Path, checkpoint: int) -> dict[str, list[dict]]:
    """Prompt digest -> candidates for every row the checkpoint's shards hold (an empty list for
    a prompt skipped as too long); the first shard naming a digest wins."""
    settled: dict[str, list[dict]] = {}
    for shard in sorted(shards.glob(f"c{checkpoint:02d}-*.parquet")):
        for row in pq.read_table(shard, columns=["prompt_sha256", "candidates"]).to_pylist():
            settled.setdefault(row["prompt_sha256"], row["candidates"])
    return settled


@dataclass(frozen=True)
class PendingBatch:
    """Prompts one checkpoint has yet to answer, in prompt-list order, and their seed key."""

    checkpoint: int
    rows: list[dict]
    digests: list[str]
    key: int | str


def pending_batches(
    rows: list[dict], checkpoints: int, batch_size: int, shards: Path
) -> list[PendingBatch]:
    """Every checkpoint's unanswered prompts cut into batches of ``batch_size``."""
    digests = [prompt_sha256(row) for row in rows]
    batches = []
    for index in range(checkpoints):
        settled = settled_rows(shards, index)
        todo = [i for i, digest in enumerate(digests) if digest not in settled]
        for start in range(0, len(todo), batch_size):
            part = todo[start : start + batch_size]
            batches.append(
                PendingBatch(
                    index,
                    [rows[i] for i in part],
                    [digests[i] for i in part],
                    batch_key(part[0], batch_size),
                )
            )
    return batches


def encode_prompts(tokenizer: Any, rows: list[dict], max_length: int) -> tuple[list, list[str]]:
    """Chat-templated prompt texts of the rows that fit, and the ids of those that do not."""
    kept, too_long = [], []
    for row in rows:
        text = tokenizer.apply_chat_template(
            row["prompt"], tokenize=False, add_generation_prompt=True
        )
        length = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if length > max_length:
            too_long.append(row["id"])
        else:
            kept.append((row, text))
    return kept, too_long


def sample(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    count: int,
    config: CandidatesConfig,
    seed: int,
) -> list[list[str]]:
    """``count`` sampled answers per prompt text (left padding keeps the answers aligned)."""
    import torch

    tokenizer.padding_side = "left"
    encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    encoded = {k: v.to(model.device) for k, v in encoded.items()}
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    with torch.no_grad():
        output = model.generate(
            **encoded,
            do_sample=True,
            temperature=config.temperature,
            top_p=config.top_p,
            top_k=0,
            max_new_tokens=config.max_new_tokens,
            num_return_sequences=count,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    new_tokens = output[:, encoded["input_ids"].shape[1] :]
    decoded = [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    # generate() repeats each prompt ``count`` times in place: rows are prompt-major.
    return [decoded[i * count : (i + 1) * count] for i in range(len(texts))]


def candidate_rows(
    answers: list[str], checkpoint: str, stamp: str, config: CandidatesConfig, first_sample: int
) -> list[dict[str, str]]:
    """``model`` keeps the checkpoint's path for people; the id hashes its ``weights_stamp``."""
    rows = []
    for offset, text in enumerate(answers):
        sampling = json.dumps(
            {
                "temperature": config.temperature,
                "top_p": config.top_p,
                "seed": config.seed,
                "max_new_tokens": config.max_new_tokens,
                "sample": first_sample + offset,
            },
            sort_keys=True,
        )
        rows.append(
            {
                "candidate_id": candidate_id("model", stamp, sampling, text),
                "text": text,
                "origin": "model",
                "model": checkpoint,
                "sampling": sampling,
            }
        )
    return rows


def load_model(checkpoint: str, config: CandidatesConfig):

    from training.models import ModelConfig, build_causal_lm

    tokenizer = load_training_tokenizer(checkpoint)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = build_causal_lm(ModelConfig(dtype=config.dtype), tokenizer, path=checkpoint)
    model.to(local_device(config.use_cpu)).eval()
    return model, tokenizer


def generate_shards(
    config: CandidatesConfig,
    checkpoints: list[str],
    rows: list[dict],
    shards: Path,
    reporter: Reporter,
) -> dict[str, int]:
    """Write a shard for every pending batch of this process's share; a checkpoint with nothing
    left to do is never loaded. Under several processes, pending batch ``j`` is rank
    ``j % world_size``'s, every rank having listed the pending batches before any writes, so
    no batch is done twice or skipped. Each batch has its own seed, so the shards are the same
    whatever the number of processes."""
    counts = samples_per_checkpoint(config.num_candidates, len(checkpoints))
    pending = pending_batches(rows, len(checkpoints), config.batch_size, shards)
    wait_for_everyone()  # every rank has listed what is pending before any shard is written
    mine = pending[rank() :: world_size()]
    stats = {
        "batches_generated": 0,
        "prompts_sampled": 0,
        # counted by one rank, not by each: the ranks' stats are summed
        "prompts_reused": 0
        if rank()
        else len(rows) * len(checkpoints) - sum(len(b.rows) for b in pending),
    }
    for index, checkpoint in enumerate(checkpoints):
        batches = [b for b in mine if b.checkpoint == index]
        if not batches:
            continue
        model, tokenizer = load_model(checkpoint, config)
        stamp = weights_stamp(checkpoint)
        first_sample = sum(counts[:index])
        for batch in batches:
            started = time.perf_counter()
            kept, too_long = encode_prompts(tokenizer, batch.rows, config.max_prompt_length)
            answers = (
                sample(
                    model,
                    tokenizer,
                    [text for _, text in kept],
                    counts[index],
                    config,
                    batch_seed(config.seed, index, batch.key),
                )
                if kept
                else []
            )
            sampled = {
                row["id"]: candidate_rows(texts, checkpoint, stamp, config, first_sample)
                for (row, _), texts in zip(kept, answers, strict=True)
            }
            table = pa.Table.from_pylist(
                [
                    {
                        "id": row["id"],
                        "prompt_sha256": digest,
                        "candidates": sampled.get(row["id"], []),
                    }
                    for row, digest in zip(batch.rows, batch.digests, strict=True)
                ],
                schema=SHARD_SCHEMA,
            )
            write_table(table, shard_path(shards, index, batch.digests))
            stats["batches_generated"] += 1
            stats["prompts_sampled"] += len(kept)
            reporter.metrics(
                {
                    "checkpoint": index,
                    "batch": batch.key,
                    "prompts": len(kept),
                    "skipped_too_long": len(too_long),
                    "seconds": time.perf_counter() - started,
                }
            )
        del model
    return stats


def assemble(rows: list[dict], checkpoints: int, shards: Path, target: Path) -> pa.Table:
    """One row per prompt with the candidates of every checkpoint, in checkpoint order; prompts
    skipped for length (no candidates) are left out, and so are shard rows of prompts no longer
    in the list (a refresh keeps them on disk; they cost nothing here)."""
    settled = [settled_rows(shards, index) for index in range(checkpoints)]
    table_rows = []
    for row in rows:
        digest = prompt_sha256(row)
        candidates = [c for by_digest in settled for c in by_digest.get(digest, [])]
        if candidates:
            table_rows.append(
                {
                    "id": row["id"],
                    "source": row["source"],
                    "prompt": [{"role": m["role"], "content": m["content"]} for m in row["prompt"]],
                    "reference": None,
                    "answer": None,
                    "candidates": candidates,
                }
            )
    table = pa.Table.from_pylist(table_rows, schema=CANDIDATES_SCHEMA)
    write_table(table, target)
    return table


def main(config: CandidatesConfig) -> Path:
    started = time.time()
    out = Path(config.output_dir)
    reporter = Reporter(out / "metrics.jsonl")
    checkpoints = [str(verify(path)) for path in config.checkpoints]
    rows = load_prompts(config)
    ids = [row["id"] for row in rows]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"{config.prompt_dataset}: prompt id {duplicate} appears more than once")
    shards = out / SHARDS
    join_process_group()
    try:
        if is_main_process():
            prepare_shards(shards, manifest(config, checkpoints), config.resume, reporter)
    finally:
        wait_for_everyone()  # no rank writes a shard before stale ones are gone
    reporter.log(
        f"candidates: {len(rows)} prompts x {config.num_candidates} from "
        f"{len(checkpoints)} checkpoint(s), batch {config.batch_size}, seed {config.seed}, "
        f"{world_size()} process(es)"
    )
    stats = sum_over_ranks(generate_shards(config, checkpoints, rows, shards, reporter))
    if not is_main_process():
        return out / OUTPUT  # the main process assembles once every shard is written
    table = assemble(rows, len(checkpoints), shards, out / OUTPUT)
    summary = {
        "path": str(out / OUTPUT),
        "prompts": table.num_rows,
        "candidates": sum(len(c) for c in table.column("candidates").to_pylist()),
        "skipped_too_long": len(rows) - table.num_rows,
        "batches_generated": stats["batches_generated"],
        # (prompt, checkpoint) answers sampled now and taken from earlier runs' shards
        "prompts_sampled": stats["prompts_sampled"],
        "prompts_reused": stats["prompts_reused"],
        "checkpoints": checkpoints,
        "seconds": round(time.time() - started, 3),
        **{f"input_{k}": v for k, v in config.inputs.items()},
    }
    reporter.log(f"candidates: wrote {summary['path']} {summary}")
    reporter.done(summary)
    reporter.close()
    return out / OUTPUT
