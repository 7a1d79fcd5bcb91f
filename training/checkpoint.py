"""Checkpoint directories: safetensors weights, tokenizer, config and lineage.json, published
atomically so a crash never leaves a half-written checkpoint where a later stage looks.

Optimizer state (handed from the stable to the decay phase) is stored as safetensors plus a JSON
file for the scalars, not as a pickle: loading it runs no code.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from training.ranks import is_main_process, wait_for_everyone

LINEAGE = "lineage.json"
WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
REQUIRED = ("config.json", "tokenizer.json", LINEAGE)
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_META = "optimizer.json"
# The training run's records (loss curve, speed), kept with the checkpoint they made: the
# stage's own metrics.jsonl is cut back by the next attempt, of whatever recipe.
METRICS = "metrics.jsonl"


class CheckpointError(ValueError):
    """A checkpoint directory that is missing or incomplete."""


def verify(path: str | Path) -> Path:
    """Fail early, naming what is missing, rather than deep inside from_pretrained; and a
    lineage.json that is not a JSON object, which a child would pin and ``postforge trace``
    only trip over later."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint directory does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path}: is a file, not a checkpoint directory")
    missing = [name for name in REQUIRED if not (path / name).exists()]
    if not any((path / name).exists() for name in WEIGHTS):
        missing.append("model.safetensors")
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, missing {', '.join(missing)}")
    lineage = path / LINEAGE
    try:
        text = lineage.read_text(encoding="utf-8")
        if not text.strip():
            raise CheckpointError(f"{lineage}: empty, so the checkpoint has no lineage")
        record = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{lineage}: not valid JSON ({error}); publish it again") from None
    if not isinstance(record, dict):
        raise CheckpointError(
            f"{lineage}: expected a JSON object (the checkpoint's lineage), got "
            f"{type(record).__name__}; publish it again"
        )
    return path


def read_lineage(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / LINEAGE).read_text(encoding="utf-8"))


def publish(
    model: Any,
    tokenizer: Any,
    target: str | Path,
    lineage: Mapping[str, Any],
    records: Path | None = None,
    optimizer: Any | None = None,
) -> Path:
    """Write everything into ``<target>.tmp-<pid>`` and rename it to ``target`` at the end:
    weights, tokenizer, lineage, the run's ``records`` (its metrics.jsonl) and, when given,
    the optimizer state. With several processes the main one publishes while the others wait
    for it."""
    target = Path(target)
    if not is_main_process():
        wait_for_everyone()
        return target
    try:
        return _publish(model, tokenizer, target, lineage, records, optimizer)
    finally:
        # also on failure, so the other ranks stop rather than hang; the launcher reports
        # the main process's error
        wait_for_everyone()


def _publish(
    model: Any,
    tokenizer: Any,
    target: Path,
    lineage: Mapping[str, Any],
    records: Path | None,
    optimizer: Any | None,
) -> Path:
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    sweep_killed_publish(target)
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if optimizer is not None:
            save_optimizer(optimizer, tmp)
        if records is not None and records.exists():
            shutil.copyfile(records, tmp / METRICS)
        (tmp / LINEAGE).write_text(json.dumps(lineage, indent=2, sort_keys=True), encoding="utf-8")
        verify(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{int(time.time())}")
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def sweep_killed_publish(target: Path) -> None:
    """What a publish killed mid-way left: a partial tmp, or the checkpoint it was replacing.
    Nothing reads them, and each holds a model's worth of disk. Killed between its two renames,
    a publish leaves no ``target`` and the replaced checkpoint as the only published copy: that
    one is put back first, so a failure of this publish still leaves it in place."""
    leftovers = [
        p
        for p in target.parent.glob(f".{target.name}.*-*")
        if p.name[len(target.name) + 2 :].startswith(("tmp-", "old-"))
    ]
    replaced = sorted((p for p in leftovers if ".old-" in p.name), key=lambda p: p.name)
    if not target.exists() and replaced:
        replaced[-1].rename(target)
        leftovers.remove(replaced[-1])
    for leftover in leftovers:
        shutil.rmtree(leftover, ignore_errors=True)


def save_optimizer(optimizer: Any, directory: Path) -> None:
    from safetensors.torch import save_file

    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            key = f"{index}.{name}"
            if hasattr(value, "shape"):
                tensors[key] = value.detach().contiguous().cpu()
            else:
                scalars[key] = value
    save_file(tensors, str(directory / OPTIMIZER_TENSORS))
    meta = {"param_groups": state["param_groups"], "scalars": scalars}
    (directory / OPTIMIZER_META).write_text(json.dumps(meta), encoding="utf-8")


def load_optimizer_state(directory: str | Path) -> dict[str, Any] | None:
    """The state dict saved by ``save_optimizer``, or None when the checkpoint has none."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / OPTIMIZER_TENSORS).exists():
        return None
    tensors = load_file(str(directory / OPTIMIZER_TENSORS))
    meta = json.loads((directory / OPTIMIZER_META).read_text(encoding="utf-8"))
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}
