"""A real ``dagster dev`` on 127.0.0.1 for the UI tests, and the GraphQL calls both tests share.

The server runs the project's own code location and instance config (dagster.yaml, so runs go
through the QueuedRunCoordinator and the daemon that ``dagster dev`` starts), with the instance and
every output in a temporary folder.

Runs execute in process, as every run of the project does (pipelines/definitions.py picks the
in-process executor): the launches here pass no executor config, so a change of executor shows up
in these tests' time and behaviour as it would in the UI.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from pipelines.instance import INSTANCE_CONFIG

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CODE_MODULE = "pipelines.definitions"

# The groups whose assets need no trained model: what "materialize the curation assets" means.
CURATION_GROUPS = ("ingest", "profile", "curate")
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}

# ![label](data:image/png;base64,....) as assets/profile.py writes histograms into markdown.
INLINE_PNG = re.compile(r"!\[(?P<alt>[^\]]*)\]\(data:image/png;base64,(?P<data>[A-Za-z0-9+/=]+)\)")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GraphQLError(RuntimeError):
    pass


@dataclass
class GraphQL:
    """The webserver's /graphql endpoint; raises on transport or GraphQL errors."""

    url: str

    def __call__(self, query: str, **variables: Any) -> dict[str, Any]:
        response = httpx.post(self.url, json={"query": query, "variables": variables}, timeout=60)
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise GraphQLError(str(body["errors"]))
        return body["data"]


@dataclass
class DagsterDev:
    base_url: str
    home: Path
    outputs: Path
    log: Path
    # The ``dagster dev`` process itself, for tests that watch it react to its children dying.
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def graphql(self) -> GraphQL:
        return GraphQL(f"{self.base_url}/graphql")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@contextmanager
def dagster_dev(
    folder: Path, startup_timeout: float = 120.0, log_name: str = "dagster_dev.log"
) -> Iterator[DagsterDev]:
    """``dagster dev`` (webserver + daemon + code server) on a free 127.0.0.1 port, with
    DAGSTER_HOME and POSTFORGE_OUTPUTS under ``folder``; yields once the code location loaded.

    A second one on the same ``folder`` serves the same instance and outputs (a restart); give it
    its own ``log_name``, since processes of the first may still be writing to the first log."""
    home, outputs, drops = folder / "dagster_home", folder / "outputs", folder / "drops"
    for path in (home, outputs, drops):
        path.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(INSTANCE_CONFIG, home / "dagster.yaml")
    port = free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "POSTFORGE_OUTPUTS": str(outputs),
        "POSTFORGE_DROPS": str(drops),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "dev", "-m", CODE_MODULE, "-h", "127.0.0.1", "-p", str(port)]
    log = folder / log_name
    with log.open("wb") as sink:
        # Own session: stopping it reaches the webserver, daemon and code server it started.
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=default_sigint,
        )
    server = DagsterDev(f"http://127.0.0.1:{port}", home, outputs, log, process)
    try:
        wait_until_loaded(server, process, startup_timeout)
        yield server
    finally:
        stop(process)


def default_sigint() -> None:
    """A shell that starts jobs in the background hands them SIGINT ignored, and dagster dev
    maps SIGTERM onto its SIGINT handler: inherited, that would make it unstoppable but by
    SIGKILL, which leaves its webserver and daemon behind."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_until_loaded(server: DagsterDev, process: subprocess.Popen, timeout: float) -> None:
    query = """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
        locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            code = process.returncode
            raise RuntimeError(f"dagster dev exited with {code}:\n{server.log_tail()}")
        try:
            entries = server.graphql(query)["workspaceOrError"]["locationEntries"]
        except (httpx.HTTPError, GraphQLError, KeyError):
            entries = []
        for entry in entries:
            loaded = entry["locationOrLoadError"] or {}
            if loaded.get("__typename") == "PythonError":
                raise RuntimeError(f"code location {entry['name']} failed: {loaded['message']}")
            if entry["loadStatus"] == "LOADED" and loaded.get("__typename"):
                return
        time.sleep(0.5)
    raise TimeoutError(f"dagster dev not ready after {timeout:.0f} s:\n{server.log_tail()}")


def stop(process: subprocess.Popen) -> None:
    """SIGINT (what Ctrl-C sends; dagster dev then stops its children), SIGKILL if it hangs."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


# --- processes (Linux /proc) -------------------------------------------------------------


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    parent: int
    command: str


def process_info(pid: int) -> ProcessInfo | None:
    """The live process ``pid`` (None once it exited, zombies included: nothing runs there)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name in parentheses may itself hold spaces or parentheses; fields follow it.
    state, parent = stat[stat.rindex(")") + 2 :].split()[:2]
    if state in ("Z", "X"):
        return None
    return ProcessInfo(pid, int(parent), raw.replace(b"\0", b" ").decode(errors="replace"))


