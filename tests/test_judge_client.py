"""The OpenAI-compatible judge against a real HTTP server on 127.0.0.1 (curation.judge.stub)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from email.utils import formatdate
from pathlib import Path

import pytest

from curation.judge import JudgeConfig, JudgeEndpointError, OpenAIJudge, RankRequest
from curation.judge.stub import Reply, StubServer, completion, longest_first, presented

SECRET = "sk-test-DO-NOT-LEAK-4242"


def config(server: StubServer, **overrides) -> JudgeConfig:
    settings = dict(
        base_url=server.base_url,
        model="stub-judge",
        backoff_base_s=0.001,
        backoff_max_s=0.01,
        timeout_s=5.0,
        max_retries=3,
    )
    settings.update(overrides)
    return JudgeConfig(**settings)


def requests(n: int = 4, k: int = 3) -> list[RankRequest]:
    """Candidates of distinct lengths: the stub's default responder ranks longest first."""
    return [
        RankRequest(
            f"p{i}",
            [{"role": "user", "content": f"Question number {i}?"}],
            [(f"p{i}-c{j}", f"answer {i} " + "x" * (3 * j + 1)) for j in range(k)],
        )
        for i in range(n)
    ]


def is_repair(body: dict) -> bool:
    return len(body["messages"]) > 2


def test_listwise_ranks_from_the_reply_in_every_order():
    with StubServer() as server:
        judge = OpenAIJudge(config(server, permutations=3), api_key=SECRET)
        results = judge.rank(requests(4, 3))
        sent = server.requests
    assert [r.ranks for r in results] == [[3, 2, 1]] * 4
    assert all(r.status == "ok" and r.consistent is True for r in results)
    assert sent == 12 and judge.summary["requests_sent"] == 12
    assert judge.summary["consistency_rate"] == 1.0
    assert judge.summary["input_tokens"] == 1200 and judge.summary["output_tokens"] == 120
    orders = results[0].meta["orders"]
    assert orders[:2] == [[0, 1, 2], [2, 1, 0]] and len(set(map(tuple, orders))) == 3


def test_pairwise_judges_each_pair_in_both_orders():
    with StubServer() as server:
        judge = OpenAIJudge(config(server, template="pairwise"), api_key=SECRET)
        results = judge.rank(requests(2, 4))
        sent = server.requests
        shown = [tuple(label for label, _ in presented(body)) for _, body, _ in server.log]
    assert sent == 2 * 6 * 2  # C(4,2) pairs, both orders, two prompts
    assert all(s == ("A", "B") for s in shown)
    assert [r.ranks for r in results] == [[4, 3, 2, 1]] * 2
    assert judge.summary["pair_consistency_rate"] == 1.0


def test_cost_from_configured_prices():
    with StubServer() as server:
        judge = OpenAIJudge(
            config(server, price_input_per_1m=2.0, price_output_per_1m=10.0), api_key=SECRET
        )
        results = judge.rank(requests(3, 2))
    # 6 calls of 100 input and 10 output tokens each (the stub's usage)
    assert judge.summary["cost"] == pytest.approx((600 * 2.0 + 60 * 10.0) / 1e6)
    assert sum(r.meta["cost"] for r in results) == pytest.approx(judge.summary["cost"])


def test_prose_answer_is_repaired_once():
    def respond(body: dict, n: int) -> Reply:
        if not is_repair(body):
            return Reply(body=completion("I think the second answer is best, then the first."))
        return longest_first(body, n)

    with StubServer(respond) as server:
        judge = OpenAIJudge(config(server), api_key=SECRET)
        results = judge.rank(requests(3, 3))
        repairs = [body for _, body, _ in server.log if is_repair(body)]
    assert [r.status for r in results] == ["ok"] * 3
    assert [r.ranks for r in results] == [[3, 2, 1]] * 3
    assert judge.summary["repairs"] == 6 and judge.summary["requests_sent"] == 12
    # the repair shows the model its own reply and says what was wrong
    assert repairs[0]["messages"][2]["role"] == "assistant"
    assert "not a JSON object" in repairs[0]["messages"][3]["content"]


