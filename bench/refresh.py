"""What a refresh costs next to a full run: the ingest and curation part of the graph, first on
one drop of N FLAN-format rows (plus the embedded sources), then on a new drop of 1% of N.

    .venv/bin/python bench/refresh.py --rows 100000

Both runs go through Dagster on a throwaway sqlite instance, the way the schedule runs them
(``raw_drops`` for one partition, then everything downstream of it outside training and AI
feedback). Per step: seconds inside the step and rows out. The combined tables, curation, the
ledger and the length profile keep one part per drop (curation.storage), so a refresh writes the
new drop's parts only: ``curated_conversations`` curates the drop alone against what earlier
parts kept (mode ``append``; its metadata: mode, rows filtered, seconds per phase), and the
datasets are exported by parts (``DatasetConfig.by_parts``, the default; ``--export-whole``
writes the SFT and prompt sets as whole files and a save_to_disk copy, as before). The curated
set's four checks run inside the ``curated_conversations`` step (check specs), so they are not
steps of their own; a drop without comparisons skips the preference branch (its two steps). Each
step also pays Dagster's own cost: ``step_floor`` times a step that does nothing on the same
instance, and the record has the refresh's seconds above that floor. A third drop of one row
measures what a refresh costs whatever its size, and ``run_process_start_s`` what the run
launcher's fresh process pays to load the definitions before any run (full or refresh) starts.

AI feedback is not in these Dagster runs: its candidates come from an SFT checkpoint (a training
run). Its cost is the judge's requests, measured beside them with the judge client ``ai_rankings``
builds (OpenAIJudge with its sqlite cache) against a local OpenAI-compatible stub: candidate
sets for the full run's prompts, then the same sets plus 1% new ones on the same cache. That
holds while the candidates of old prompts stay the same (same checkpoint, seeded sampling); a
retrained SFT checkpoint makes new candidates and the next refresh pays for every prompt.

Results are appended to bench/results/refresh.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results" / "refresh.jsonl"
GROUPS = ("ingest", "profile", "curate")


def step_seconds(result) -> dict[str, float]:  # noqa: ANN001
    """Seconds inside each step, from the run's STEP_SUCCESS events."""
    return {
        event.step_key: round(event.event_specific_data.duration_ms / 1000, 3)
        for event in result.all_events
        if event.event_type_value == "STEP_SUCCESS"
    }


def rows_out(result) -> dict[str, int]:  # noqa: ANN001
    """Rows each asset wrote: the IO manager's row count, or the first ``*_rows`` count."""
    rows = {}
    for event in result.get_asset_materialization_events():
        metadata = event.materialization.metadata
        name = event.asset_key.to_user_string()
        if "dagster/row_count" in metadata:
            rows[name] = int(metadata["dagster/row_count"].value)
        elif name == "raw_drops" and "conversations" in metadata:
            rows[name] = sum(
                int(metadata[k].value)
                for k in ("conversations", "preferences", "rejected", "excluded")
                if k in metadata
            )
        elif "train_rows" in metadata:
            rows[name] = int(metadata["train_rows"].value) + int(metadata["test_rows"].value)
    return rows


def run(assets, selection, drop: str, instance, resources, drops_root: Path, parts: bool) -> dict:  # noqa: ANN001, E501
    import dagster as dg

    ops = {"raw_drops": {"config": {"root": str(drops_root)}}}
    if not parts:
        ops |= {name: {"config": {"by_parts": False}} for name in ("sft_dataset", "prompt_dataset")}
    started = time.perf_counter()
    result = dg.materialize(
        assets,
        selection=selection,
        partition_key=drop,
        instance=instance,
        resources=resources,
        run_config={"ops": ops},
    )
    wall = time.perf_counter() - started
    steps = step_seconds(result)
    rows = rows_out(result)
    curation = {}
    for event in result.get_asset_materialization_events():
        if event.asset_key.to_user_string() == "curated_conversations":
            metadata = event.materialization.metadata
            curation = {
                k: metadata[k].value
                for k in ("mode", "mode_reason", "rows_filtered", "rows_signed", "seconds")
                if k in metadata
            }
    return {
        "curation": curation,
        "wall_s": round(wall, 2),
        "in_steps_s": round(sum(steps.values()), 2),
        "steps_s": steps,
        "rows_out": rows,
        "rows_ingested_from_drop": rows.get("raw_drops", 0),
        "conversations_rows": rows.get("conversations", 0),
    }


def step_floor(instance) -> float:  # noqa: ANN001
    """Seconds Dagster spends on a step that does nothing (an asset returning a number, one
    reading it, a check on it), on the same instance and machine, median of three runs: what
    each of the refresh's steps costs before any work."""
    import statistics

    import dagster as dg

    # No annotations: this module's are strings (__future__), which Dagster cannot resolve here.
    @dg.asset(name="floor_a")
    def floor_a():  # noqa: ANN202
        return 1

    @dg.asset(name="floor_b")
    def floor_b(floor_a):  # noqa: ANN001, ANN202
        return floor_a + 1

    @dg.asset_check(asset=floor_b)
    def floor_check(floor_b):  # noqa: ANN001, ANN202
        return dg.AssetCheckResult(passed=floor_b == 2)

    seconds = []
    for _ in range(3):
        result = dg.materialize([floor_a, floor_b, floor_check], instance=instance)
        seconds += list(step_seconds(result).values())
    return round(statistics.median(seconds), 3)