def instance_processes(home: Path) -> list[ProcessInfo]:
    """Every live process started with DAGSTER_HOME=``home``: what the servers on that instance
    started, orphans included (when dagster dev dies, its code server and run worker live on)."""
    wanted = f"DAGSTER_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environment = (entry / "environ").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if wanted in environment and (info := process_info(int(entry.name))):
            found.append(info)
    return found


def webserver_process(server: DagsterDev) -> ProcessInfo:
    """The ``dagster_webserver`` child of this ``dagster dev``."""
    assert server.process is not None
    children = [
        info
        for info in instance_processes(server.home)
        if info.parent == server.process.pid and " -m dagster_webserver " in info.command
    ]
    if len(children) != 1:
        raise RuntimeError(f"expected one webserver under dagster dev, found {children}")
    return children[0]


def wait_for_exit(pids: Iterable[int], timeout: float) -> list[ProcessInfo]:
    """Wait until none of ``pids`` lives; those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [info for pid in pids if (info := process_info(pid))]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


# --- the asset graph ----------------------------------------------------------------------


@dataclass(frozen=True)
class AssetNode:
    key: str
    group: str
    partitioned: bool
    parents: tuple[str, ...]


def asset_graph(graphql: GraphQL) -> dict[str, AssetNode]:
    data = graphql(
        "{ assetNodes { assetKey { path } groupName isPartitioned dependencyKeys { path } } }"
    )
    return {
        "/".join(n["assetKey"]["path"]): AssetNode(
            key="/".join(n["assetKey"]["path"]),
            group=n["groupName"],
            partitioned=n["isPartitioned"],
            parents=tuple(sorted("/".join(d["path"]) for d in n["dependencyKeys"])),
        )
        for n in data["assetNodes"]
    }


def curation_selection(graph: dict[str, AssetNode]) -> set[str]:
    """Unpartitioned assets of the curation groups none of whose ancestors lies outside them:
    everything up to the curated datasets that does not wait on a checkpoint or a judge.

    Partitioned assets (raw drops) are left out: one run cannot hold them beside unpartitioned
    ones, and the datasets downstream combine whatever drops were materialized, none included."""
    ours = {k for k, n in graph.items() if n.group in CURATION_GROUPS}
    drops = {k for k in ours if graph[k].partitioned}
    selected = ours - drops
    while True:
        keep = {k for k in selected if all(p in selected | drops for p in graph[k].parents)}
        if keep == selected:
            return selected
        selected = keep


def curation_selection_query(graph: dict[str, AssetNode]) -> str:
    """The same selection in the UI's selection syntax, as a person would type it."""
    wanted = " or ".join(f'group:"{g}"' for g in CURATION_GROUPS)
    others = sorted({n.group for n in graph.values()} - set(CURATION_GROUPS))
    partitioned = sorted(
        k for k, n in graph.items() if n.partitioned and n.group in CURATION_GROUPS
    )
    excluded = [f'group:"{g}"+' for g in others] + [f'key:"{k}"' for k in partitioned]
    if not excluded:
        return wanted
    return f"({wanted}) and not ({' or '.join(excluded)})"


# --- runs ---------------------------------------------------------------------------------

LAUNCH = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename
  ... on LaunchRunSuccess { run { runId status } }
  ... on PythonError { message stack }
  ... on RunConfigValidationInvalid { errors { message } }
  ... on InvalidSubsetError { message }
} }"""


def location(graphql: GraphQL) -> tuple[str, str]:
    data = graphql(
        """{ repositoriesOrError { ... on RepositoryConnection { nodes { name
            location { name } } } } }"""
    )
    (repo,) = data["repositoriesOrError"]["nodes"]
    return repo["location"]["name"], repo["name"]


def launch_materialization(
    graphql: GraphQL, keys: Iterable[str], run_config: dict[str, Any] | None = None
) -> str:
    """Materialize ``keys`` in one run of the implicit asset job, as the UI's Materialize does."""
    location_name, repository_name = location(graphql)
    params = {
        "selector": {
            "repositoryLocationName": location_name,
            "repositoryName": repository_name,
            "jobName": "__ASSET_JOB",
            "assetSelection": [{"path": key.split("/")} for key in sorted(keys)],
        },
        "runConfigData": run_config or {},
        "mode": "default",
    }
    result = graphql(LAUNCH, params=params)["launchRun"]
    if result["__typename"] != "LaunchRunSuccess":
        raise GraphQLError(f"launchRun: {result}")
    return result["run"]["runId"]


def run_status(graphql: GraphQL, run_id: str) -> str:
    data = graphql(
        "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", id=run_id
    )
    return data["runOrError"]["status"]


