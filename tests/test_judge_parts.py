"""The judge's pure parts: strict parsing, rate limiting, Retry-After, order aggregation,
templates and config validation."""

from __future__ import annotations

import asyncio
import random
from email.utils import formatdate

import pytest

from curation.judge.aggregate import aggregate, prefs_from_order, prefs_from_ranks
from curation.judge.config import JudgeConfig
from curation.judge.limits import RateLimiter, backoff_s, retry_after_s
from curation.judge.parsing import ParseError, parse_ranking, parse_winner
from curation.judge.templates import TEMPLATES, render, truncate
from curation.judge.types import ranks_from_scores


def test_parse_ranking_accepts_only_a_full_permutation():
    assert parse_ranking('{"ranking": ["C", "A", "B"], "why": "..."}', "ABC") == ["C", "A", "B"]
    assert parse_ranking('```json\n{"ranking": ["b", "[A]"]}\n```', "AB") == ["B", "A"]
    bad = {
        "B is best": "not a JSON object",
        '["A", "B"]': "expected a JSON object",
        '{"rank": ["A", "B"]}': 'no "ranking"',
        '{"ranking": "A > B"}': "list of label strings",
        '{"ranking": ["A", "Z"]}': "unknown label",
        '{"ranking": ["A", "A"]}': "repeats",
        '{"ranking": ["A"]}': "missing label",
        "": "empty",
        'Sure! {"ranking": ["A", "B"]}': "not a JSON object",
    }
    for reply, reason in bad.items():
        with pytest.raises(ParseError, match=reason):
            parse_ranking(reply, "AB")


def test_parse_winner():
    assert parse_winner('{"winner": "a"}') == "A"
    assert parse_winner('{"winner": " Tie "}') == "tie"
    for reply in ('{"winner": "C"}', '{"winner": 1}', '{"best": "A"}', "A"):
        with pytest.raises(ParseError):
            parse_winner(reply)


def test_retry_after_forms():
    assert retry_after_s({"Retry-After": "3"}) == 3.0
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    now = 1_800_000_000.0
    assert retry_after_s({"Retry-After": formatdate(now + 7, usegmt=True)}, now=now) == 7.0
    assert retry_after_s({"Retry-After": formatdate(now - 60, usegmt=True)}, now=now) == 0.0
    assert retry_after_s({"Retry-After": "soon"}) is None
    assert retry_after_s({}) is None


def test_backoff_grows_with_jitter_and_a_cap():
    rng = random.Random(0)
    delays = [backoff_s(a, 0.5, 4.0, rng) for a in range(6)]
    for attempt, delay in enumerate(delays):
        step = min(4.0, 0.5 * 2**attempt)
        assert step / 2 <= delay <= step
    assert len({round(d, 6) for d in delays}) == len(delays)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_rate_limiter_spaces_requests_at_the_rate():
    clock = FakeClock()

    async def run() -> list[float]:
        limiter = RateLimiter(120, burst_s=1.0, clock=clock, sleep=clock.sleep)  # 2 per second
        stamps = []
        for _ in range(7):
            await limiter.acquire(1)
            stamps.append(clock.now)
        return stamps

    stamps = asyncio.run(run())
    assert stamps[:3] == [0.0, 0.0, 0.5]  # a burst of capacity 2, then one every 0.5 s
    assert stamps[-1] == pytest.approx(2.5)


def test_token_limiter_lets_a_large_request_borrow_instead_of_waiting_forever():
    clock = FakeClock()

    async def run() -> None:
        limiter = RateLimiter(600, burst_s=1.0, clock=clock, sleep=clock.sleep)  # 10/s, cap 10
        await limiter.acquire(50)  # larger than the bucket: goes into debt
        assert limiter.level == pytest.approx(-40)
        await limiter.acquire(5)  # waits for the debt plus its own cost
        assert clock.now == pytest.approx(4.5)
        limiter.refund(5)
        assert limiter.level == pytest.approx(5)

    asyncio.run(run())


def test_aggregate_orders():
    agreeing = [prefs_from_order([2, 0, 1]), prefs_from_order([2, 0, 1])]
    result = aggregate(3, agreeing)
    assert result.ranks == [2, 3, 1] and result.consistent is True
    assert (result.pairs, result.consistent_pairs) == (3, 3)
    # orders disagree only on (0, 1): that pair ties, the rest stands
    split = aggregate(3, [prefs_from_order([2, 0, 1]), prefs_from_order([2, 1, 0])])
    assert split.ranks == [2, 2, 1] and split.consistent is False
    assert split.consistent_pairs == 2
    assert aggregate(2, [prefs_from_order([1, 0])]).consistent is None


def test_ranks_helpers():
    assert ranks_from_scores([3, 5, 3, 1]) == [2, 1, 2, 4]
    assert prefs_from_ranks([1, 1, 3]) == {(0, 1): 0, (0, 2): 1, (1, 2): 1}


def test_templates_put_every_candidate_and_the_rubric_in_the_prompt():
    template = TEMPLATES[("listwise", "v1")]
    messages = render(template, ("helpfulness", "cites sources: only real ones"), "Q?", ["x", "y"])
    system, user = messages[0]["content"], messages[1]["content"]
    assert "helpfulness:" in system and "cites sources: only real ones" in system
    assert '<answer id="A">\nx\n</answer>' in user and '<answer id="B">\ny\n</answer>' in user
    assert '{"ranking": ["A", "B"]}' in user
    assert truncate("abcdef", 3)[1] and truncate("abc", 3) == ("abc", False)


def test_config_rejects_bad_values_naming_the_key():
    for kwargs, key in [
        ({"template": "triplewise"}, "template"),
        ({"template_version": "v99"}, "template_version"),
        ({"on_inconsistent": "ignore"}, "on_inconsistent"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"requests_per_minute": -1}, "requests_per_minute"),
        ({"max_retries": -1}, "max_retries"),
    ]:
        with pytest.raises(ValueError, match=key):
            JudgeConfig(**kwargs)
    assert JudgeConfig(model="m").judge_name == "m/listwise-v1"
    assert JudgeConfig(price_input_per_1m=1.0, price_output_per_1m=2.0).cost(
        1_000_000, 500_000
    ) == pytest.approx(2.0)
