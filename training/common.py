"""What every training stage shares: tokenizer and data loading, training arguments, metrics
and MFU, and running out of memory or disk. A run's identity, folder and lineage are in
``training.runs``."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import importlib.util
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from training.datafiles import content_digest, files_digest, locate_dataset
from training.reporting import Reporter
from training.runs import last_run_checkpoint
from training.stages import SHARED_OUTPUT_DIR

CODE_ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    """Settings every stage has.

    Attributes:
        output_dir: the stage's folder: ``runs/`` (resumable trainer state) and ``checkpoint/``
            (the published checkpoint with lineage.json).
        max_steps: optimizer steps in this stage.
        per_device_train_batch_size: sequences per step and device.
        gradient_accumulation_steps: micro-batches per optimizer step.
        learning_rate: peak learning rate.
        max_length: tokens per sequence; longer examples are truncated and counted.
        save_steps: steps between resumable saves.
        logging_steps: steps between metric records.
        seed: data order and initialisation.
        bf16: bfloat16 mixed precision (GPU).
        gradient_checkpointing: recompute activations in the backward pass: less memory, about
            a third more compute; off by default because our models are small.
        optim: a transformers optimizer name; ``adamw_torch_fused`` runs one kernel per step
            on a GPU instead of one per parameter.
        torch_compile: compile the model with ``torch.compile``, block by block (regional
            compilation): the decoder layers share one compiled graph, so compiling a 24-layer
            model costs about what one layer does (374M on the CPU, empty cache: 27 s against
            53 s for the whole graph, and no slower a step; ``bench/compile_warmup.py``). For
            the GPU; the first steps pay for it.
        use_liger_kernel: Liger's Triton kernels (RMSNorm, SwiGLU, RoPE and, above all, the
            fused linear cross-entropy that never materialises the vocabulary-sized logits);
            needs a GPU and the ``liger-kernel`` package.
        use_cpu: force the CPU even when a GPU is present.
        torch_threads: CPU threads for torch (unset: torch's default). On a small shared CPU
            one thread is often faster for tiny models, whose ops are too small to split.
        resume: continue from the last saved step in ``runs/`` when there is one.
        inputs: what the caller knows of the input datasets (asset key, data version, rows),
            copied into lineage.json.
    """

    output_dir: str = SHARED_OUTPUT_DIR
    max_steps: int = 20
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    max_length: int = 128
    save_steps: int = 10
    logging_steps: int = 2
    seed: int = 0
    bf16: bool = False
    gradient_checkpointing: bool = False
    optim: str = "adamw_torch_fused"
    torch_compile: bool = False
    use_liger_kernel: bool = False
    use_cpu: bool = False
    torch_threads: int | None = None
    resume: bool = True
    inputs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Settings no run can use, refused when the config is built (a recipe names its file,
        section and key) instead of inside a trainer: ``max_steps: 0`` published the starting
        weights as a trained stage, a zero batch size failed in transformers' sampler after
        every model was loaded. Each stage's own ``__post_init__`` calls this first."""
        at_least("max_steps", self.max_steps, 1)
        at_least("per_device_train_batch_size", self.per_device_train_batch_size, 1)
        at_least("gradient_accumulation_steps", self.gradient_accumulation_steps, 1)
        at_least("learning_rate", self.learning_rate, 0)
        at_least("max_length", self.max_length, 1)
        at_least("save_steps", self.save_steps, 1)
        at_least("logging_steps", self.logging_steps, 1)
        if self.torch_threads is not None:
            at_least("torch_threads", self.torch_threads, 1)
        outside_output_dir(self)


# The checkpoints a stage reads, by the config keys that name them.
READ_CHECKPOINTS = ("init_from", "reward_model", "reference")


def outside_output_dir(config: Any) -> None:
    """A stage publishes into ``output_dir`` (``checkpoint/``, ``runs/``): a checkpoint it reads
    from there is replaced by its own output, and its lineage then names itself as its parent.
    Two stages run by hand with one ``output_dir`` did exactly that."""
    out = Path(config.output_dir).resolve()
    for key in READ_CHECKPOINTS:
        value = getattr(config, key, None)
        if not value or str(value).startswith("<"):  # unset, or a launcher's placeholder
            continue
        read = Path(value).resolve()
        if read == out or out in read.parents:
            raise ValueError(
                f"{key}: {value} lies inside output_dir {config.output_dir}, where this stage "
                "publishes its own checkpoint; give the stage another output_dir"
            )


def at_least(key: str, value: float, minimum: float) -> None:
    """Raise ValueError naming ``key`` unless ``value`` is a finite number >= ``minimum``."""
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= minimum):
        raise ValueError(f"{key}: must be >= {minimum}, got {value!r}")