def run_assets(graphql: GraphQL, run_id: str) -> set[str]:
    data = graphql(
        "query($id: ID!) { runOrError(runId: $id) { ... on Run { assetSelection { path } } } }",
        id=run_id,
    )
    return {"/".join(k["path"]) for k in data["runOrError"]["assetSelection"] or []}


def run_errors(graphql: GraphQL, run_id: str) -> list[str]:
    data = graphql(
        """query($id: ID!) { logsForRun(runId: $id) { ... on EventConnection { events {
            __typename ... on MessageEvent { message stepKey }
            ... on ExecutionStepFailureEvent { error { message } } } } } }""",
        id=run_id,
    )
    events = data["logsForRun"].get("events", [])
    return [
        f"{e.get('stepKey')}: {e['message']} {(e.get('error') or {}).get('message', '')}"
        for e in events
        if e["__typename"] in ("ExecutionStepFailureEvent", "RunFailureEvent")
    ]


def started_steps(graphql: GraphQL, run_id: str) -> set[str]:
    data = graphql(
        """query($id: ID!) { logsForRun(runId: $id) { ... on EventConnection { events {
            __typename ... on ExecutionStepStartEvent { stepKey } } } } }""",
        id=run_id,
    )
    events = data["logsForRun"].get("events", [])
    return {e["stepKey"] for e in events if e["__typename"] == "ExecutionStepStartEvent"}


def wait_for_step(server: DagsterDev, run_id: str, step_key: str, timeout: float = 120.0) -> None:
    """Poll until the run started ``step_key`` (its body is running or about to)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if step_key in started_steps(server.graphql, run_id):
            return
        if (status := run_status(server.graphql, run_id)) in FINISHED:
            raise RuntimeError(f"run {run_id} {status} before step {step_key} started")
        time.sleep(0.2)
    raise TimeoutError(f"step {step_key} of run {run_id} not started after {timeout:.0f} s")


def run_materializations(graphql: GraphQL, run_id: str) -> set[str]:
    """The asset keys this run materialized, as its run page lists them."""
    data = graphql(
        """query($id: ID!) { runOrError(runId: $id) { ... on Run {
            assetMaterializations { assetKey { path } } } } }""",
        id=run_id,
    )
    return {"/".join(m["assetKey"]["path"]) for m in data["runOrError"]["assetMaterializations"]}


def wait_for_run(server: DagsterDev, run_id: str, timeout: float = 120.0) -> str:
    """Poll until the run finished; the final status. A run still QUEUED at the deadline means
    the daemon never picked it up, which the message says."""
    deadline = time.monotonic() + timeout
    status = "UNKNOWN"
    while time.monotonic() < deadline:
        status = run_status(server.graphql, run_id)
        if status in FINISHED:
            return status
        time.sleep(0.5)
    raise TimeoutError(f"run {run_id} still {status} after {timeout:.0f} s:\n{server.log_tail()}")


# --- metadata -----------------------------------------------------------------------------

LATEST_MATERIALIZATION = """query($key: AssetKeyInput!) { assetOrError(assetKey: $key) {
  ... on Asset { assetMaterializations(limit: 1) { runId metadataEntries {
    label __typename ... on MarkdownMetadataEntry { mdStr } } } }
} }"""


@dataclass(frozen=True)
class Materialization:
    run_id: str
    markdown: dict[str, str]


def latest_materialization(graphql: GraphQL, key: str) -> Materialization | None:
    data = graphql(LATEST_MATERIALIZATION, key={"path": key.split("/")})["assetOrError"]
    events = data.get("assetMaterializations") or []
    if not events:
        return None
    markdown = {
        e["label"]: e["mdStr"]
        for e in events[0]["metadataEntries"]
        if e["__typename"] == "MarkdownMetadataEntry"
    }
    return Materialization(run_id=events[0]["runId"], markdown=markdown)


@dataclass(frozen=True)
class InlinePng:
    label: str
    alt: str
    width: int
    height: int
    data: bytes


def inline_pngs(markdown: dict[str, str]) -> list[InlinePng]:
    """Every image embedded as a PNG data URL, decoded; its size read from the IHDR chunk, so a
    truncated or non-PNG payload fails here rather than rendering as a broken image."""
    found = []
    for label, text in markdown.items():
        for match in INLINE_PNG.finditer(text):
            data = base64.b64decode(match["data"], validate=True)
            if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
                raise ValueError(f"{label}: inline image is not a PNG")
            width, height = struct.unpack(">II", data[16:24])
            found.append(InlinePng(label, match["alt"], width, height, data))
    return found


def artifacts_dir(default: Path) -> Path:
    """Screenshots go to $POSTFORGE_UI_ARTIFACTS (kept by CI) or the test's tmp folder."""
    folder = Path(os.environ.get("POSTFORGE_UI_ARTIFACTS") or default)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
