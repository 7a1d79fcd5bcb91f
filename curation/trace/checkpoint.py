"""Checkpoint back to raw rows: the chain of parents (then the reward models and references each
stage names) behind a checkpoint, each stage's datasets checked against its lineage; as a
JSON-ready report, and as flat records for an asset's metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curation.trace.catalog import Catalog, load_catalog
from curation.trace.lineage import (
    lineage_inputs,
    model_inputs,
    parent_pin,
    read_lineage,
)
from curation.trace.locate import LINEAGE, checkpoint_folder, relocate
from curation.trace.trained_data import dataset_report


def checkpoint_chain(path: str | Path, outputs: Path) -> list[dict[str, Any]]:
    """The checkpoint and its parents, newest first: folder, recorded path, lineage and ``pin``
    (``parent_pin`` of the child's lineage against this folder; None for the checkpoint asked
    for). A parent that cannot be found ends the chain with an entry whose folder and lineage are
    None. A parent whose pin fails (retrained since its child was trained) does not end it: the
    walk goes on through the checkpoint now there, so the report shows where the path leads."""
    chain: list[dict[str, Any]] = []
    folder: Path | None = checkpoint_folder(path)
    recorded = str(path)
    pin: dict[str, Any] | None = None
    seen: set[Path] = set()
    while folder is not None:
        if folder.resolve() in seen:
            break
        seen.add(folder.resolve())
        lineage = read_lineage(folder)
        link = {"checkpoint": str(folder), "recorded": recorded, "lineage": lineage, "pin": pin}
        chain.append(link)
        recorded = lineage.get("parent_checkpoint")
        if not recorded:
            break
        found = relocate(recorded, outputs)
        if found is None or not (found / LINEAGE).is_file():
            chain.append({"checkpoint": None, "recorded": recorded, "lineage": None, "pin": None})
            break
        pin = parent_pin(lineage, found)
        folder = found
    return chain


def _pin_problem(
    folder: str, lineage: dict[str, Any], child: dict[str, Any], pin: dict[str, Any]
) -> str:
    """Why ``folder`` is not the parent ``child`` was trained from, with both finish times."""
    name = child.get("stage") or "its child"
    times = [
        f"{who} finished {when}"
        for who, when in (
            ("this one", lineage.get("finished_at")),
            (name, child.get("finished_at")),
        )
        if when
    ]
    return (
        f"{folder} is not the parent {name} was trained from: its {LINEAGE} has sha256 "
        f"{str(pin['found'])[:12]}…, {name}'s lineage recorded {pin['recorded'][:12]}…; it was "
        f"retrained (or its {LINEAGE} rewritten) after {name} was trained"
        + (f" ({', '.join(times)})" if times else "")
    )


def _model_problem(model: dict[str, Any], stage: str | None) -> str | None:
    pin, name = model["pin"], stage or "this stage"
    if pin is None or pin["ok"]:
        return None
    if model["checkpoint"] is None:
        return (
            f"{model['role']} {model['recorded']} not found (or has no {LINEAGE}); {name}'s "
            f"lineage pinned its {LINEAGE} at {pin['recorded'][:12]}…"
        )
    return (
        f"{model['role']} {model['checkpoint']} is not the one {name} was trained with: its "
        f"{LINEAGE} has sha256 {str(pin['found'])[:12]}…, {name}'s lineage recorded "
        f"{pin['recorded'][:12]}…; it was retrained (or its {LINEAGE} rewritten) since"
    )


def _stage_report(
    link: dict[str, Any], child: dict[str, Any] | None, catalog: Catalog, digests: dict[Path, str]
) -> dict[str, Any]:
    lineage = link["lineage"]
    if lineage is None:
        return {
            "stage": None,
            "checkpoint": None,
            "checkpoint_recorded": link["recorded"],
            "pin": None,
            "models": [],
            "datasets": [],
            "problems": [f"parent checkpoint {link['recorded']} not found"],
        }
    datasets = [
        dataset_report(entry, lineage, catalog, digests) for entry in lineage_inputs(lineage)
    ]
    models = model_inputs(lineage, catalog.outputs)
    problems = []
    pin = link["pin"]
    if pin is not None and not pin["ok"] and child is not None:
        problems.append(_pin_problem(link["checkpoint"], lineage, child, pin))
    problems += [p for m in models if (p := _model_problem(m, lineage.get("stage")))]
    problems += [p for d in datasets for p in d["problems"]]
    if not datasets:
        problems.append("lineage names no dataset")
    return {
        "stage": lineage.get("stage"),
        "checkpoint": link["checkpoint"],
        "checkpoint_recorded": link["recorded"],
        "parent_checkpoint": lineage.get("parent_checkpoint"),
        "code_version": lineage.get("code_version"),
        "finished_at": lineage.get("finished_at"),
        "pin": pin,
        "models": models,
        "datasets": datasets,
        "problems": problems,
    }


def trace_checkpoint(checkpoint: str | Path, outputs: str | Path) -> dict[str, Any]:
    """The stages behind ``checkpoint`` (itself, then its parents; then the reward model or
    reference each names, with their parents, unless already on the way: ``input_of`` says
    whose), each with the dataset it trained on, the row-id hash and content digest checks, the
    raw files and counts, the rows left out by the stage and those dropped on the way. ``ok`` is
    false when any parent, dataset, part file or raw row is missing, any hash or digest differs,
    or a parent, reward model or reference is not the one the stage was trained with (``pin``:
    retrained at the same path since)."""
    catalog = load_catalog(outputs)
    digests: dict[Path, str] = {}
    stages: list[dict[str, Any]] = []
    seen: set[Path] = set()
    queue: list[tuple[str | Path, dict[str, Any] | None, dict[str, Any] | None]] = [
        (checkpoint, None, None)
    ]
    while queue:
        start, first_pin, input_of = queue.pop(0)
        chain = checkpoint_chain(start, catalog.outputs)
        chain[0]["pin"] = first_pin
        child = None
        for link in chain:
            key = Path(link["checkpoint"]).resolve() if link["checkpoint"] else None
            if key is not None and key in seen:
                break  # the rest of this chain is in the report already
            if key is not None:
                seen.add(key)
            stage = _stage_report(link, child, catalog, digests)
            stage["input_of"] = input_of
            input_of = None
            stages.append(stage)
            child = link["lineage"]
            for model in stage["models"]:
                if model["checkpoint"] is not None:
                    role = {"role": model["input"], "of": stage["checkpoint"]}
                    queue.append((model["checkpoint"], model["pin"], role))
    return {
        "checkpoint": str(checkpoint_folder(checkpoint)),
        "outputs": str(catalog.outputs),
        "ok": not any(s["problems"] for s in stages),
        "stages": stages,
    }


def checkpoint_records(report: dict[str, Any]) -> list[dict[str, Any]]:
    """``trace_checkpoint``'s report as flat rows, one per stage, dataset and raw file: the shape
    of a table in an asset's metadata. ``pinned_by_child`` is false on a parent (or reward model,
    reference) retrained since its child was trained, None where the child recorded no digest
    (or for the first stage); ``input_of`` names the role of a reward model or reference."""
    records = []
    for stage in report["stages"]:
        pin = stage.get("pin")
        input_of = stage.get("input_of")
        for dataset in stage["datasets"] or [{}]:
            hashes = dataset.get("hash_check", {})
            content = dataset.get("content_check")
            common = {
                "stage": stage["stage"],
                "checkpoint": stage["checkpoint"],
                "input_of": input_of["role"] if input_of else None,
                "dataset": dataset.get("dataset"),
                "train_rows": dataset.get("rows", {}).get("train"),
                "left_out_rows": dataset.get("rows", {}).get("left_out"),
                "row_ids_ok": all(c["ok"] for c in hashes.values()) if hashes else None,
                "content_ok": content["ok"] if content else None,
                "pinned_by_child": pin["ok"] if pin else None,
            }
            for raw in dataset.get("raw_files") or [{}]:
                records.append({**common, "raw_file": raw.get("file"), "raw_rows": raw.get("rows")})
    return records