def above(key: str, value: float, bound: float) -> None:
    """Raise ValueError naming ``key`` unless ``value`` is a finite number > ``bound``."""
    if not (isinstance(value, int | float) and math.isfinite(value) and value > bound):
        raise ValueError(f"{key}: must be > {bound}, got {value!r}")


def load_training_tokenizer(source: str | Path, max_length: int = 2048):
    """Our tokenizer.json (wrapped with the chat template) or a transformers tokenizer folder,
    local or a hub id found in the cache."""
    from training.tokenizer import load_tokenizer, resolve_tokenizer_source, to_transformers

    path = resolve_tokenizer_source(source)
    if path.is_dir() and (path / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(path))
        except Exception as error:  # the tokenizers library raises bare Exceptions
            raise ValueError(
                f"{path}: the tokenizer cannot be loaded ({first_line(error)}); its "
                "tokenizer.json or tokenizer_config.json is damaged"
            ) from error
    return to_transformers(load_tokenizer(path), model_max_length=max_length)


def load_splits(path: str | Path, required: Sequence[str] = ()):
    """A ``save_to_disk`` DatasetDict, a dataset exported by parts (``parts/`` with one
    train/test Parquet pair per drop and ``_manifest.json``: curation.datasets.export_parts),
    or a folder with train.parquet / test.parquet (``training.datafiles.locate_dataset``).

    A train split with no rows, and a split lacking a ``required`` column or holding nulls in
    one, are refused naming ``path``: the libraries say only ``Instruction "train" corresponds
    to no data!`` or raise a KeyError from inside a trainer. An empty test split is left out."""
    import datasets

    located = locate_dataset(path)
    if located.kind == "saved":
        # In memory, so the trainers' map() calls write no cache files into the input folder
        # (a dataset asset's folder must stay as its asset wrote it).
        splits = datasets.load_from_disk(str(located.root), keep_in_memory=True)
        if "train" in splits and len(splits["train"]) == 0:
            raise ValueError(f"{path}: the train split has no rows")
    else:
        # datasets refuses a split whose files hold no rows rather than give an empty one
        files = {s: [f for f in fs if parquet_rows(f)] for s, fs in located.files.items()}
        if not files.get("train"):
            raise ValueError(f"{path}: the train split has no rows")
        try:
            splits = datasets.load_dataset(
                "parquet", data_files={s: f for s, f in files.items() if f}
            )
        except Exception as error:  # datasets' DatasetGenerationError names no file
            mismatch = schema_mismatch(path, [f for fs in files.values() for f in fs])
            if mismatch is None:
                raise
            raise ValueError(mismatch) from error
    check_columns(path, splits, required)
    return splits


def schema_mismatch(path: str | Path, files: Sequence[str | Path]) -> str | None:
    """Which two files disagree on a column (one conversational split and one plain-text, a
    column one lacks), or None when every file has the first one's columns and types."""
    import pyarrow.parquet as pq

    def columns(file: str | Path) -> dict[str, Any]:
        return {f.name: f.type for f in pq.read_schema(file)}

    if not files:
        return None
    first, reference = files[0], columns(files[0])
    for other in files[1:]:
        theirs = columns(other)
        differ = [
            f"{name}: {reference.get(name, 'missing')} vs {theirs.get(name, 'missing')}"
            for name in sorted(set(reference) | set(theirs))
            if str(reference.get(name)) != str(theirs.get(name))
        ]
        if differ:
            return (
                f"{path}: {first} and {other} have different schemas ({'; '.join(differ)}); "
                "every split must have the same columns and types"
            )
    return None


