"""Where a checkpoint recorded in lineage.json is now. Outputs may have been copied to another
machine, so a recorded absolute path is re-anchored under the outputs folder; a publish killed
between its two renames leaves the checkpoint set aside, and the error says where."""

from __future__ import annotations

from pathlib import Path

from curation.trace.errors import TraceError

LINEAGE = "lineage.json"


def relocate(recorded: str | None, outputs: Path) -> Path | None:
    """Where a path recorded in lineage.json is now: itself when it lies under ``outputs``; else
    its longest tail (at least two parts, e.g. ``datasets/sft``) that exists under ``outputs``;
    else itself when it still exists; else None."""
    if not recorded:
        return None
    path = Path(recorded)
    root = outputs.resolve()
    if path.exists() and path.resolve().is_relative_to(root):
        return path
    parts = path.parts
    for start in range(1, len(parts) - 1):
        candidate = outputs.joinpath(*parts[start:])
        if candidate.exists():
            return candidate
    return path if path.exists() else None


def checkpoint_folder(path: str | Path) -> Path:
    """A checkpoint folder (with lineage.json) or a stage folder whose ``checkpoint/`` has one."""
    path = Path(path)
    if (path / LINEAGE).is_file():
        return path
    if (path / "checkpoint" / LINEAGE).is_file():
        return path / "checkpoint"
    aside = _set_aside(path)
    note = (
        f"; a publish killed between its two renames left the previous checkpoint set aside "
        f"at {aside} (the stage's next run puts it back; trace that folder to see it now)"
        if aside
        else ""
    )
    if not path.exists():
        raise TraceError(f"{path}: no such checkpoint folder{note}")
    raise TraceError(f"{path}: no {LINEAGE} here or in {path / 'checkpoint'}{note}")


def _set_aside(path: Path) -> Path | None:
    """The newest ``.checkpoint.old-*`` beside where ``checkpoint/`` should be (``path`` is the
    stage folder or its missing ``checkpoint/``) that holds a lineage: what
    training.checkpoint.publish leaves when killed between moving the old checkpoint aside and
    moving the new one in."""
    stage = path.parent if path.name == "checkpoint" else path
    if not stage.is_dir():
        return None
    found = sorted(p for p in stage.glob(".checkpoint.old-*") if (p / LINEAGE).is_file())
    return found[-1] if found else None


def all_checkpoints(outputs: Path) -> list[Path]:
    """Every published checkpoint under ``outputs/checkpoints`` (not trainer states in runs/, not
    half-written temporary folders)."""
    root = outputs / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for lineage in sorted(root.rglob(LINEAGE)):
        parts = lineage.relative_to(root).parts
        if any(p.startswith(".") or p == "runs" for p in parts):
            continue
        found.append(lineage.parent)
    return found