@pytest.mark.parametrize(
    "reply",
    [
        "Answer B is clearly better.",  # prose
        '{"ranking": ["A", "B"',  # malformed JSON
        '{"order": ["A", "B", "C"]}',  # missing field
        '{"ranking": ["A", "A", "B"]}',  # repeated label
    ],
)
def test_unparseable_twice_is_counted_not_dropped(reply):
    with StubServer(lambda body, n: Reply(body=completion(reply))) as server:
        judge = OpenAIJudge(config(server, permutations=1), api_key=SECRET)
        results = judge.rank(requests(2, 3))
        sent = server.requests
    assert len(results) == 2
    assert [r.status for r in results] == ["unparseable"] * 2
    assert all(r.ranks is None for r in results)
    assert sent == 4  # each: the call and one repair
    assert judge.summary["unparseable"] == 2 and judge.summary["ok"] == 0
    problem = results[0].meta["unparseable"][0]
    assert problem["first"] and problem["after_repair"] and problem["reply"] == reply[:300]


def test_json_in_a_code_fence_is_accepted():
    fenced = '```json\n{"ranking": ["B", "A"]}\n```'
    with StubServer(lambda body, n: Reply(body=completion(fenced))) as server:
        judge = OpenAIJudge(config(server, permutations=1), api_key=SECRET)
        (result,) = judge.rank(requests(1, 2))
    assert result.status == "ok" and result.ranks == [2, 1]


def test_retry_after_is_honoured_then_success():
    def respond(body: dict, n: int) -> Reply:
        if n == 1:
            return Reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "1"})
        return longest_first(body, n)

    with StubServer(respond) as server:
        judge = OpenAIJudge(config(server, permutations=1), api_key=SECRET)
        (result,) = judge.rank(requests(1, 2))
        times = [t for t, _, _ in server.log]
    assert result.status == "ok" and result.ranks == [2, 1]
    assert judge.summary["retries"] == 1 and judge.summary["requests_sent"] == 2
    assert times[1] - times[0] >= 0.9  # backoff alone would be ~1 ms


def test_retry_after_as_http_date_is_capped_by_config():
    def respond(body: dict, n: int) -> Reply:
        if n == 1:
            later = formatdate(timeval=__import__("time").time() + 3600, usegmt=True)
            return Reply(503, {"error": {"message": "maintenance"}}, {"Retry-After": later})
        return longest_first(body, n)

    with StubServer(respond) as server:
        judge = OpenAIJudge(config(server, permutations=1, retry_after_max_s=0.2), api_key=SECRET)
        (result,) = judge.rank(requests(1, 2))
        times = [t for t, _, _ in server.log]
    assert result.status == "ok"
    assert 0.15 <= times[1] - times[0] < 3.0


def test_server_errors_are_retried():
    def respond(body: dict, n: int) -> Reply:
        if n <= 2:
            return Reply(500, {"error": {"message": "boom"}})
        return longest_first(body, n)

    with StubServer(respond) as server:
        judge = OpenAIJudge(config(server, permutations=1), api_key=SECRET)
        (result,) = judge.rank(requests(1, 3))
    assert result.status == "ok" and result.ranks == [3, 2, 1]
    assert judge.summary["retries"] == 2 and judge.summary["requests_sent"] == 3
    assert result.meta["attempts"] == 3


def test_slow_response_times_out_and_is_retried():
    def respond(body: dict, n: int) -> Reply:
        reply = longest_first(body, n)
        if n == 1:
            reply.delay_s = 1.5
        return reply

    with StubServer(respond) as server:
        judge = OpenAIJudge(config(server, permutations=1, timeout_s=0.3), api_key=SECRET)
        (result,) = judge.rank(requests(1, 2))
    assert result.status == "ok"
    assert judge.summary["retries"] == 1 and judge.summary["requests_sent"] == 2


def test_retries_spent_give_an_error_result_and_the_rest_still_run():
    def respond(body: dict, n: int) -> Reply:
        if "Question number 0" in body["messages"][1]["content"]:
            return Reply(502, {"error": {"message": f"bad gateway, key {SECRET}"}})
        return longest_first(body, n)

    with StubServer(respond) as server:
        judge = OpenAIJudge(config(server, permutations=1, max_retries=2), api_key=SECRET)
        results = judge.rank(requests(3, 2))
    assert [r.status for r in results] == ["error", "ok", "ok"]
    (message,) = results[0].meta["errors"]
    assert "gave up after 3 attempt(s)" in message and "HTTP 502" in message
    assert SECRET not in message and "***" in message


