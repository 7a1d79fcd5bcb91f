"""Progress out of a training process: a metrics.jsonl beside the run, and Dagster Pipes
messages when the process was launched by a Pipes client (``dagster-pipes`` is the small protocol
package, not dagster itself, so ``training/`` stays runnable with no orchestrator)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from training.ranks import is_main_process


class Reporter:
    """Logs, metrics and the Pipes report of one run; with several processes, of the main one
    only (the others train the same steps, and their copies would double every record)."""

    def __init__(self, metrics_path: Path) -> None:
        self.metrics_path = metrics_path
        self.enabled = is_main_process()
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        self.pipes = None
        if self.enabled and os.environ.get("DAGSTER_PIPES_CONTEXT"):
            from dagster_pipes import open_dagster_pipes

            self._pipes_cm = open_dagster_pipes()
            self.pipes = self._pipes_cm.__enter__()
            _OPEN.append(self)

    def log(self, message: str) -> None:
        if not self.enabled:
            return
        print(message, flush=True)
        if self.pipes is not None:
            self.pipes.log.info(message)

    def start_run(self, kept_step: int) -> None:
        """Keep only the records of steps up to ``kept_step`` (the save a run resumes from; 0
        for a fresh run): those past it are retrained, and a failed attempt's must not be
        drawn into this run's curve. Rewritten beside and renamed over, like every file a
        later reader relies on."""
        if not self.enabled or not self.metrics_path.exists():
            return
        kept = [
            json.dumps(record)
            for record in read_metrics(self.metrics_path)
            if 0 < record.get("step", 0) <= kept_step
        ]
        tmp = self.metrics_path.with_name(f".{self.metrics_path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, self.metrics_path)

    def metrics(self, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = (json.dumps({"time": time.time(), **values}) + "\n").encode()
        with self.metrics_path.open("ab+") as handle:
            # A process killed mid-write leaves a last line without its newline; starting a
            # new one keeps every later record readable.
            end = handle.seek(0, os.SEEK_END)
            if end > 0:
                handle.seek(end - 1)
                if handle.read(1) != b"\n":
                    line = b"\n" + line
            handle.write(line)

    def done(self, metadata: dict[str, Any]) -> None:
        if self.pipes is not None:
            self.pipes.report_asset_materialization(metadata=metadata)

    def close(self, error: BaseException | None = None) -> None:
        """Close the Pipes channel; with ``error``, Dagster records it as the stage's exception
        (structured, beside the asset's failure) instead of a channel that never closed."""
        if self.pipes is None:
            return
        self.pipes = None
        _OPEN.remove(self)
        raised = (None, None, None) if error is None else (type(error), error, error.__traceback__)
        self._pipes_cm.__exit__(*raised)


_OPEN: list[Reporter] = []  # reporters whose Pipes channel is open, for close_all


def close_all(error: BaseException) -> None:
    """Close every open Pipes channel with the error that ended the stage."""
    for reporter in list(_OPEN):
        try:
            reporter.close(error)
        except Exception as closing:  # e.g. the full disk that ended the stage: keep its error
            print(f"could not close the Dagster Pipes channel: {closing}", file=sys.stderr)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every whole record; a line a killed process left half-written is skipped (it is a
    progress record, and the run's results live in lineage.json)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
