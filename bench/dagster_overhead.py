"""Dagster's overhead on a run: the run's wall time beside the time spent inside its steps.

Reads a finished run's event log from an instance (the demo's, by default the newest run in
DAGSTER_HOME) and prints one JSON line: run wall time, the sum of step durations (asset body plus
its input loads and output writes), the Dagster share = 1 - steps / wall, and the slowest steps.
The demo executes in process, one step at a time, so the steps' sum is directly comparable to the
wall time.

    DAGSTER_HOME=.dagster_home python bench/dagster_overhead.py [--run-id ID] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import dagster as dg


def run_overhead(instance: dg.DagsterInstance, run_id: str | None = None) -> dict:
    records = instance.get_run_records(limit=1) if run_id is None else None
    run = instance.get_run_by_id(run_id) if run_id else records[0].dagster_run
    events = instance.all_logs(run.run_id)
    starts: dict[str, float] = {}
    steps: dict[str, float] = {}
    first = last = None
    for event in events:
        stamp = event.timestamp
        first = stamp if first is None else min(first, stamp)
        last = stamp if last is None else max(last, stamp)
        kind = event.dagster_event.event_type_value if event.dagster_event else None
        if kind == "STEP_START":
            starts[event.step_key] = stamp
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE") and event.step_key in starts:
            steps[event.step_key] = stamp - starts[event.step_key]
    wall = (last or 0) - (first or 0)
    inside = sum(steps.values())
    slowest = sorted(steps.items(), key=lambda item: -item[1])[:8]
    return {
        "run_id": run.run_id,
        "job": run.job_name,
        "status": run.status.value,
        "steps": len(steps),
        "wall_s": round(wall, 2),
        "inside_steps_s": round(inside, 2),
        "dagster_share": round(1 - inside / wall, 4) if wall else None,
        "slowest": {k: round(v, 2) for k, v in slowest},
        "loadavg": os.getloadavg(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-id")
    parser.add_argument("--out", type=Path, help="append the JSON line here")
    args = parser.parse_args()
    with dg.DagsterInstance.get() as instance:
        result = run_overhead(instance, args.run_id)
    line = json.dumps(result)
    print(line)
    if args.out:
        with args.out.open("a") as handle:
            handle.write(line + "\n")


if __name__ == "__main__":
    main()