def parquet_rows(file: str | Path) -> int:
    """Rows in a Parquet file, from its footer."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(file).metadata.num_rows
    except Exception as error:  # pyarrow's ArrowInvalid, or an OSError
        raise ValueError(f"{file}: not a readable Parquet file ({error})") from None


def check_columns(path: str | Path, splits: Mapping[str, Any], required: Sequence[str]) -> None:
    """Every split has each ``required`` column, none of its values null."""
    for name, split in splits.items():
        missing = [c for c in required if c not in split.column_names]
        if missing:
            raise ValueError(
                f"{path}: the {name} split lacks column(s) {missing} (it has "
                f"{sorted(split.column_names)})"
            )
        for column in required:
            nulls = split.data.column(column).null_count
            if nulls:
                raise ValueError(
                    f"{path}: {nulls} of the {len(split)} rows of the {name} split have a null "
                    f"{column!r}"
                )


def data_digests(data: str | Path, tokenizer: str | Path | None) -> tuple[str, str]:
    """The dataset's content digest (lineage's ``data_sha256``) and what a run's fingerprint
    hashes of its inputs: that digest, plus the tokenizer's files when the stage takes its
    tokenizer from the recipe rather than from a parent checkpoint (whose lineage pins it), so
    a tokenizer rebuilt at the same path trains a fresh model again."""
    from training.tokenizer import resolve_tokenizer_source

    data_sha256 = content_digest(data)
    if tokenizer is None:
        return data_sha256, data_sha256
    return data_sha256, f"{data_sha256} {files_digest(resolve_tokenizer_source(tokenizer))}"


def ids_left_out(offered: Any, used: Any, column: str = "id") -> list[str] | None:
    """The ids of ``offered`` rows a stage did not train on (``used`` is what it trained on),
    sorted, for lineage: a forward trace must not claim a checkpoint learnt from them. None
    when ``used`` has no ids to compare."""
    if column not in offered.column_names:
        return []
    if column not in used.column_names:
        return None
    kept = {str(i) for i in used[column]}
    return sorted({str(i) for i in offered[column]} - kept)


def left_out_entry(offered: Any, used: Any) -> dict[str, list[str]]:
    """``{"row_ids_left_out": [...]}`` for a lineage's inputs, or nothing when unknown."""
    left_out = ids_left_out(offered, used)
    return {} if left_out is None else {"row_ids_left_out": left_out}


def ids_digest(dataset: Any, column: str = "id") -> str:
    """A hash of the row ids a stage trained on: lineage can prove which rows were used."""
    if column not in dataset.column_names:
        return ""
    digest = hashlib.sha256()
    for row_id in sorted(dataset[column]):
        digest.update(str(row_id).encode() + b"\n")
    return digest.hexdigest()


def training_arguments(
    config: RunConfig, runs: Path, args_class: type | None = None, **overrides: Any
):
    """Trainer arguments every stage shares; ``args_class`` is a TrainingArguments subclass
    (TRL's SFTConfig, DPOConfig...) and ``overrides`` its stage-specific settings."""
    from transformers import TrainingArguments

    if config.use_liger_kernel and importlib.util.find_spec("liger_kernel") is None:
        # transformers would only notice when the trainer is built, after the model is loaded
        raise ValueError(
            "use_liger_kernel: true needs the liger-kernel package (pip install liger-kernel) "
            "and a GPU; it is not installed here"
        )
    values = dict(
        output_dir=str(runs),
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        save_steps=config.save_steps,
        save_total_limit=2,
        logging_steps=config.logging_steps,
        seed=config.seed,
        data_seed=config.seed,
        bf16=config.bf16,
        optim=config.optim,
        torch_compile=config.torch_compile,
        use_liger_kernel=config.use_liger_kernel,
        use_cpu=config.use_cpu,
        report_to=[],
        # transformers logs a NaN/inf loss as 0.0 by default, which would hide it from the
        # NaN stop in MetricsCallback.
        logging_nan_inf_filter=False,
        dataloader_num_workers=0,
        # Batches are pinned (transformers' default on a GPU) and copied to the device
        # without waiting: a blocking copy waits for every queued kernel, once a step.
        accelerator_config={"non_blocking": not config.use_cpu},
        disable_tqdm=True,
    )
    args_class = args_class or TrainingArguments
    # transformers 5.2x renamed gradient_checkpointing (TRL defaults it on) to
    # activation_checkpointing; earlier 5.x, such as a GPU image's, know only the old name.
    names = {f.name for f in dataclasses.fields(args_class)}
    renamed = "activation_checkpointing" in names
    checkpointing = "activation_checkpointing" if renamed else "gradient_checkpointing"
    values[checkpointing] = config.gradient_checkpointing
    values.update(overrides)
    if config.torch_compile:
        # transformers hands its compile settings to accelerate through these variables; this
        # one makes accelerate compile the repeated decoder blocks once instead of the whole
        # graph, which a short GPU lease cannot afford to wait for.
        os.environ["ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION"] = "1"
    return args_class(**values)


