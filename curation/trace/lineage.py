"""A checkpoint's lineage.json as a trace reads it: the fields checked before the walk trusts
them, the datasets and models (reward model, reference) it names, and the pins (the sha256 of a
parent's or model's lineage.json) that tell whether what is there now is what the stage
trained with."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from curation.trace.errors import TraceError
from curation.trace.locate import LINEAGE, relocate

# Fields of lineage.json a trace reads, and what each must be when present (null is absent).
LINEAGE_TEXT = ("stage", "parent_checkpoint", "parent_lineage_sha256", "finished_at")
INPUT_TEXT = (
    "asset",
    "data",
    "data_sha256",
    "row_ids_sha256",
    "ptx_data",
    "reward_model",
    "reward_model_lineage_sha256",
    "reference_checkpoint",
    "reference_checkpoint_lineage_sha256",
)


def _refuse(path: Path, name: str, expected: str, value: Any) -> TraceError:
    shown = json.dumps(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return TraceError(f"{path}: field {name}: expected {expected}, found {shown}")


def _check_lineage(lineage: dict[str, Any], path: Path) -> None:
    """Refuse the fields a trace reads when they have the wrong shape, naming file and field,
    rather than fail later with an AttributeError deep in the walk."""
    for key in LINEAGE_TEXT:
        if lineage.get(key) is not None and not isinstance(lineage[key], str):
            raise _refuse(path, key, "a string", lineage[key])
    inputs = lineage.get("inputs")
    if inputs is None:
        return
    if not isinstance(inputs, dict):
        raise _refuse(path, "inputs", "an object", inputs)
    entries = [("inputs", inputs)]
    datasets = inputs.get("datasets")
    if datasets is not None:
        if not isinstance(datasets, list) or not all(isinstance(d, dict) for d in datasets):
            raise _refuse(path, "inputs.datasets", "a list of objects", datasets)
        entries += [(f"inputs.datasets[{i}]", d) for i, d in enumerate(datasets)]
    for where, entry in entries:
        for key in INPUT_TEXT:
            if entry.get(key) is not None and not isinstance(entry[key], str):
                raise _refuse(path, f"{where}.{key}", "a string", entry[key])
        left_out = entry.get("row_ids_left_out")
        if left_out is not None and (
            not isinstance(left_out, list)
            or not all(isinstance(i, str | int) and not isinstance(i, bool) for i in left_out)
        ):
            raise _refuse(path, f"{where}.row_ids_left_out", "a list of row ids", left_out)
        used = entry.get("rows_used")
        if used is not None and (not isinstance(used, int) or isinstance(used, bool) or used < 0):
            raise _refuse(path, f"{where}.rows_used", "a count of rows", used)


def read_lineage(folder: Path) -> dict[str, Any]:
    """A checkpoint's lineage.json, its fields checked (``TraceError`` naming file and field)."""
    path = folder / LINEAGE
    try:
        lineage = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise TraceError(f"{path}: not valid JSON ({error})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise TraceError(f"{path}: cannot be read ({error})") from None
    if not isinstance(lineage, dict):
        raise TraceError(f"{path}: expected a JSON object")
    _check_lineage(lineage, path)
    return lineage


def lineage_inputs(lineage: dict[str, Any]) -> list[dict[str, Any]]:
    """The datasets a stage names: ``inputs`` itself, or each entry of ``inputs.datasets``
    (``read_lineage`` has checked their shape)."""
    inputs = lineage.get("inputs") or {}
    if isinstance(inputs.get("datasets"), list):
        return inputs["datasets"]
    return [inputs] if inputs.get("data") else []


def left_out_ids(entry: dict[str, Any]) -> set[str]:
    """The row ids the stage names as offered and not trained on (``row_ids_left_out``)."""
    return {str(i) for i in entry.get("row_ids_left_out") or ()}


def lineage_sha256(folder: Path | None) -> str | None:
    """The sha256 of a checkpoint's lineage.json bytes, the digest training records for a stage's
    parent (``parent_lineage_sha256``): a lineage carries its run's finish time, so a checkpoint
    retrained at the same path has another. None when there is no lineage.json."""
    path = folder / LINEAGE if folder is not None else None
    if path is None or not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def parent_pin(lineage: dict[str, Any], parent: Path | None) -> dict[str, Any] | None:
    """Whether ``parent`` is still the checkpoint ``lineage``'s stage was trained from: the digest
    the stage recorded for its parent's lineage.json against the one there now (``ok``). None
    when the stage recorded none: a lineage older than the field, or a parent without lineage."""
    recorded = lineage.get("parent_lineage_sha256")
    if not isinstance(recorded, str) or not recorded:
        return None
    found = lineage_sha256(parent)
    return {"recorded": recorded, "found": found, "ok": found == recorded}


# Checkpoints a stage used besides its parent, as lineage names them: inputs.<key> (a path)
# pinned by inputs.<key>_lineage_sha256 (the sha256 of that checkpoint's lineage.json as the run
# started; null when it had none).
MODEL_INPUTS = {"reward_model": "reward model", "reference_checkpoint": "reference"}


def _lineage_folder(path: Path | None) -> Path | None:
    """``path`` or its ``checkpoint/`` when it holds a lineage.json, else None."""
    if path is None:
        return None
    for folder in (path, path / "checkpoint"):
        if (folder / LINEAGE).is_file():
            return folder
    return None


def model_inputs(lineage: dict[str, Any], outputs: Path) -> list[dict[str, Any]]:
    """The reward model and DPO reference a stage names: where each is now (``checkpoint``,
    None when not found or without lineage) and ``pin`` (recorded against found digest; None
    when the lineage pins nothing: older lineages, or a model without lineage.json then)."""
    inputs = lineage.get("inputs") or {}
    found = []
    for key, role in MODEL_INPUTS.items():
        recorded = inputs.get(key)
        if not recorded:
            continue
        folder = _lineage_folder(relocate(recorded, outputs))
        pinned = inputs.get(f"{key}_lineage_sha256")
        pin = None
        if pinned:
            digest = lineage_sha256(folder)
            pin = {"recorded": pinned, "found": digest, "ok": digest == pinned}
        found.append(
            {
                "input": key,
                "role": role,
                "recorded": recorded,
                "checkpoint": str(folder) if folder else None,
                "pin": pin,
            }
        )
    return found