def test_client_errors_are_not_retried():
    with StubServer(lambda body, n: Reply(400, {"error": {"message": "bad model"}})) as server:
        judge = OpenAIJudge(config(server, permutations=1), api_key=SECRET)
        (result,) = judge.rank(requests(1, 2))
        sent = server.requests
    assert result.status == "error" and sent == 1
    assert "HTTP 400: bad model" in result.meta["errors"][0]


@pytest.mark.parametrize(
    "body",
    [{"id": "x", "object": "chat.completion", "choices": []}, "this is not json at all"],
)
def test_protocol_errors_become_error_results(body):
    with StubServer(lambda b, n: Reply(200, body)) as server:
        judge = OpenAIJudge(config(server, permutations=1, max_retries=0), api_key=SECRET)
        (result,) = judge.rank(requests(1, 2))
    assert result.status == "error" and result.ranks is None
    assert result.meta["errors"]


def test_second_run_is_served_from_cache(tmp_path: Path):
    cache = tmp_path / "judge.sqlite"
    with StubServer() as server:
        first = OpenAIJudge(config(server, cache_path=str(cache)), api_key=SECRET)
        results = first.rank(requests(5, 3))
        sent = server.requests
        second = OpenAIJudge(config(server, cache_path=str(cache)), api_key=SECRET)
        again = second.rank(requests(5, 3))
        assert server.requests == sent == 10
    assert [r.ranks for r in again] == [r.ranks for r in results]
    assert all(r.meta["from_cache"] for r in again)
    assert second.summary["requests_sent"] == 0 and second.summary["cache_hits"] == 10
    assert second.summary["cost"] == 0.0
    # a new item pays only for itself; a changed setting misses the cache
    with StubServer() as server:
        OpenAIJudge(config(server, cache_path=str(cache)), api_key=SECRET).rank(requests(6, 3))
        assert server.requests == 2
        OpenAIJudge(config(server, cache_path=str(cache), temperature=0.7), api_key=SECRET).rank(
            requests(1, 3)
        )
        assert server.requests == 4


def test_unparseable_answers_are_cached_too(tmp_path: Path):
    cache = str(tmp_path / "judge.sqlite")
    with StubServer(lambda body, n: Reply(body=completion("no idea"))) as server:
        OpenAIJudge(config(server, cache_path=cache, permutations=1), api_key=SECRET).rank(
            requests(2, 2)
        )
        assert server.requests == 4
        judge = OpenAIJudge(config(server, cache_path=cache, permutations=1), api_key=SECRET)
        results = judge.rank(requests(2, 2))
        assert server.requests == 4
    assert [r.status for r in results] == ["unparseable"] * 2
    assert judge.summary["unparseable"] == 2


def test_a_cancelled_run_resumes_and_pays_only_for_the_rest(tmp_path: Path):
    cache = str(tmp_path / "judge.sqlite")
    batch = requests(40, 2)
    gate = threading.Event()

    def respond(body: dict, n: int) -> Reply:
        if n > 10:
            gate.wait(5)  # hold the rest in flight until the run is killed
        return longest_first(body, n)

    async def killed_half_way(server: StubServer) -> None:
        judge = OpenAIJudge(config(server, cache_path=cache, max_concurrency=4), api_key=SECRET)
        task = asyncio.ensure_future(judge.arank(batch))
        while server.requests < 14:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with StubServer(respond) as server:
        asyncio.run(killed_half_way(server))
        gate.set()
        first_run = server.requests
    import sqlite3

    with sqlite3.connect(cache) as db:
        kept = db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    assert kept == 10  # the answers that arrived before the kill, each committed on arrival
    with StubServer() as server:
        judge = OpenAIJudge(config(server, cache_path=cache), api_key=SECRET)
        results = judge.rank(batch)
        resumed = server.requests
    assert first_run == 14
    assert resumed == 80 - kept
    assert judge.summary["cache_hits"] == kept
    assert all(r.status == "ok" and r.ranks == [2, 1] for r in results)