# Dense bf16 peak FLOP/s by GPU name, most specific first (an "H100 PCIe" is also an "H100").
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
)


def peak_flops(device_name: str) -> float | None:
    """The GPU's dense bf16 peak, or None for a device we have no figure for (and the CPU)."""
    return next((peak for name, peak in PEAK_BF16_FLOPS if name in device_name), None)


def model_flops_utilization(parameters: int, tokens_per_s: float, peak: float) -> float:
    """MFU as the plain-TRL baseline counts it: 6 FLOPs per parameter per token (forward and
    backward), attention's own FLOPs left out, over the device's peak."""
    return 6 * parameters * tokens_per_s / peak


class TokensCountedOnHost:
    """A transformers Trainer mixin: ``num_input_tokens_seen`` without a device round trip.

    transformers sums each batch's token count on the device and reads it back (``.item()``),
    which makes the host wait for every queued kernel once a step. One process counting every
    input id (the "all" mode the stages ask for) needs neither: the count is the batch's shape.
    """

    def _track_num_input_tokens(self, inputs: dict) -> None:
        name = getattr(self.model, "main_input_name", "input_ids")
        one_process = self.accelerator.num_processes == 1
        if one_process and self.args.include_num_input_tokens_seen == "all" and name in inputs:
            self.state.num_input_tokens_seen += inputs[name].numel()
            return
        super()._track_num_input_tokens(inputs)


class MetricsCallback(TrainerCallback):
    """Loss curve, tokens/s and (on a GPU we know the peak of) MFU into metrics.jsonl; stops
    the run at a non-finite loss, so the last good checkpoint stays the latest and the stage
    can say which step went wrong.

    ``tokens_per_s`` is the rate of all processes together since the previous training log
    (the first includes start-up and compilation), on training logs only: an evaluation or
    the end-of-training summary trains nothing (unless no training log came before it). It
    counts input positions, so the padding of
    a packed SFT batch to its fixed shape counts too (bench/ counts labelled tokens). MFU
    divides it by every process's device.
    """

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.since, self.tokens_before = time.perf_counter(), 0.0
        self.nan_step: int | None = None
        self.parameters, self.peak = 0, None
        self.rated = False  # whether a training log of this process recorded tokens/s

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        # A resumed run restores tokens seen before it; only this process's tokens count
        # against this process's time.
        self.since = time.perf_counter()
        self.tokens_before = float(state.num_input_tokens_seen or 0)
        if model is not None and torch.cuda.is_available() and not args.use_cpu:
            self.parameters = sum(p.numel() for p in model.parameters())
            self.peak = peak_flops(torch.cuda.get_device_name(0))
        return control

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        # The last step is always logged: the whole-run loss of a run restored from its last
        # save (runs.train_or_restore) is read from the log history, which must reach its end
        # when logging_steps does not divide max_steps.
        if state.global_step >= state.max_steps:
            control.should_log = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        logs = dict(logs or {})
        loss = logs.get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.nan_step = state.global_step
            control.should_training_stop = True
            control.should_save = False
        tokens = float(state.num_input_tokens_seen or 0)
        record = {"step": state.global_step, **logs, "tokens_seen": tokens}
        now = time.perf_counter()
        # a run shorter than its logging interval gets its rate from the summary instead
        measure = loss is not None or ("train_runtime" in logs and not self.rated)
        if measure and now > self.since and tokens > self.tokens_before:
            self.rated = True
            record["tokens_per_s"] = (tokens - self.tokens_before) / (now - self.since)
            if self.peak:
                devices = getattr(args, "world_size", 1)
                record["mfu"] = model_flops_utilization(
                    self.parameters, record["tokens_per_s"], self.peak * devices
                )
        if loss is not None:
            self.since, self.tokens_before = now, tokens
        self.reporter.metrics(record)
        return control


class ResourceError(RuntimeError):
    """Out of memory or disk, with where it happened and what is safe to resume from."""


