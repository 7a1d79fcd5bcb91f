"""Progress out of a training process: a metrics.jsonl beside the run, and Dagster Pipes
messages when the process was launched by a Pipes client (``dagster-pipes`` is the small protocol
package, not dagster itself, so ``training/`` stays runnable with no orchestrator)."""

from __future__ import annotations

import json
import os
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

    def log(self, message: str) -> None:
        if not self.enabled:
            return
        print(message, flush=True)
        if self.pipes is not None:
            self.pipes.log.info(message)

    def metrics(self, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.metrics_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"time": time.time(), **values}) + "\n")

    def done(self, metadata: dict[str, Any]) -> None:
        if self.pipes is not None:
            self.pipes.report_asset_materialization(metadata=metadata)

    def close(self) -> None:
        if self.pipes is not None:
            self._pipes_cm.__exit__(None, None, None)
            self.pipes = None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