def test_api_key_is_sent_but_never_stored(tmp_path: Path):
    cache = tmp_path / "judge.sqlite"
    with StubServer() as server:
        judge = OpenAIJudge(config(server, cache_path=str(cache)), api_key=SECRET)
        results = judge.rank(requests(3, 3))
        headers = [h for _, _, h in server.log]
    auth = [{k.lower(): v for k, v in h.items()}.get("authorization") for h in headers]
    assert auth and all(a == f"Bearer {SECRET}" for a in auth)
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert stored and SECRET.encode() not in stored
    dumped = json.dumps([r.__dict__ for r in results]) + json.dumps(judge.summary)
    assert SECRET not in dumped and SECRET not in repr(judge)
    assert SECRET not in json.dumps(judge.config.public())


def test_rejected_key_fails_before_any_request_naming_the_endpoint():
    denied = Reply(401, {"error": {"message": f"Incorrect API key provided: {SECRET}"}})
    with StubServer(models_reply=denied) as server:
        judge = OpenAIJudge(config(server), api_key=SECRET)
        with pytest.raises(JudgeEndpointError) as error:
            judge.rank(requests(3, 2))
        sent = server.requests
    assert sent == 0
    assert server.base_url in str(error.value) and "401" in str(error.value)
    assert SECRET not in str(error.value)


def test_unreachable_endpoint_fails_clearly():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: nothing listens there
    url = f"http://127.0.0.1:{port}/v1"
    judge = OpenAIJudge(JudgeConfig(base_url=url, timeout_s=2.0, max_retries=0), api_key=SECRET)
    with pytest.raises(JudgeEndpointError, match="cannot reach judge endpoint") as error:
        judge.rank(requests(1, 2))
    assert url in str(error.value) and SECRET not in str(error.value)


def first_shown_wins(body: dict, n: int) -> Reply:
    """A judge with pure position bias: whatever is shown first wins."""
    shown = presented(body)
    if "winner" in body["messages"][-1]["content"]:
        return Reply(body=completion('{"winner": "A"}'))
    return Reply(body=completion(json.dumps({"ranking": [label for label, _ in shown]})))


@pytest.mark.parametrize("template", ["listwise", "pairwise"])
def test_position_bias_becomes_a_tie(template):
    with StubServer(first_shown_wins) as server:
        judge = OpenAIJudge(config(server, template=template), api_key=SECRET)
        results = judge.rank(requests(3, 2))
    assert all(r.status == "ok" and r.ranks == [1, 1] and r.consistent is False for r in results)
    assert judge.summary["consistency_rate"] == 0.0
    assert judge.summary["inconsistent_items"] == 3


@pytest.mark.parametrize("template", ["listwise", "pairwise"])
def test_position_bias_is_dropped_when_configured(template):
    with StubServer(first_shown_wins) as server:
        judge = OpenAIJudge(
            config(server, template=template, on_inconsistent="drop"), api_key=SECRET
        )
        results = judge.rank(requests(3, 2))
    assert [r.status for r in results] == ["inconsistent"] * 3
    assert all(r.ranks is None and r.consistent is False for r in results)
    assert judge.summary["inconsistent"] == 3 and judge.summary["ok"] == 0


def test_partly_inconsistent_list_keeps_the_agreed_pairs():
    # Orders agree that the longest text is best; the two short ones tie by length, and the
    # stub then keeps the shown order, so the orders disagree on that pair only.
    batch = [RankRequest("p", "q?", [("a", "xx"), ("b", "yy"), ("c", "zzzzzz")])]
    with StubServer() as server:
        judge = OpenAIJudge(config(server), api_key=SECRET)
        (result,) = judge.rank(batch)
    assert result.ranks == [2, 2, 1] and result.consistent is False
    assert (result.meta["pairs_compared"], result.meta["pairs_consistent"]) == (3, 2)


def test_bad_candidate_lists_are_reported_without_requests():
    batch = [
        RankRequest("one", "q?", [("a", "only answer")]),
        RankRequest("ten", "q?", [(str(i), f"answer {i}") for i in range(10)]),
        RankRequest("dup", "q?", [("a", "x"), ("a", "y")]),
    ]
    with StubServer() as server:
        judge = OpenAIJudge(config(server), api_key=SECRET)
        results = judge.rank(batch)
        sent = server.requests
    assert sent == 0 and [r.status for r in results] == ["error"] * 3
    assert "1 candidate(s)" in results[0].meta["reason"]
    assert "10 candidate(s)" in results[1].meta["reason"]
    assert "repeated candidate_id" in results[2].meta["reason"]
    assert judge.summary["skipped"] == 3