# How a full disk surfaces from the writers a save goes through: OSError from Python, Rust's
# io::Error from safetensors, a failed stream write from torch.save (which never says why).
DISK_FULL_SIGNS = ("no space left", "os error 28", "storagefull", "disk quota exceeded")
FAILED_WRITE_SIGNS = ("file write failed", "unexpected pos")
# torch's CPU allocator raises a plain RuntimeError rather than MemoryError.
HOST_MEMORY_SIGNS = ("defaultcpuallocator: can't allocate memory", "cannot allocate memory")
# A GPU out of memory outside torch's caching allocator (cuBLAS handles, a kernel launch,
# NCCL) is a plain RuntimeError too, and so is one re-raised by torch.compile.
DEVICE_MEMORY_SIGNS = (
    "cuda error: out of memory",
    "cublas_status_alloc_failed",
    "cuda out of memory",
)


@contextlib.contextmanager
def resource_errors(stage: str, runs: Path, step: Callable[[], int] = lambda: -1):
    """Turn an out-of-memory or out-of-disk failure into one sentence that says which resource,
    where, and which saved state is intact (checkpoints are published atomically, and a save
    cut off in ``runs/`` is never resumed from, so a crash never leaves a broken latest)."""
    try:
        yield
    except ResourceError:
        raise
    except Exception as error:
        if (out_of_memory := device_memory_error(error)) is not None:
            device = "GPU" if torch.cuda.is_available() else "CPU"
            raise ResourceError(
                f"{stage}: out of {device} memory at step {step()}; resume from "
                f"{last_run_checkpoint(runs) or 'scratch'} with a smaller batch or max_length "
                f"({first_line(out_of_memory)})"
            ) from error
        kind = resource_kind(error)
        if kind is None:
            raise
        last = last_run_checkpoint(runs) or "none"
        if kind == "host memory":
            raise ResourceError(
                f"{stage}: out of host memory at step {step()}; last good state: {last}"
            ) from error
        where = runs.parent if runs.parent.exists() else Path(".")
        free = shutil.disk_usage(where).free / 2**20
        what = WRITE_FAILURES.get(kind, "a write failed (disk full?)")
        raise ResourceError(
            f"{stage}: {what} writing under {runs.parent} ({free:.0f} MiB free); last good "
            f"state: {last} ({first_line(error)})"
        ) from error


def device_memory_error(error: BaseException) -> BaseException | None:
    """The out-of-memory error of torch's allocator or of a library beside it (cuBLAS, a kernel
    launch, NCCL), raised as such or as the declared cause of another (torch.compile re-raises).
    An error merely raised while handling one (``__context__``) is its own failure."""
    for _ in range(16):
        message = str(error).lower()
        if isinstance(error, torch.OutOfMemoryError) or any(
            sign in message for sign in DEVICE_MEMORY_SIGNS
        ):
            return error
        if error.__cause__ is None:
            return None
        error = error.__cause__
    return None


# What each kind of failed write is called in the stage's one-line error.
WRITE_FAILURES = {
    "disk": "out of disk space",
    "read-only": "the file system turned read-only",
    "permission": "permission was denied",
}


def resource_kind(error: BaseException) -> str | None:
    """``disk``, ``host memory``, ``read-only``, ``permission``, ``write`` (a failed write
    that does not say why) or None.
    The whole chain of causes is read first: torch.save reports a full disk as a stream
    position mismatch, with the OSError that says why only in its context."""
    chain = []
    while error is not None and len(chain) < 16:
        chain.append(error)
        error = error.__cause__ or error.__context__
    for link in chain:
        message = str(link).lower()
        if isinstance(link, MemoryError) or any(s in message for s in HOST_MEMORY_SIGNS):
            return "host memory"
        if isinstance(link, OSError) and link.errno in (errno.ENOSPC, errno.EDQUOT):
            return "disk"
        # a disk remounted read-only (or a folder whose rights changed) mid-run: as
        # unwritable as a full one, and the last good save is what the operator needs
        if isinstance(link, OSError) and link.errno == errno.EROFS:
            return "read-only"
        if isinstance(link, OSError) and link.errno == errno.EACCES:
            return "permission"
        if any(sign in message for sign in DISK_FULL_SIGNS):
            return "disk"
    if any(sign in str(link).lower() for link in chain for sign in FAILED_WRITE_SIGNS):
        return "write"
    return None


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__
