"""A run's identity and its folder: the fingerprint that says whether a published checkpoint
already answers a recipe, the claim on ``runs/`` (what to resume from, when the run began), and
the lineage record written into each checkpoint."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from training.ranks import is_main_process, wait_for_everyone
from training.reporting import Reporter

if TYPE_CHECKING:
    from training.common import RunConfig

CODE_ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger(__name__)


def code_version() -> str:
    """The commit, ``-dirty`` when tracked files differ from it (a checkpoint trained from an
    edited tree must not pass for that commit's); ``unknown`` outside git."""

    def git(*args: str) -> str:
        # --no-optional-locks: a status must not take index.lock in a tree others commit in
        done = subprocess.run(
            ["git", "--no-optional-locks", *args],
            cwd=CODE_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(commit) and bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("-dirty" if dirty else "")) if commit else "unknown"


# Settings that change how a run is carried out, not what it trains; and ``inputs``, what the
# caller says of the data (its asset, data version, rows): the data itself is fingerprinted by
# content, so a dataset materialized again with the same rows does not retrain its checkpoint.
OPERATIONAL_KEYS = frozenset(
    {"output_dir", "resume", "save_steps", "logging_steps", "torch_threads", "inputs"}
)
SUPERSEDED = "runs.superseded"


def run_fingerprint(config: Any, data_digest: str, checkpoints: Sequence[str | None] = ()) -> str:
    """What a run trains: its recipe, the data it reads (``data_digest``: the content digest of
    its files, ``training.datafiles.content_digest``) and the checkpoints it starts from or
    scores with (parent, reference, reward model), each by its lineage, so one retrained at
    the same path counts as a new one."""
    recipe = {k: v for k, v in dataclasses.asdict(config).items() if k not in OPERATIONAL_KEYS}
    stamps = [lineage_sha256(checkpoint) or checkpoint for checkpoint in checkpoints]
    payload = json.dumps([recipe, data_digest, stamps], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def lineage_sha256(checkpoint: str | Path | None) -> str | None:
    """The sha256 of a checkpoint's lineage.json: it names one training run (it carries the
    run's finish time), so a checkpoint retrained at the same path has another. None when the
    folder has no lineage (a pretrained model, or nothing there)."""
    lineage = Path(checkpoint, "lineage.json") if checkpoint else None
    if lineage is None or not lineage.is_file():
        return None
    return hashlib.sha256(lineage.read_bytes()).hexdigest()


def published_for(checkpoint: Path, fingerprint: str) -> dict[str, Any] | None:
    """The lineage of ``checkpoint`` when it was published by a run of exactly this recipe,
    data and parent: re-materialising it again has nothing to train."""
    try:
        lineage = json.loads((checkpoint / "lineage.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return lineage if lineage.get("fingerprint") == fingerprint else None


class RunClaim(NamedTuple):
    """What ``claim_runs`` found: where the run continues from, and when it began."""

    resume_from: str | None  # the newest finished save, or None to train from the start
    started: float  # epoch seconds of the run's first process, kept across resumes


def claim_runs(runs: Path, fingerprint: str, reporter: Reporter, resume: bool) -> RunClaim:
    """Make ``runs/`` this run's: saves left by a run of another recipe, data or parent must
    not be resumed from (they would continue the old run under the new lineage), so they move
    to ``runs.superseded/`` (one generation kept) and this run starts over.

    ``metrics.jsonl`` is cut back to the steps the run keeps: a failed or killed attempt's
    records past the save it resumes from would otherwise be recorded twice, and a fresh run
    starts an empty file, so the loss curve is this run's alone."""
    if is_main_process():
        try:
            _claim_runs(runs, fingerprint, reporter.log, resume)
        finally:
            wait_for_everyone()  # the other processes read runs/ once it is claimed
    else:
        wait_for_everyone()
    resume_from = last_run_checkpoint(runs) if resume else None
    reporter.start_run(saved_step(resume_from))
    return RunClaim(resume_from, _run_started(runs))


def saved_step(save: str | None) -> int:
    """The step of a ``checkpoint-N`` save; 0 for none."""
    return int(Path(save).name.rsplit("-", 1)[-1]) if save else 0


RUN_STARTED = "started_at.txt"


def _run_started(runs: Path) -> float:
    try:
        return float((runs / RUN_STARTED).read_text())
    except (OSError, ValueError):
        return time.time()


def _claim_runs(runs: Path, fingerprint: str, log: Callable[[str], None], resume: bool) -> None:
    stamp = runs / "fingerprint.txt"
    if runs.is_dir() and any(runs.iterdir()):
        previous = stamp.read_text().strip() if stamp.exists() else "unrecorded"
        # With resume off, the earlier attempt's saves go too: left beside this run's, a later
        # resume would pick whichever attempt saved the highest step.
        if previous != fingerprint or not resume:
            aside = runs.with_name(SUPERSEDED)
            shutil.rmtree(aside, ignore_errors=True)
            runs.rename(aside)
            why = (
                f"of another recipe, data or parent ({previous}, now {fingerprint})"
                if previous != fingerprint
                else "of an earlier attempt, and resume is off"
            )
            log(f"{runs}: its saves are {why}; moved to {aside}, starting over")
    runs.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint + "\n")
    started = runs / RUN_STARTED
    if not started.exists() or last_run_checkpoint(runs) is None:
        started.write_text(f"{time.time():.3f}\n")


def train_or_restore(trainer: Any, resume: str | None, max_steps: int) -> bool:
    """``trainer.train``, continuing from the save ``resume``; or, when that save already
    reached ``max_steps`` (the run was killed after its last save, before it published),
    its weights and trainer state restored without training. transformers checks the step
    count only after a step, so resuming there trained one step past ``max_steps``, changing
    the weights and the loss the lineage records. Returns whether anything was trained; either
    way ``whole_run_loss`` then reads the run's loss from the restored ``log_history``."""
    if resume is None or saved_step(resume) < max_steps:
        trainer.train(resume_from_checkpoint=resume)
        return True
    from transformers.trainer_callback import TrainerState

    trainer._load_from_checkpoint(resume)
    trainer.state = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json"))
    trainer._total_loss_scalar = 0.0  # this process trained no step
    # and the optimizer: the stable phase publishes it for the decay phase to continue
    trainer.create_optimizer_and_scheduler(num_training_steps=max_steps)
    trainer._load_optimizer_and_scheduler(resume)
    return False


def whole_run_loss(trainer: Any, resumed_from: str | None) -> float:
    """The mean training loss over every step of the run, from the sum of the step losses this
    process trained (transformers' ``training_loss`` divides that sum by this process's steps
    in 5.24 and by all steps in 5.17; logged losses in it are averaged over the processes).
    After a resume, the steps before come from the restored ``log_history``, each logged loss
    weighted by the steps it covers."""
    state = trainer.state
    this_process = float(trainer._total_loss_scalar)
    steps = state.global_step
    resumed_step = saved_step(resumed_from)
    if steps <= 0:
        return this_process  # nothing trained (transformers reports 0.0 too)
    total = covered = previous = 0
    for entry in state.log_history if resumed_step else []:
        step = entry.get("step", 0)
        if "loss" in entry and previous < step <= resumed_step:
            total += entry["loss"] * (step - previous)
            covered, previous = covered + step - previous, step
    if covered == 0:  # nothing was logged before the save: only this process's steps are known
        return this_process / max(steps - resumed_step, 1)
    return (total / covered * resumed_step + this_process) / steps


def already_published(
    config: RunConfig, fingerprint: str, reporter: Reporter, stage: str
) -> Path | None:
    """The stage's published checkpoint when a run of this very recipe, data and parent made
    it (reported as this run's result), else None. ``resume: false`` always trains again."""
    checkpoint = Path(config.output_dir) / "checkpoint"
    lineage = published_for(checkpoint, fingerprint) if config.resume else None
    if lineage is None:
        return None
    reporter.log(
        f"{stage}: {checkpoint} was trained from this recipe, data and parent "
        f"({lineage['finished_at']}); nothing to train"
    )
    reporter.done({"checkpoint": str(checkpoint), **lineage["metrics"]})
    reporter.close()
    return checkpoint


class ParentChangedError(RuntimeError):
    """The checkpoint a run started from was republished at its path while the run trained."""


class InputChangedError(ParentChangedError):
    """A checkpoint the run scored with or compared against (its reward model, its reference)
    was republished at its path while the run trained."""


class InputPin(NamedTuple):
    """A checkpoint the run reads besides its parent, as ``pin_inputs`` found it at the start."""

    path: str | None
    lineage_sha256: str | None  # None: no lineage.json there (a pretrained model) or no path


def pin_inputs(checkpoints: Mapping[str, str | Path | None]) -> dict[str, InputPin]:
    """Each named input checkpoint (``{"reward_model": path}``) with the digest of its
    lineage.json as the run starts. ``lineage_record`` records these beside the paths and
    refuses to publish when one changed: a reward model retrained while PPO ran is another
    model than the one the policy was optimised against, and its path alone would not say so.
    Name an input only when the run reads it (a path of None pins nothing: both stay None)."""
    return {
        key: InputPin(str(path) if path else None, lineage_sha256(path))
        for key, path in checkpoints.items()
    }


def pinned_inputs(inputs: Mapping[str, Any], pins: Mapping[str, InputPin]) -> dict[str, Any]:
    """``inputs`` with each pin's path under its key and ``<key>_lineage_sha256`` right after
    it (a trace reads both); a pinned key the inputs lack is added at the end."""
    pinned: dict[str, Any] = {}
    for key, value in inputs.items():
        if key.endswith("_lineage_sha256") and key.removesuffix("_lineage_sha256") in pins:
            continue  # written beside its path below
        pinned[key] = pins[key].path if key in pins else value
        if key in pins:
            pinned[f"{key}_lineage_sha256"] = pins[key].lineage_sha256
    for key, pin in pins.items():
        if key not in pinned:
            pinned[key] = pin.path
            pinned[f"{key}_lineage_sha256"] = pin.lineage_sha256
    return pinned


def check_pins(stage: str, pins: Mapping[str, InputPin]) -> None:
    """Raise ``InputChangedError`` naming each input whose lineage is no longer its pin."""
    changed = [
        f"{key} {pin.path} (lineage.json {(pin.lineage_sha256 or 'absent')[:12]} at the start, "
        f"{(now or 'absent')[:12]} now)"
        for key, pin in pins.items()
        if (now := lineage_sha256(pin.path)) != pin.lineage_sha256
    ]
    if changed:
        raise InputChangedError(
            f"{stage}: republished while this run trained: {'; '.join(changed)}; nothing was "
            "published, since the run may have read either. Run the stage again to train "
            "against the checkpoint there now."
        )


def starting_point(config: Any, parent: str | None) -> str | None:
    """The checkpoint a run starts from: its verified ``init_from``, else a pretrained
    ``model.path`` (a stage started from a model of someone else's)."""
    return parent or getattr(getattr(config, "model", None), "path", None)


def pin_parent(config: Any, parent: str | None) -> str | None:
    """The digest of the parent's lineage.json as the run starts, taken with its fingerprint.
    ``lineage_record`` records this one, not the one there at publish time: a parent retrained
    while its child ran is another checkpoint than the child's weights came from."""
    return lineage_sha256(starting_point(config, parent))


def lineage_record(
    stage: str,
    config: Any,
    inputs: Mapping[str, Any],
    parent: str | None,
    metrics: Mapping[str, Any],
    started: float,
    fingerprint: str,
    *,
    parent_pin: str | None,
    input_pins: Mapping[str, InputPin] | None = None,
) -> dict[str, Any]:
    """What ``publish`` writes as lineage.json. Refuses (``ParentChangedError``) when the
    parent's lineage is no longer ``parent_pin``, the one ``pin_parent`` read as the run
    started: its weights (or optimizer state) may have come from either, and a lineage naming
    one of them would be a guess. The run's fingerprint holds the earlier parent too, so the
    next run starts over from the new one. ``input_pins`` (``pin_inputs``) are checked the
    same way (``InputChangedError``) and recorded in ``inputs`` as ``<key>`` (the path) and
    ``<key>_lineage_sha256`` beside it."""
    parent = starting_point(config, parent)
    now = lineage_sha256(parent)
    if now != parent_pin:
        raise ParentChangedError(
            f"{stage}: {parent} was republished while this run trained (its lineage.json was "
            f"{(parent_pin or 'absent')[:12]} at the start, {(now or 'absent')[:12]} now); "
            "nothing was published, since the weights may come from either. Run the stage "
            "again to train from the checkpoint there now."
        )
    pins = dict(input_pins or {})
    check_pins(stage, pins)
    return {
        "stage": stage,
        "fingerprint": fingerprint,
        "recipe": dataclasses.asdict(config),
        "inputs": pinned_inputs(inputs, pins),
        "parent_checkpoint": parent,
        # pins the parent run: a parent retrained at the same path later is another checkpoint
        "parent_lineage_sha256": parent_pin,
        "metrics": dict(metrics),
        "code_version": code_version(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def last_run_checkpoint(runs: Path) -> str | None:
    """The newest save in ``runs/`` that was finished. transformers writes a save in place and
    its ``trainer_state.json`` last, so a run killed (or out of disk) mid-save leaves a newer
    folder without one; resuming from it would fail on every retry, so it is skipped, named."""
    runs = Path(runs)
    saves = [p for p in runs.glob("checkpoint-*") if p.is_dir() and p.name[11:].isdigit()]
    for save in sorted(saves, key=lambda p: int(p.name[11:]), reverse=True):
        problem = unfinished_save(save)
        if problem is None:
            return str(save)
        logger.warning("not resuming from %s: %s", save, problem)
    return None


def unfinished_save(save: Path) -> str | None:
    """Why a trainer save cannot be resumed from, or None when it is complete."""
    try:
        json.loads((save / "trainer_state.json").read_text())["global_step"]
    except FileNotFoundError:
        return "the save was cut off before trainer_state.json was written"
    except (ValueError, KeyError):
        return "trainer_state.json is truncated or unreadable"
    if not any(save.glob("*.safetensors")):
        return "no weights (*.safetensors)"
    return None
