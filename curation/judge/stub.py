"""A small OpenAI-compatible chat-completions server on 127.0.0.1, for tests, benchmarks and
offline demos of the HTTP path.

It speaks just enough of the protocol (``POST /v1/chat/completions``, ``GET /v1/models``) to
exercise a real client over a real socket. What it answers is up to a ``responder``: a function
of the request's JSON body and the running count of chat requests that returns a ``Reply``
(status, body, headers, delay before answering). The default responder reads the candidate
blocks of our templates and ranks them by a stable rule (longer text first), so the client's
whole path can be driven without a model.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_ANSWER = re.compile(r'<answer id="([A-I])">\n(.*?)\n</answer>', re.DOTALL)


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # a dict becomes JSON; a str is sent as is (for malformed bodies)
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


Responder = Callable[[dict, int], Reply]


def presented(body: dict) -> list[tuple[str, str]]:
    """(label, text) of the candidates in the last user message of our templates."""
    users = [m["content"] for m in body.get("messages", []) if m.get("role") == "user"]
    first = users[0] if users else ""
    return _ANSWER.findall(first)


def completion(content: str, prompt_tokens: int = 100, completion_tokens: int = 10) -> dict:
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "stub",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def rank_by(key: Callable[[str], Any]) -> Responder:
    """A responder that ranks the shown candidates by ``key(text)``, highest first; ties keep
    the shown order (so ties are position-biased, like a real model's)."""

    def respond(body: dict, n: int) -> Reply:
        shown = presented(body)
        best_first = sorted(shown, key=lambda item: key(item[1]), reverse=True)
        if len(shown) == 2 and "winner" in body["messages"][-1]["content"]:
            a, b = key(shown[0][1]), key(shown[1][1])
            winner = "A" if a > b else "B" if b > a else "tie"
            return Reply(body=completion(json.dumps({"winner": winner})))
        ranking = [label for label, _ in best_first]
        return Reply(body=completion(json.dumps({"ranking": ranking})))

    return respond


longest_first = rank_by(len)


class StubServer:
    """``with StubServer(responder) as server: server.base_url``. ``requests`` counts chat
    calls; ``log`` keeps (time, body, headers) of each."""

    def __init__(
        self,
        responder: Responder = longest_first,
        latency_s: float = 0.0,
        backlog: int = 512,
        models_reply: Reply | None = None,
    ) -> None:
        self.responder = responder
        self.models_reply = models_reply  # what GET /models answers (e.g. a 401); default a list
        self.latency_s = latency_s
        self.requests = 0
        self.log: list[tuple[float, dict, dict[str, str]]] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
            # Headers and body go out in two writes; with Nagle on, the body waits for the
            # client's delayed ACK (~40 ms per response on Linux), which is not the latency we
            # mean to simulate.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, reply: Reply) -> None:
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                payload = reply.body
                data = (
                    payload.encode()
                    if isinstance(payload, str)
                    else json.dumps(payload if payload is not None else {}).encode()
                )
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                # The client may have given up (a timeout): then there is no one to answer.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(data)

            def _route(self) -> str:
                # the path without its query, as a real server routes (a gateway's ?key=...)
                return self.path.split("?", 1)[0].rstrip("/")

            def do_GET(self) -> None:
                if self._route().endswith("/models"):
                    listing = Reply(body={"object": "list", "data": [{"id": "stub"}]})
                    self._send(stub.models_reply or listing)
                else:
                    self._send(Reply(404, {"error": {"message": "not found"}}))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                if not self._route().endswith("/chat/completions"):
                    self._send(Reply(404, {"error": {"message": "not found"}}))
                    return
                body = json.loads(raw)
                with stub._lock:
                    stub.requests += 1
                    n = stub.requests
                    stub.log.append((time.monotonic(), body, dict(self.headers)))
                reply = stub.responder(body, n)
                if stub.latency_s:
                    time.sleep(stub.latency_s)
                self._send(reply)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = backlog

        self._server = Server(("127.0.0.1", 0), Handler)
        # A short poll interval: shutdown() waits for the loop to notice, 0.5 s by default.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> StubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