def process_start() -> float:
    """Seconds a fresh Python takes to load the project's definitions (median of three): what
    the run launcher's process pays before a run's first step."""
    import statistics

    seconds = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import pipelines.definitions"], cwd=ROOT, check=True)
        seconds.append(time.perf_counter() - started)
    return round(statistics.median(seconds), 2)


def judge_requests(prompts: int, new_fraction: float, cache: Path) -> dict:
    """Requests sent for ``prompts`` candidate sets cold, then for them plus the new ones."""
    from judge_throughput import batch, measure

    server = subprocess.Popen(
        [sys.executable, str(HERE / "judge_throughput.py"), "--serve", "--latency", "0.005"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = server.stdout.readline().strip()
        new = max(1, round(prompts * new_fraction))
        sets = batch(prompts + new)
        settings = {"max_concurrency": 32, "permutations": 1}
        full = measure(base_url, sets[:prompts], cache, **settings)
        refresh = measure(base_url, sets, cache, **settings)
    finally:
        server.stdin.close()
        server.wait(timeout=30)
    keep = ("requests_sent", "cache_hits", "wall_s")
    return {
        "prompts": prompts,
        "new_prompts": new,
        "full": {k: full[k] for k in keep},
        "refresh": {k: refresh[k] for k in keep},
        "refresh_over_full": round(refresh["requests_sent"] / max(1, full["requests_sent"]), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--new-fraction", type=float, default=0.01)
    parser.add_argument("--work", type=Path, default=HERE / "out" / "refresh")
    parser.add_argument("--judge-prompts", type=int, default=2000)
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON lines appended to")
    parser.add_argument(
        "--export-whole",
        action="store_true",
        help="sft_dataset and prompt_dataset export whole files (DatasetConfig.by_parts=False)",
    )
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import dagster as dg
    from ingest_profile import generate

    from assets.ingest import raw_drops
    from assets.io_manager import PolarsParquetIOManager
    from assets.partitions import DROPS
    from assets.resources import StorageResource
    from pipelines.definitions import all_assets, all_checks, defs

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    work = args.work / stamp
    drops_root = work / "drops"
    new_rows = max(1, round(args.rows * args.new_fraction))
    for drop, rows, seed in (("base", args.rows, 0), ("new", new_rows, 1), ("one", 1, 2)):
        (drops_root / drop).mkdir(parents=True)
        generate(drops_root / drop / "flan.jsonl", rows, seed=seed)
    outputs = work / "outputs"
    resources = {
        **defs.resources,
        "io_manager": PolarsParquetIOManager(base_dir=str(outputs)),
        "storage": StorageResource(base_dir=str(outputs)),
    }
    downstream = dg.AssetSelection.assets(raw_drops.key).downstream() & dg.AssetSelection.groups(
        *GROUPS
    )
    assets = [*all_assets, *all_checks]
    (work / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(work / "home")) as instance:
        instance.add_dynamic_partitions(DROPS.name, ["base"])
        every = dg.AssetSelection.groups(*GROUPS)
        parts = not args.export_whole
        full = run(assets, every, "base", instance, resources, drops_root, parts)
        instance.add_dynamic_partitions(DROPS.name, ["new"])
        refresh = run(assets, downstream, "new", instance, resources, drops_root, parts)
        # A drop of one row: what a refresh costs whatever the drop's size.
        instance.add_dynamic_partitions(DROPS.name, ["one"])
        one_row = run(assets, downstream, "one", instance, resources, drops_root, parts)
        floor = step_floor(instance)
    launch = process_start()

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "assets", "curation", "bench/refresh.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    record = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"vm {platform.machine()}, {os.cpu_count()} cores",
        "load_average_at_end": os.getloadavg(),
        "commit": commit + ("+uncommitted" if dirty else ""),
        "rows": args.rows,
        "new_rows": new_rows,
        "export_by_parts": not args.export_whole,
        "full": full,
        "refresh": refresh,
        "one_row_refresh": {k: one_row[k] for k in ("wall_s", "in_steps_s", "steps_s")},
        # A run the daemon launches starts a process that loads the definitions first; a full
        # run pays it as well. Measured apart: the runs above are in this process.
        "run_process_start_s": launch,
        "refresh_over_full_with_process_start": round(
            (refresh["wall_s"] + launch) / (full["wall_s"] + launch), 3
        ),
        "dagster_step_floor_s": floor,
        "refresh_steps": len(refresh["steps_s"]),
        # The refresh's in-step seconds less what its steps would cost doing nothing.
        "refresh_above_floor_s": round(refresh["in_steps_s"] - floor * len(refresh["steps_s"]), 2),
        "refresh_over_full": {
            "wall": round(refresh["wall_s"] / full["wall_s"], 3),
            "in_steps": round(refresh["in_steps_s"] / full["in_steps_s"], 3),
            "curated_conversations_step": round(
                refresh["steps_s"]["curated_conversations"]
                / full["steps_s"]["curated_conversations"],
                3,
            ),
            "length_profile_step": round(
                refresh["steps_s"]["length_profile"] / full["steps_s"]["length_profile"], 3
            ),
            "steps": {
                step: round(seconds / full["steps_s"][step], 3)
                for step, seconds in sorted(refresh["steps_s"].items())
                if full["steps_s"].get(step)
            },
            "rows_ingested_from_drops": round(
                refresh["rows_ingested_from_drop"] / max(1, full["rows_ingested_from_drop"]), 4
            ),
        },
        "judge_requests": judge_requests(
            args.judge_prompts, args.new_fraction, work / "judge_cache.sqlite"
        ),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
