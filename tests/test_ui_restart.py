"""The webserver killed during a run: the run finishes, and the restarted UI shows it.

``dagster dev`` watches its webserver and, when it dies, shuts itself down: the daemon stops, and
the code server, asked to stop, first waits for the runs it started (it watches their processes
and would mark a crashed one failed). The run worker is a process of its own that nothing
signals, so the run goes on with no server at all. A person then starts ``dagster dev`` again
(``make ui``); so does the test: a second ``dagster dev`` on the same DAGSTER_HOME and outputs,
not a lone webserver, because the daemon died with the first.

For the kill to land mid-run on any machine, the run's pretraining source is a named pipe: the
raw_pretrain step blocks reading it until the test writes the sample corpus into it, which the
test does only after the new server is up and shows the run still in progress.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

from ui_support import (
    PROJECT_ROOT,
    ProcessInfo,
    asset_graph,
    curation_selection,
    dagster_dev,
    instance_processes,
    latest_materialization,
    launch_materialization,
    run_assets,
    run_errors,
    run_materializations,
    run_status,
    wait_for_exit,
    wait_for_run,
    wait_for_step,
    webserver_process,
)

PRETRAIN_SAMPLE = PROJECT_ROOT / "data/samples/pretrain.jsonl"
BLOCKED_STEP = "raw_pretrain"
# Everything downstream of raw_pretrain waits on the pipe, so none of it may exist before.
WAITING_ON_PIPE = ("pretrain_corpus", "project_tokenizer", "length_profile")
# What each process of a dagster dev is, by a piece of its command line.
ROLES = (
    ("webserver", " -m dagster_webserver "),
    ("daemon", " -m dagster._daemon "),
    ("code server", " -m dagster api grpc "),
    ("run worker", "multiprocessing.spawn"),
)


def feed_pipe(pipe: Path, data: bytes, timeout: float = 30.0) -> None:
    """Write ``data`` into the named pipe the run is blocked on. Opening without blocking fails
    with ENXIO while nothing reads it, which would mean the run is not waiting there."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as error:
            if error.errno != errno.ENXIO or time.monotonic() > deadline:
                raise RuntimeError(f"no run reads {pipe}") from error
            time.sleep(0.2)
    try:
        os.set_blocking(fd, True)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def by_role(processes: Iterable[ProcessInfo]) -> dict[str, ProcessInfo]:
    """The one process of each role in ROLES among one dagster dev's ``processes``."""
    processes = list(processes)
    roles = {role: [p for p in processes if marker in p.command] for role, marker in ROLES}
    if any(len(found) != 1 for found in roles.values()):
        raise AssertionError(f"expected one process per role: {roles}")
    return {role: found[0] for role, found in roles.items()}


def test_run_finishes_and_shows_after_the_webserver_is_killed(tmp_path):
    pipe = tmp_path / "pipe" / PRETRAIN_SAMPLE.name
    pipe.parent.mkdir()
    os.mkfifo(pipe)
    run_config = {"ops": {BLOCKED_STEP: {"config": {"paths": [str(pipe)]}}}}
    home = tmp_path / "dagster_home"
    try:
        with dagster_dev(tmp_path, log_name="first.log") as first:
            selection = curation_selection(asset_graph(first.graphql))
            assert {BLOCKED_STEP, *WAITING_ON_PIPE, "sft_dataset"} <= selection
            run_id = launch_materialization(first.graphql, selection, run_config)
            wait_for_step(first, run_id, BLOCKED_STEP)
            assert run_status(first.graphql, run_id) == "STARTED"
            services = {p.pid: p for p in instance_processes(home)}

            webserver = webserver_process(first)
            os.kill(webserver.pid, signal.SIGKILL)
            # dagster dev notices within a second and shuts down everything it started.
            assert first.process is not None
            first.process.wait(timeout=60)
            assert "dagster-webserver process shut down unexpectedly" in first.log_tail(20000)

        survivors = {p.pid: p for p in instance_processes(home)}
        assert set(survivors) <= set(services), "nothing new may start while no server runs"
        roles = by_role(services.values())
        for role in ("webserver", "daemon"):
            assert roles[role].pid not in survivors, f"{role} outlived dagster dev"
        # The code server was asked to shut down and waits for its run; the run goes on.
        for role in ("code server", "run worker"):
            assert roles[role].pid in survivors, f"{role} died with dagster dev"

        with dagster_dev(tmp_path, log_name="second.log") as second:
            graphql = second.graphql
            # The new UI lists the run, still in progress, with nothing behind the pipe made yet.
            assert run_status(graphql, run_id) == "STARTED"
            for key in WAITING_ON_PIPE:
                assert latest_materialization(graphql, key) is None, key

            feed_pipe(pipe, PRETRAIN_SAMPLE.read_bytes())
            status = wait_for_run(second, run_id)
            assert status == "SUCCESS", run_errors(graphql, run_id)
            assert run_assets(graphql, run_id) == selection
            assert run_materializations(graphql, run_id) == selection
            profile = latest_materialization(graphql, "length_profile")
            assert profile is not None and profile.run_id == run_id
            assert (second.outputs / "length_profile.parquet").exists()
            # Its run done, the first server's code server exits too: nothing of it is left.
            assert not wait_for_exit(survivors, timeout=30)
    finally:
        leftovers = wait_for_exit([p.pid for p in instance_processes(home)], timeout=30)
        for process in leftovers:
            os.kill(process.pid, signal.SIGKILL)
    assert not leftovers, f"processes outlived both servers: {leftovers}"