def test_long_texts_are_truncated_and_counted():
    long_prompt = "Summarise this: " + "word " * 5000
    batch = [RankRequest("p", long_prompt, [("a", "short"), ("b", "b" * 10_000)])]
    with StubServer() as server:
        judge = OpenAIJudge(
            config(server, max_prompt_chars=1000, max_candidate_chars=500, permutations=1),
            api_key=SECRET,
        )
        (result,) = judge.rank(batch)
        sent = server.log[0][1]["messages"][1]["content"]
    assert result.status == "ok" and result.ranks == [2, 1]
    assert result.meta["truncated"] == 2 and judge.summary["truncated_texts"] == 2
    assert len(sent) < 2500 and "[... truncated]" in sent


def test_concurrency_limit_holds():
    active, peak = [0], [0]
    lock = threading.Lock()

    def respond(body: dict, n: int) -> Reply:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        __import__("time").sleep(0.05)
        with lock:
            active[0] -= 1
        return longest_first(body, n)

    with StubServer(respond) as server:
        judge = OpenAIJudge(config(server, max_concurrency=3), api_key=SECRET)
        results = judge.rank(requests(8, 2))
    assert all(r.status == "ok" for r in results)
    assert peak[0] == 3


def test_rank_works_inside_a_running_event_loop():
    async def inside() -> list:
        with StubServer() as server:
            return OpenAIJudge(config(server, permutations=1), api_key=SECRET).rank(requests(2, 2))

    results = asyncio.run(inside())
    assert [r.ranks for r in results] == [[2, 1]] * 2


def test_requests_per_minute_limit_spaces_the_calls():
    with StubServer() as server:
        # 1200/min = 20/s with a bucket of 20: the first 20 go at once, the next 10 take ~0.5 s
        judge = OpenAIJudge(
            config(server, permutations=1, requests_per_minute=1200, max_concurrency=32),
            api_key=SECRET,
        )
        results = judge.rank(requests(30, 2))
        times = sorted(t for t, _, _ in server.log)
    assert all(r.status == "ok" for r in results)
    assert times[-1] - times[0] >= 0.4


def test_identical_requests_under_two_ids_are_sent_once():
    original = requests(1, 3)[0]
    twice = [original, RankRequest("copy", original.prompt, original.candidates)]
    with StubServer() as server:
        judge = OpenAIJudge(config(server), api_key=SECRET)
        results = judge.rank(twice)
        sent = server.requests
    assert sent == 2  # two orders, shared by both requests
    assert results[0].ranks == results[1].ranks == [3, 2, 1]
    assert judge.summary["cache_hits"] == 2 and results[1].meta["from_cache"]


def test_key_rejected_mid_run_stops_the_run_without_retrying():
    denied = Reply(401, {"error": {"message": f"Incorrect API key provided: {SECRET}"}})
    with StubServer(lambda body, n: denied) as server:
        judge = OpenAIJudge(config(server, preflight=False, max_concurrency=1), api_key=SECRET)
        with pytest.raises(JudgeEndpointError, match="rejected the API key") as error:
            judge.rank(requests(5, 2))
        sent = server.requests
    assert sent == 1 and SECRET not in str(error.value)


# --- secrets in the base URL, answers without usage ----------------------------------------

URL_PASSWORD, URL_QUERY_KEY = "pw-IN-THE-URL-5150", "qk-IN-THE-QUERY-6160"


def with_url_secrets(server: StubServer) -> str:
    """The stub's URL with a password (the HTTP client turns it into Basic auth)."""
    return server.base_url.replace("http://", f"http://gateway:{URL_PASSWORD}@")


def assert_no_url_secret(text: str) -> None:
    import base64

    basic = base64.b64encode(f"gateway:{URL_PASSWORD}".encode()).decode()
    for secret in (URL_PASSWORD, URL_QUERY_KEY, basic, SECRET):
        assert secret not in text, text


