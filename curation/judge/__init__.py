"""Judges that rank candidate answers: an LLM over any OpenAI-compatible endpoint
(``OpenAIJudge``), an embedded offline judge (``OfflineJudge``, the default of ``make demo``:
no network, deterministic) and panels of judges (``JudgePanel``). Every judge has
``rank(requests) -> list[RankResult]``; the OpenAI judge and the panel also leave a run summary
in ``.summary`` (requests sent, cache hits, retries, unparseable, consistency, tokens, cost).

Pointing the LLM judge at an endpoint (the key comes from the environment, never from config)::

    # OpenAI
    JudgeConfig(base_url="https://api.openai.com/v1", model="gpt-4o-mini",
                price_input_per_1m=0.15, price_output_per_1m=0.60, json_mode=True)
    # vLLM:   vllm serve Qwen/Qwen2.5-7B-Instruct --port 8000
    JudgeConfig(base_url="http://localhost:8000/v1", model="Qwen/Qwen2.5-7B-Instruct")
    # Ollama: ollama serve; ollama pull llama3.1
    JudgeConfig(base_url="http://localhost:11434/v1", model="llama3.1")
    # llama.cpp: llama-server -m model.gguf --port 8080
    JudgeConfig(base_url="http://localhost:8080/v1", model="model")

    judge = OpenAIJudge(config, api_key=os.environ.get("JUDGE_API_KEY"))
    results = judge.rank([RankRequest("p1", "What is 2+2?", [("a", "4"), ("b", "5")])])

Pure: no dagster import; the Dagster resource in ``assets/`` wraps these.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Where each public name lives. Loaded on first use: ``client`` imports openai, half a second
# that every process loading the Dagster definitions (each run, each UI reload) would pay
# although only the judge steps call it.
_HOMES = {
    "CallFailed": "client",
    "JudgeEndpointError": "client",
    "OpenAIJudge": "client",
    "JudgeConfig": "config",
    "OfflineJudge": "offline",
    "JudgePanel": "panel",
    "cohens_kappa": "panel",
    "RankRequest": "types",
    "RankResult": "types",
}

if TYPE_CHECKING:
    from curation.judge.client import CallFailed, JudgeEndpointError, OpenAIJudge
    from curation.judge.config import JudgeConfig
    from curation.judge.offline import OfflineJudge
    from curation.judge.panel import JudgePanel, cohens_kappa
    from curation.judge.types import RankRequest, RankResult

__all__ = [
    "CallFailed",
    "JudgeConfig",
    "JudgeEndpointError",
    "JudgePanel",
    "OfflineJudge",
    "OpenAIJudge",
    "RankRequest",
    "RankResult",
    "cohens_kappa",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
