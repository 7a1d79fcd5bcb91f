"""The LLM judge over any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama,
llama.cpp server).

One ``OpenAIJudge.rank`` call judges a batch: every request is shown in several orders (see
``JudgeConfig``), each order is one chat call, and the calls run concurrently under a semaphore
and the rate limiters. A call's answer is cached the moment it arrives; a reply that is not the
JSON asked for gets one repair prompt and is then counted as unparseable. The ``openai`` client
is created with ``max_retries=0`` because retries are ours: we count them, honour Retry-After,
and must never retry a rejected key.

The API key lives only in the ``openai`` client; it is scrubbed from every error message we
keep, and it is not part of the cache key, the results or the summary. A key that sits in the
base URL (``user:KEY@host``, ``?key=KEY``) is masked the same way: messages name the endpoint by
``redact_url(base_url)``.

A server that leaves ``usage`` out of a reply gives us no token count: such answers are
counted (``answers_without_usage``) and the cost is reported as unknown (None), never as 0.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import ssl
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import openai

try:  # the HTTP library under openai: httpx2 in openai 3.x, httpx before
    import httpx2 as httpx
except ImportError:  # pragma: no cover - depends on the installed openai
    import httpx  # type: ignore[no-redef]

from curation.judge.aggregate import Pair, aggregate, prefs_from_order
from curation.judge.cache import AnswerCache, CachedAnswer, cache_key
from curation.judge.config import MASK, JudgeConfig, redact_url, split_query, url_secrets
from curation.judge.limits import RateLimiter, backoff_s, retry_after_s
from curation.judge.parsing import ParseError, parse_ranking, parse_winner
from curation.judge.templates import (
    LABELS,
    TEMPLATES,
    conversation_text,
    render,
    repair_messages,
    truncate,
)
from curation.judge.types import RankRequest, RankResult, check_candidates

T = TypeVar("T")
REPLY_CHARS_KEPT = 300  # of an unparseable reply, in the result's meta
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})


class JudgeEndpointError(RuntimeError):
    """The endpoint cannot be used at all (unreachable, key rejected). Names the endpoint,
    never the key. ``no_key``: it refused us and we had no key to send (the caller knows where
    the key should have come from, and can say so)."""

    def __init__(self, message: str, no_key: bool = False) -> None:
        super().__init__(message)
        self.no_key = no_key


def auth_error(url: str, status: int, key_given: bool) -> JudgeEndpointError:
    """The endpoint answered 401/403. Without a key we sent only the client's placeholder, so
    "rejected the API key" would send the user hunting for a wrong key instead of a missing one.
    """
    if key_given:
        return JudgeEndpointError(f"judge endpoint {url} rejected the API key (HTTP {status})")
    return JudgeEndpointError(
        f"judge endpoint {url} refused the request (HTTP {status}) and no API key was given",
        no_key=True,
    )


class CallFailed(Exception):
    """One chat call failed for good (retries spent, or an error a retry cannot fix).
    ``rejected``: the endpoint refused this very request (an HTTP status no retry changes,
    such as a content filter's 400), so asking again, now or in a later run, pays for the
    same refusal."""

    def __init__(self, message: str, rejected: bool = False) -> None:
        super().__init__(message)
        self.rejected = rejected


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from sync code, also when the caller already runs an event loop (a
    notebook, an async Dagster op): then it runs on a fresh loop in a helper thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as error:  # handed back to the caller's thread
            box["error"] = error

    thread = threading.Thread(target=target, name="judge-loop")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # Loading the CA bundle takes ~45 ms; once per process instead of once per rank() call.
    return httpx.create_ssl_context()


def http_client(concurrency: int) -> Any:
    """openai's default HTTP client, with a shared TLS context and a keep-alive pool as large as
    the concurrency (the default keeps 100 connections, so 128 in flight would churn)."""
    pool = max(100, concurrency)
    return openai.DefaultAsyncHttpxClient(
        verify=_tls_context(),
        limits=httpx.Limits(max_connections=max(1000, pool), max_keepalive_connections=pool),
    )


@dataclass
class Answer:
    content: str
    input_tokens: int
    output_tokens: int
    from_cache: bool
    attempts: int
    usage_known: bool = True  # False: the server sent no token counts with this answer


@dataclass
class RunStats:
    requests_sent: int = 0  # HTTP chat calls, retries included
    retries: int = 0
    calls: int = 0  # chat calls needed (cached or sent)
    cache_hits: int = 0
    repairs: int = 0
    input_tokens: int = 0  # paid in this run (cache hits are free)
    output_tokens: int = 0
    answers_without_usage: int = 0  # paid answers the server sent without token counts
    truncated_texts: int = 0
    pairs_compared: int = 0
    pairs_consistent: int = 0
    started: float = field(default_factory=time.perf_counter)

    def summary(self, results: Sequence[RankResult], config: JudgeConfig) -> dict[str, Any]:
        statuses = {s: 0 for s in ("ok", "unparseable", "error", "inconsistent")}
        for result in results:
            statuses[result.status] += 1
        measured = [r.consistent for r in results if r.consistent is not None]
        return {
            "judge": config.judge_name,
            "model": config.model,
            "template": config.template,
            "template_version": config.template_version,
            "items": len(results),
            **statuses,
            "skipped": sum(1 for r in results if "reason" in r.meta),
            "requests_sent": self.requests_sent,
            "calls": self.calls,
            "cache_hits": self.cache_hits,
            "retries": self.retries,
            "repairs": self.repairs,
            "inconsistent_items": sum(1 for c in measured if not c),
            "consistency_rate": (sum(measured) / len(measured)) if measured else None,
            "pair_consistency_rate": (
                self.pairs_consistent / self.pairs_compared if self.pairs_compared else None
            ),
            "truncated_texts": self.truncated_texts,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "answers_without_usage": self.answers_without_usage,
            **cost_fields(
                config, self.input_tokens, self.output_tokens, self.answers_without_usage
            ),
            "wall_s": time.perf_counter() - self.started,
        }


def cost_fields(
    config: JudgeConfig, input_tokens: int, output_tokens: int, without_usage: int
) -> dict[str, Any]:
    """``cost`` from the counted tokens, or None with a note when some paid answer came without
    token counts: a cost of 0 would read as "free", which nobody measured."""
    if not without_usage:
        return {"cost": config.cost(input_tokens, output_tokens)}
    return {
        "cost": None,
        "cost_note": (
            f"{without_usage} answer(s) came without token usage from the endpoint: the token "
            "counts cover only the answers that reported it, and the cost is unknown"
        ),
    }


class OpenAIJudge:
    """``rank(requests)`` from sync code, ``arank`` from async code. ``summary`` holds the last
    run's counts (requests sent, cache hits, retries, unparseable, inconsistent, tokens, cost).
    """

    def __init__(self, config: JudgeConfig, api_key: str | None = None) -> None:
        self.config = config
        self.name = config.judge_name
        # Local servers (vLLM, Ollama, llama.cpp) ignore the key, but the client needs one.
        self._key_given = bool(api_key)
        self._api_key = api_key or "EMPTY"
        self.summary: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"OpenAIJudge(name={self.name!r}, base_url={redact_url(self.config.base_url)!r})"

    def rank(self, requests: Sequence[RankRequest]) -> list[RankResult]:
        return run_sync(self.arank(requests))

    async def arank(self, requests: Sequence[RankRequest]) -> list[RankResult]:
        config = self.config
        stats = RunStats()
        cache = AnswerCache(config.cache_path) if config.cache_path else None
        base_url, query = split_query(config.base_url)
        client = openai.AsyncOpenAI(
            base_url=base_url,
            default_query=query or None,
            api_key=self._api_key,
            max_retries=0,
            timeout=config.timeout_s,
            http_client=http_client(config.max_concurrency),
        )
        run = _Run(config, client, cache, stats, self._api_key if self._key_given else "")
        tasks = [asyncio.ensure_future(run.judge(request)) for request in requests]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            await client.close()
            if cache is not None:
                cache.close()
        for result in results:
            result.judge = self.name
        self.summary = stats.summary(results, config)
        return list(results)


def template_id(config: JudgeConfig) -> str:
    return f"{config.template}-{config.template_version}"


def sampling(config: JudgeConfig) -> dict[str, Any]:
    """The sampling settings every call sends, and the cache key holds."""
    return {
        "temperature": config.temperature,
        "top_p": config.top_p,
        "max_tokens": config.max_tokens,
        "json_mode": config.json_mode,
        "extra_body": config.extra_body,
    }


def answer_namespace(config: JudgeConfig) -> str:
    """What the cache key holds beside the messages: model, template and sampling. Two judges
    alike in these produce one key whenever their messages coincide (a shorter
    ``max_prompt_chars`` cuts only long prompts), so a panel must not point two such members
    on different endpoints at one cache file."""
    return json.dumps(
        [config.model, template_id(config), sampling(config)], sort_keys=True, default=str
    )


class _Run:
    """The state of one batch: client, limiters, cache and counters."""

    def __init__(
        self,
        config: JudgeConfig,
        client: openai.AsyncOpenAI,
        cache: AnswerCache | None,
        stats: RunStats,
        secret: str,
    ) -> None:
        self.config, self.client, self.cache, self.stats = config, client, cache, stats
        self.template = TEMPLATES[(config.template, config.template_version)]
        self.template_id = template_id(config)
        self.sampling = sampling(config)
        self.semaphore = asyncio.Semaphore(config.max_concurrency)
        self.rpm = RateLimiter(config.requests_per_minute) if config.requests_per_minute else None
        self.tpm = (
            RateLimiter(config.tokens_per_minute, burst_s=10.0)
            if config.tokens_per_minute
            else None
        )
        self.rng = random.Random(config.seed)
        self.url = redact_url(config.base_url)  # how every message names the endpoint
        self.key_given = bool(secret)  # "": we send only the client's placeholder
        secrets = [secret] if secret else []
        self._secrets = [*secrets, *url_secrets(config.base_url)]
        self._preflight_lock = asyncio.Lock()
        self._preflight_done = not config.preflight
        self.inflight: dict[str, asyncio.Future[Answer]] = {}
        self.fatal: JudgeEndpointError | None = None

    # --- one request -----------------------------------------------------------------------

    async def judge(self, request: RankRequest) -> RankResult:
        config = self.config
        meta: dict[str, Any] = {
            "model": config.model,
            "template": config.template,
            "template_version": config.template_version,
        }
        problem = check_candidates(request)
        if problem:
            meta["reason"] = problem
            return RankResult(
                request.prompt_id, request.candidate_ids, None, "error", None, "", meta
            )
        conversation, cut = truncate(conversation_text(request.prompt), config.max_prompt_chars)
        texts, truncated = [], int(cut)
        for text in request.texts:
            text, cut = truncate(text, config.max_candidate_chars)
            texts.append(text)
            truncated += cut
        self.stats.truncated_texts += truncated
        orders = self.orders(request)
        outcomes = await asyncio.gather(
            *(self.judge_order(conversation, texts, order) for order in orders),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, CallFailed):
                raise outcome
        answers = [o for o in outcomes if isinstance(o, _OrderOutcome)]
        meta.update(
            calls=sum(len(o.answers) for o in answers),
            attempts=sum(a.attempts for o in answers for a in o.answers),
            from_cache=bool(answers) and all(a.from_cache for o in answers for a in o.answers),
            usage={
                "input_tokens": sum(a.input_tokens for o in answers for a in o.answers),
                "output_tokens": sum(a.output_tokens for o in answers for a in o.answers),
            },
            truncated=truncated,
            orders=[list(order) for order in orders],
        )
        paid = [a for o in answers for a in o.answers if not a.from_cache]
        without_usage = sum(1 for a in paid if not a.usage_known)
        if without_usage:
            meta["answers_without_usage"] = without_usage
        meta["cost"] = cost_fields(
            config,
            sum(a.input_tokens for a in paid),
            sum(a.output_tokens for a in paid),
            without_usage,
        )["cost"]
        ids = request.candidate_ids
        failed = [o for o in outcomes if isinstance(o, CallFailed)]
        if failed:
            meta["errors"] = [self.scrub(str(o)) for o in failed]
            if all(o.rejected for o in failed):
                meta["rejected"] = True  # not a failure a retry can mend
            return RankResult(request.prompt_id, ids, None, "error", None, "", meta)
        bad = [o.problem for o in answers if o.problem is not None]
        if bad:
            meta["unparseable"] = bad
            return RankResult(request.prompt_id, ids, None, "unparseable", None, "", meta)
        result = aggregate(len(ids), (o.prefs for o in answers))
        self.stats.pairs_compared += result.pairs
        self.stats.pairs_consistent += result.consistent_pairs
        meta["verdicts"] = [o.verdict for o in answers]
        meta["pairs_compared"], meta["pairs_consistent"] = result.pairs, result.consistent_pairs
        # Ranks cannot carry these, so the pairs stage reads them here: a pair the orders
        # disagreed on is a tie even when the ranks differ, and a pairwise judge's own verdicts
        # are what it said, where Copeland ranks can reverse one (see aggregate.py).
        meta["disagreed_pairs"] = [[ids[i], ids[j]] for i, j in result.disagreed]
        if config.template == "pairwise":
            meta["preferred_pairs"] = [
                [ids[i], ids[j]] if sign > 0 else [ids[j], ids[i]]
                for (i, j), sign in result.agreed.items()
                if sign
            ]
        if result.consistent is False and config.on_inconsistent == "drop":
            return RankResult(request.prompt_id, ids, None, "inconsistent", False, "", meta)
        return RankResult(request.prompt_id, ids, result.ranks, "ok", result.consistent, "", meta)

    def orders(self, request: RankRequest) -> list[tuple[int, ...]]:
        """Presentation orders (candidate indices, in the order shown). Listwise: the given
        order, its reverse, then shuffles seeded by (seed, prompt_id) so that a re-run shows
        the same orders and hits the cache. Pairwise: each pair, and swapped if configured."""
        n = len(request.candidates)
        if self.config.template == "pairwise":
            pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
            if self.config.swap_orders:
                return [o for i, j in pairs for o in ((i, j), (j, i))]
            return pairs
        wanted = min(self.config.permutations, _factorial(n))
        orders = [tuple(range(n))]
        if wanted > 1:
            orders.append(tuple(reversed(range(n))))
        rng = random.Random(f"{self.config.seed}:{request.prompt_id}")
        while len(orders) < wanted:
            order = list(range(n))
            rng.shuffle(order)
            if tuple(order) not in orders:
                orders.append(tuple(order))
        return orders

    async def judge_order(
        self, conversation: str, texts: list[str], order: tuple[int, ...]
    ) -> _OrderOutcome:
        shown = [texts[i] for i in order]
        messages = render(self.template, self.config.rubric, conversation, shown)
        first = await self.call(messages)
        answers = [first]
        try:
            return self.read(first.content, order, answers)
        except ParseError as error:
            problem = str(error)
        self.stats.repairs += 1
        fix = repair_messages(self.template, messages, first.content, problem, len(order))
        second = await self.call(fix)
        answers.append(second)
        try:
            return self.read(second.content, order, answers)
        except ParseError as error:
            return _OrderOutcome(
                answers,
                {},
                None,
                {
                    "first": problem,
                    "after_repair": str(error),
                    "reply": second.content[:REPLY_CHARS_KEPT],
                },
            )

    def read(self, reply: str, order: tuple[int, ...], answers: list[Answer]) -> _OrderOutcome:
        if self.config.template == "pairwise":
            winner = parse_winner(reply)
            i, j = order  # shown as A, B
            sign = {"A": 1, "B": -1, "tie": 0}[winner]
            if i > j:
                i, j, sign = j, i, -sign
            prefs: dict[Pair, int] = {(i, j): sign}
            return _OrderOutcome(answers, prefs, winner, None)
        labels = LABELS[: len(order)]
        ranking = [order[labels.index(label)] for label in parse_ranking(reply, labels)]
        return _OrderOutcome(answers, prefs_from_order(ranking), ranking, None)

    # --- one chat call ---------------------------------------------------------------------

    async def call(self, messages: list[dict[str, str]]) -> Answer:
        """One chat call: from the cache, from an identical call already in flight (the same
        prompt and candidates under two prompt ids), or sent."""
        self.stats.calls += 1
        key = cache_key(self.config.model, self.template_id, messages, self.sampling)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.stats.cache_hits += 1
                return Answer(hit.content, hit.input_tokens, hit.output_tokens, True, 0)
        pending = self.inflight.get(key)
        if pending is not None:
            shared = await asyncio.shield(pending)
            self.stats.cache_hits += 1
            return Answer(shared.content, shared.input_tokens, shared.output_tokens, True, 0)
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.inflight[key] = future
        try:
            answer = await self.send(key, messages)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved: no "never retrieved" warning when nobody shared it
            raise
        else:
            future.set_result(answer)
            return answer
        finally:
            del self.inflight[key]

    async def send(self, key: str, messages: list[dict[str, str]]) -> Answer:
        config, stats = self.config, self.stats
        await self.preflight()
        estimate = sum(len(m["content"]) for m in messages) / 4 + config.max_tokens
        attempt = 0
        while True:
            if self.rpm is not None:
                await self.rpm.acquire(1)
            if self.tpm is not None:
                await self.tpm.acquire(estimate)
            delay, failure = None, None
            async with self.semaphore:
                if self.fatal is not None:  # the key was rejected meanwhile: send nothing more
                    raise self.fatal
                stats.requests_sent += 1
                try:
                    # The client's generic POST rather than chat.completions.create: same auth,
                    # timeout and error classes, but create() walks every message through its
                    # TypedDict transform and builds pydantic models of the reply, which cost
                    # ~40% of the client's CPU per call (bench/judge_throughput.py).
                    response = await self.client.post(
                        "/chat/completions", cast_to=object, body=self.body(messages)
                    )
                except (openai.AuthenticationError, openai.PermissionDeniedError) as error:
                    self.fatal = auth_error(self.url, error.status_code, self.key_given)
                    raise self.fatal from None
                except openai.APIStatusError as error:
                    failure = f"HTTP {error.status_code}: {self.scrub(_message(error))}"
                    if error.status_code not in RETRYABLE_STATUS:
                        raise CallFailed(failure, rejected=True) from None
                    delay = retry_after_s(error.response.headers)
                except openai.APIConnectionError as error:  # timeouts included
                    failure = f"{type(error).__name__}: {self.scrub(str(error))}"
                except ValueError as error:  # a body that is not JSON at all
                    raise CallFailed(
                        f"the endpoint's response is not JSON: {self.scrub(str(error))}"
                    ) from None
                except openai.APIError as error:  # a response the client cannot read
                    raise CallFailed(f"{type(error).__name__}: {self.scrub(str(error))}") from None
            if failure is None:
                break
            if attempt >= config.max_retries:
                raise CallFailed(f"gave up after {attempt + 1} attempt(s); last: {failure}")
            if delay is None:
                delay = backoff_s(attempt, config.backoff_base_s, config.backoff_max_s, self.rng)
            delay = min(delay, config.retry_after_max_s)
            stats.retries += 1
            attempt += 1
            await asyncio.sleep(delay)
        answer = self.answer_of(response, attempt + 1)
        if self.tpm is not None and answer.usage_known:  # else the estimate is all we know
            self.tpm.refund(estimate - answer.input_tokens - answer.output_tokens)
        stats.input_tokens += answer.input_tokens
        stats.output_tokens += answer.output_tokens
        stats.answers_without_usage += not answer.usage_known
        if self.cache is not None:
            cached = CachedAnswer(answer.content, answer.input_tokens, answer.output_tokens)
            self.cache.put(key, config.model, self.template_id, cached)
        return answer

    def body(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        config = self.config
        body: dict[str, Any] = {
            **config.extra_body,
            "model": config.model,
            "messages": messages,
            "temperature": config.temperature,
            "top_p": config.top_p,
            "max_tokens": config.max_tokens,
        }
        if config.json_mode:
            body["response_format"] = {"type": "json_object"}
        return body

    def answer_of(self, response: Any, attempts: int) -> Answer:
        """The reply text and token counts of a completion; a response without a message is a
        protocol error of the server, not an unparseable judgement."""
        if not isinstance(response, dict):
            raise CallFailed("the endpoint's response is not a JSON object")
        choices = response.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise CallFailed("the endpoint's response has no choices")
        message = choices[0].get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise CallFailed("the endpoint's response has no message content")
        usage = response.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        counts = [usage.get("prompt_tokens"), usage.get("completion_tokens")]
        known = all(isinstance(c, int | float) and not isinstance(c, bool) for c in counts)
        input_tokens, output_tokens = (int(c) if known else 0 for c in counts)
        return Answer(content, input_tokens, output_tokens, False, attempts, known)

    async def preflight(self) -> None:
        """Once per run, before the first uncached call: can we reach the endpoint, does it
        take the key? A server without ``/models`` (404 and the like) passes."""
        if self._preflight_done:
            return
        async with self._preflight_lock:
            if self._preflight_done:
                return
            url = self.url
            try:
                await self.client.models.list()
            except (openai.AuthenticationError, openai.PermissionDeniedError) as error:
                raise auth_error(url, error.status_code, self.key_given) from None
            except openai.APIStatusError:
                pass
            except openai.APIConnectionError as error:
                raise JudgeEndpointError(
                    f"cannot reach judge endpoint {url}: {type(error).__name__}"
                ) from None
            self._preflight_done = True

    def scrub(self, text: str) -> str:
        """``text`` without the key or the URL's secrets (the raw URL first, so it reads as
        the redacted one rather than as a URL with holes)."""
        text = text.replace(self.config.base_url, self.url)
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text


@dataclass
class _OrderOutcome:
    answers: list[Answer]
    prefs: dict[Pair, int]
    verdict: Any  # the ranking (candidate indices) or the pairwise winner, for the meta
    problem: dict[str, str] | None  # set when the reply stayed unparseable after the repair


def _message(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"][:200]
    return str(error)[:200]


def _factorial(n: int) -> int:
    out = 1
    for k in range(2, n + 1):
        out *= k
    return out
