"""Settings of the OpenAI-compatible judge, one frozen dataclass so a run is reproducible from
its config alone. The API key is deliberately not a field: it is passed at run time (from an
environment variable through Dagster's EnvVar), so it never lands in a config dump, the cache,
results or metadata."""

from __future__ import annotations

import base64
import types
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from curation.judge.templates import DEFAULT_RUBRIC, TEMPLATES


@dataclass(frozen=True)
class JudgeConfig:
    """Reference for every judge setting.

    Endpoint
      ``base_url``: an OpenAI-compatible API root, e.g. ``https://api.openai.com/v1``,
        ``http://localhost:8000/v1`` (vLLM), ``http://localhost:11434/v1`` (Ollama),
        ``http://localhost:8080/v1`` (llama.cpp server). Messages, metadata and ``public()``
        show it through ``redact_url``: a password or query value in it (``user:KEY@host``,
        ``?key=KEY``) is masked, since gateways put keys there.
      ``model``: the model name the endpoint serves.
      ``name``: the judge's name in results (default ``<model>/<template>-<version>``).
    Prompt
      ``template``: ``"listwise"`` (rank 2..9 candidates in one call) or ``"pairwise"`` (every
        pair of candidates compared in its own call; ranks from wins minus losses, but the
        preference pairs are the verdicts themselves, ``meta.preferred_pairs``, since those
        ranks can reverse a verdict when the verdicts form a cycle).
      ``template_version``: which version of that template (``templates.TEMPLATES``); part of
        the cache key, so a new version re-judges everything.
      ``rubric``: criteria named in the prompt: names from ``templates.RUBRIC`` (helpfulness,
        honesty, harmlessness, format) or free text ``"name: what to look for"``.
      ``max_prompt_chars`` / ``max_candidate_chars``: longer texts are cut to this many
        characters (keeping the start) and counted as truncated; None never cuts.
    Position bias
      ``permutations``: orders each candidate list is shown in (listwise): the given order, then
        the reverse, then seeded shuffles. 1 turns the check off.
      ``swap_orders``: pairwise: judge each pair as (A, B) and as (B, A).
      ``seed``: seeds the shuffles (and the backoff jitter).
      ``on_inconsistent``: ``"tie"``: pairs the orders disagree on count as ties and the request
        stays ``ok`` with ``consistent=False``; the ranks may still order such a pair (they
        aggregate the whole list), so the pairs are listed in ``meta.disagreed_pairs`` and the
        pairs stage makes no preference of them. ``"drop"``: the request gets status
        ``inconsistent`` and no ranks.
    Sampling
      ``temperature``, ``top_p``, ``max_tokens``: sent with every call; part of the cache key.
      ``json_mode``: also send ``response_format={"type": "json_object"}`` (OpenAI, vLLM and
        Ollama honour it; some llama.cpp builds reject it). The answer is parsed strictly
        either way.
    Throughput and failure
      ``max_concurrency``: requests in flight at once.
      ``requests_per_minute`` / ``tokens_per_minute``: client-side limits (None: unlimited);
        tokens are estimated before a call (chars / 4 + max_tokens) and corrected from usage.
      ``max_retries``: retries of one call after a 429, 5xx, timeout or connection error.
      ``backoff_base_s`` / ``backoff_max_s``: exponential backoff with jitter between retries.
      ``retry_after_max_s``: the longest Retry-After honoured (a server asking for longer waits
        this long and the retry counts like any other).
      ``timeout_s``: per HTTP request.
      ``preflight``: before the first uncached call, ask ``GET /models`` once so that an
        unreachable endpoint or a rejected key fails before any batch starts.
    Cache and cost
      ``cache_path``: sqlite file of answers (None: no cache). Each answer is committed as it
        arrives, so a run killed half way resumes and pays only for what is missing.
      ``price_input_per_1m`` / ``price_output_per_1m``: currency units per million tokens.
    """

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "judge"
    name: str | None = None
    template: Literal["listwise", "pairwise"] = "listwise"
    template_version: str = "v1"
    rubric: tuple[str, ...] = DEFAULT_RUBRIC
    max_prompt_chars: int | None = 12_000
    max_candidate_chars: int | None = 6_000
    permutations: int = 2
    swap_orders: bool = True
    seed: int = 0
    on_inconsistent: Literal["tie", "drop"] = "tie"
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    json_mode: bool = False
    max_concurrency: int = 8
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_retries: int = 4
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 120.0
    timeout_s: float = 60.0
    preflight: bool = True
    cache_path: str | None = None
    price_input_per_1m: float = 0.0
    price_output_per_1m: float = 0.0
    extra_body: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.template not in ("listwise", "pairwise"):
            raise ValueError(f"template: expected 'listwise' or 'pairwise', got {self.template!r}")
        if (self.template, self.template_version) not in TEMPLATES:
            known = sorted(v for t, v in TEMPLATES if t == self.template)
            raise ValueError(
                f"template_version: {self.template} has no version {self.template_version!r}; "
                f"known: {known}"
            )
        if self.on_inconsistent not in ("tie", "drop"):
            raise ValueError(
                f"on_inconsistent: expected 'tie' or 'drop', got {self.on_inconsistent!r}"
            )
        positive = {
            "permutations": self.permutations,
            "max_concurrency": self.max_concurrency,
            "max_tokens": self.max_tokens,
            "timeout_s": self.timeout_s,
        }
        for key, value in positive.items():
            if value <= 0:
                raise ValueError(f"{key}: must be positive, got {value!r}")
        for key in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ValueError(f"{key}: must be positive or None, got {value!r}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries: must be >= 0, got {self.max_retries!r}")
        object.__setattr__(self, "rubric", tuple(self.rubric))

    @property
    def judge_name(self) -> str:
        return self.name or f"{self.model}/{self.template}-{self.template_version}"

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (
            input_tokens * self.price_input_per_1m + output_tokens * self.price_output_per_1m
        ) / 1e6

    def public(self) -> dict[str, Any]:
        """The settings as plain values for metadata; the URL with its secrets masked."""
        out = asdict(self)
        out["rubric"] = list(self.rubric)
        out["base_url"] = redact_url(self.base_url)
        return out