def test_a_password_in_the_base_url_never_reaches_a_message():
    denied = Reply(401, {"error": {"message": "no"}})
    with StubServer(models_reply=denied) as server:
        url = with_url_secrets(server)
        judge = OpenAIJudge(config(server, base_url=url), api_key=SECRET)
        with pytest.raises(JudgeEndpointError) as error:
            judge.rank(requests(1, 2))
    message = str(error.value)
    assert message == (
        f"judge endpoint {server.base_url.replace('http://', 'http://gateway:***@')} "
        "rejected the API key (HTTP 401)"
    )
    assert_no_url_secret(message + repr(judge) + json.dumps(judge.config.public()))


def test_an_error_reply_echoing_the_credentials_is_scrubbed():
    def echo(body: dict, n: int) -> Reply:
        return Reply(500, {"error": {"message": f"internal; you sent {server.log[-1][2]}"}})

    with StubServer(echo) as server:
        url = f"{with_url_secrets(server)}?key={URL_QUERY_KEY}"
        judge = OpenAIJudge(
            config(server, base_url=url, max_retries=0, permutations=1), api_key=SECRET
        )
        (result,) = judge.rank(requests(1, 2))
        sent = [{k.lower(): v for k, v in h.items()}.get("authorization") for _, _, h in server.log]
    assert result.status == "error" and sent[0].startswith("Basic ")
    (message,) = result.meta["errors"]
    assert "HTTP 500" in message and "***" in message
    assert_no_url_secret(message)


@pytest.mark.parametrize("preflight", [True, False])
def test_a_key_in_the_query_never_reaches_a_message(preflight):
    denied = Reply(401, {"error": {"message": "no"}})
    with StubServer(lambda body, n: denied, models_reply=denied) as server:
        url = f"{server.base_url}?key={URL_QUERY_KEY}&v=1"
        judge = OpenAIJudge(
            config(server, base_url=url, preflight=preflight, permutations=1), api_key=SECRET
        )
        with pytest.raises(JudgeEndpointError, match="rejected the API key") as error:
            judge.rank(requests(1, 2))
        sent = server.requests
    assert f"{server.base_url}?key=***&v=*** rejected" in str(error.value)
    assert_no_url_secret(str(error.value))
    assert sent == (0 if preflight else 1)


def test_an_unreachable_endpoint_with_a_key_in_the_query_is_named_without_it():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        base = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    judge = OpenAIJudge(JudgeConfig(base_url=f"{base}?key={URL_QUERY_KEY}", timeout_s=2.0))
    with pytest.raises(JudgeEndpointError, match="cannot reach judge endpoint") as error:
        judge.rank(requests(1, 2))
    assert f"{base}?key=***" in str(error.value)
    assert_no_url_secret(str(error.value))


def without_usage_for(prompt_numbers: set[int]):
    def respond(body: dict, n: int) -> Reply:
        reply = longest_first(body, n)
        asked = body["messages"][1]["content"]
        if any(f"Question number {i}?" in asked for i in prompt_numbers):
            del reply.body["usage"]
        return reply

    return respond


def test_answers_without_usage_make_the_cost_unknown_not_zero():
    with StubServer(without_usage_for({0})) as server:
        judge = OpenAIJudge(
            config(server, permutations=1, price_input_per_1m=2.0, price_output_per_1m=10.0),
            api_key=SECRET,
        )
        results = judge.rank(requests(3, 2))
    summary = judge.summary
    assert summary["answers_without_usage"] == 1
    assert (
        summary["cost"] is None and "1 answer(s) came without token usage" in summary["cost_note"]
    )
    assert summary["input_tokens"] == 200  # the two answers that reported it
    assert results[0].meta["cost"] is None and results[0].meta["answers_without_usage"] == 1
    assert results[1].meta["cost"] == pytest.approx((100 * 2.0 + 10 * 10.0) / 1e6)
    # a panel holding that judge cannot know its cost either
    from curation.judge import JudgePanel, OfflineJudge

    with StubServer(without_usage_for({0})) as server:
        panel = JudgePanel([OpenAIJudge(config(server, permutations=1)), OfflineJudge()])
        panel.rank(requests(2, 2))
    assert panel.summary["cost"] is None
