"""Judge throughput against a local OpenAI-compatible server with a fixed latency.

    .venv/bin/python bench/judge_throughput.py [--items 256] [--latency 0.2]

The server (a lean asyncio HTTP/1.1 server answering as ``curation.judge.stub`` does) runs in
its own process, so the client CPU time measured here is the client's alone. For each
concurrency (1 = sequential, the baseline) a fresh cache is used, so every item is one real
HTTP call (one presentation order); the ideal rate is concurrency / latency. Then the same
items again with the cache warm (no requests), and once more cold with two orders per item.
One JSON line per run goes to bench/results/judge_throughput.jsonl.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.judge import JudgeConfig, OpenAIJudge, RankRequest  # noqa: E402
from curation.judge.stub import longest_first  # noqa: E402
from curation.judge.templates import DEFAULT_RUBRIC, TEMPLATES, render  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "judge_throughput.jsonl"


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, latency: float):
    """One keep-alive connection: read a request, wait ``latency``, answer with a ranking of
    the shown candidates (longest first, as the test stub does)."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            raw = await reader.readexactly(length) if length else b""
            if lines[0].startswith("GET"):  # the preflight's model list: no model runs for it
                payload = {"object": "list", "data": [{"id": "bench"}]}
            else:
                await asyncio.sleep(latency)
                payload = longest_first(json.loads(raw), 0).body
            data = json.dumps(payload).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(data)}\r\n\r\n".encode()
                + data
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionResetError):
        pass
    finally:
        writer.close()


def serve(latency: float) -> None:
    """A lean asyncio server (no thread per connection): at 640 requests/s on two shared cores
    a threading server's own CPU would be what we measure."""

    async def main() -> None:
        server = await asyncio.start_server(
            lambda r, w: _answer(r, w, latency), "127.0.0.1", 0, backlog=1024
        )
        port = server.sockets[0].getsockname()[1]
        print(f"http://127.0.0.1:{port}/v1", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
        server.close()

    asyncio.run(main())


def batch(items: int) -> list[RankRequest]:
    return [
        RankRequest(
            f"bench-{i}",
            [{"role": "user", "content": f"Question {i}: explain the idea in two sentences."}],
            [(f"{i}-{j}", f"Candidate {j} for {i}. " + "detail " * (5 + 7 * j)) for j in range(4)],
        )
        for i in range(items)
    ]


def measure(base_url: str, requests: list[RankRequest], cache: Path, **settings) -> dict:
    config = JudgeConfig(
        base_url=base_url, model="bench", cache_path=str(cache), timeout_s=30.0, **settings
    )
    judge = OpenAIJudge(config, api_key="bench-key")
    cpu, wall = time.process_time(), time.perf_counter()
    results = judge.rank(requests)
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    summary = judge.summary
    sent = summary["requests_sent"]
    return {
        "wall_s": round(wall, 3),
        "items_per_s": round(len(requests) / wall, 2),
        "requests_sent": sent,
        "requests_per_s": round(sent / wall, 2),
        "cache_hits": summary["cache_hits"],
        "ok": sum(r.status == "ok" for r in results),
        "client_cpu_s": round(cpu, 3),
        "client_cpu_ms_per_request": round(1000 * cpu / sent, 3) if sent else None,
        "client_cpu_ms_per_item": round(1000 * cpu / len(requests), 3),
    }


def measure_bare(base_url: str, requests: list[RankRequest], concurrency: int) -> dict:
    """The reference: the same prompts through a bare ``openai`` client and a semaphore (no
    cache, parsing, limiters or orders), to show what the judge itself costs."""
    template = TEMPLATES[("listwise", "v1")]
    bodies = [
        {"model": "bench", "messages": render(template, DEFAULT_RUBRIC, "q", r.texts)}
        for r in requests
    ]

    async def run() -> None:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="bench-key", max_retries=0)
        gate = asyncio.Semaphore(concurrency)

        async def one(body: dict) -> None:
            async with gate:
                await client.post("/chat/completions", cast_to=object, body=body)

        await asyncio.gather(*(one(body) for body in bodies))
        await client.close()

    cpu, wall = time.process_time(), time.perf_counter()
    asyncio.run(run())
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    return {
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(bodies) / wall, 2),
        "client_cpu_ms_per_request": round(1000 * cpu / len(bodies), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", default="1,8,32,128")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    if args.serve:
        serve(args.latency)
        return
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--latency", str(args.latency)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = server.stdout.readline().strip()
        requests = batch(args.items)
        load_before = os.getloadavg()
        runs = []
        with tempfile.TemporaryDirectory() as tmp:
            for c in (int(x) for x in args.concurrency.split(",")):
                cache = Path(tmp) / f"c{c}.sqlite"
                row = measure(base_url, requests, cache, max_concurrency=c, permutations=1)
                ideal = min(c, args.items) / args.latency
                bare = measure_bare(base_url, requests, c)
                row.update(
                    run="cold",
                    concurrency=c,
                    ideal_requests_per_s=ideal,
                    share_of_ideal=round(row["requests_per_s"] / ideal, 3),
                    bare_openai_client=dict(
                        bare, share_of_ideal=round(bare["requests_per_s"] / ideal, 3)
                    ),
                )
                runs.append(row)
                print(json.dumps(row), flush=True)
            top = max(int(x) for x in args.concurrency.split(","))
            warm_cache = Path(tmp) / f"c{top}.sqlite"
            warm = measure(base_url, requests, warm_cache, max_concurrency=top, permutations=1)
            warm.update(run="warm cache", concurrency=top)
            runs.append(warm)
            print(json.dumps(warm), flush=True)
            swap = measure(
                base_url, requests, Path(tmp) / "swap.sqlite", max_concurrency=top, permutations=2
            )
            ideal = top / args.latency
            swap.update(
                run="cold, two orders per item",
                concurrency=top,
                ideal_requests_per_s=ideal,
                share_of_ideal=round(swap["requests_per_s"] / ideal, 3),
            )
            runs.append(swap)
            print(json.dumps(swap), flush=True)
        base = runs[0]["items_per_s"]
        for row in runs:
            row["speedup_vs_sequential"] = round(row["items_per_s"] / base, 2)
        record = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, python "
            f"{platform.python_version()}",
            "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
            "items": args.items,
            "candidates_per_item": 4,
            "latency_s": args.latency,
            "runs": runs,
        }
        if not args.no_record:
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            with RESULTS.open("a") as out:
                out.write(json.dumps(record) + "\n")
        print(json.dumps({k: v for k, v in record.items() if k != "runs"}))
    finally:
        server.stdin.close()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