def check_field_types(instance: Any, section: str = "") -> None:
    """ValueError naming the first field of a dataclass ``instance`` whose value is not of its
    annotated type: settings come from YAML, where ``max_concurrency: four`` is a string, and a
    comparison deep inside would fail naming no field. An int is a fine float; a bool is not a
    number; a list is a fine tuple (YAML has no tuples). ``section`` prefixes the field name."""
    hints = typing.get_type_hints(type(instance))
    for item in fields(instance):
        value = getattr(instance, item.name)
        expected = hints[item.name]
        if not _is_a(value, expected):
            raise ValueError(
                f"{section}{item.name}: expected {_type_name(expected)}, "
                f"got {type(value).__name__} {value!r}"
            )


def _is_a(value: Any, expected: Any) -> bool:
    origin = typing.get_origin(expected)
    if expected is Any:
        return True
    if origin is Literal:
        return True  # each Literal field names its choices in its own message
    if origin in (typing.Union, types.UnionType):
        return any(_is_a(value, option) for option in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if origin is tuple:
        inner = typing.get_args(expected)[0]
        return isinstance(value, tuple | list) and all(_is_a(v, inner) for v in value)
    if origin is dict or expected is dict:
        return isinstance(value, Mapping)
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _type_name(expected: Any) -> str:
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(option) for option in typing.get_args(expected))
    if expected is type(None):
        return "null"
    if typing.get_origin(expected) is tuple:
        return f"a list of {_type_name(typing.get_args(expected)[0])}"
    if typing.get_origin(expected) is dict:
        return "a mapping"
    return getattr(expected, "__name__", str(expected))


MASK = "***"
_SHORTEST_SECRET = 4  # shorter query values ("v=1") are masked in the URL, not hunted in text


def redact_url(url: str) -> str:
    """``url`` with the password (or a lone user, which some gateways take as the key), every
    query value and the fragment masked; scheme, host, port and path stay readable, so a message
    still names the endpoint."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:  # not a URL we can take apart: show nothing of it
        return MASK
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    if parts.password is not None:
        netloc = f"{parts.username}:{MASK}@{netloc}"
    elif parts.username:
        netloc = f"{MASK}@{netloc}"
    query = "&".join(f"{name}={MASK}" if name else MASK for name, _ in _query(parts.query))
    return urlunsplit((parts.scheme, netloc, parts.path, query, MASK if parts.fragment else ""))


def url_secrets(url: str) -> list[str]:
    """The parts of ``url`` that ``redact_url`` masks, as written and decoded, for scrubbing
    them out of free text (an exception's message may quote the URL in its own way)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    found = [parts.password or (parts.username if parts.password is None else None)]
    if parts.password:  # the HTTP client sends user:password as Basic auth; servers echo it
        pair = f"{unquote(parts.username or '')}:{unquote(parts.password)}"
        found.append(base64.b64encode(pair.encode()).decode())
    found += [value for _, value in _query(parts.query)]
    found.append(parts.fragment)
    secrets = set()
    for value in found:
        if value and len(value) >= _SHORTEST_SECRET:
            secrets.update({value, unquote(value)})
    # the longest first, so a secret that contains another is masked whole
    return sorted(secrets, key=len, reverse=True)


def split_query(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without its query string, and the query as parameters. The openai client appends
    the endpoint's path to its base URL as text, so a base URL with a query (``...?key=K``)
    would call ``/v1/?key=Kchat/completions``; it takes the query as ``default_query`` instead,
    and sends it with every request."""
    parts = urlsplit(url)
    if not parts.query:
        return url, {}
    base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", parts.fragment))
    return base, dict(parse_qsl(parts.query, keep_blank_values=True))


def _query(query: str) -> list[tuple[str, str]]:
    """(name, value) of a query string as written (not decoded: the raw value is what a
    message quoting the URL contains); a piece without "=" is all value (``?KEY``)."""
    pairs = []
    for piece in query.split("&"):
        name, equals, value = piece.partition("=")
        if piece:
            pairs.append((name, value) if equals else ("", name))
    return pairs
