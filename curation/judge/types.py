"""The records every judge exchanges (see .notes/feedback_model.md, section 2).

A judge takes ``RankRequest`` rows and returns one ``RankResult`` per request, in the same order,
never fewer: a request that could not be judged comes back with a status that says why, so the
pairs stage and the quality report can count it instead of losing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Status = Literal["ok", "unparseable", "error", "inconsistent"]
STATUSES: tuple[str, ...] = ("ok", "unparseable", "error", "inconsistent")

MIN_CANDIDATES = 2
MAX_CANDIDATES = 9  # letters A..I in the prompt; beyond that listwise answers degrade fast


@dataclass(frozen=True)
class RankRequest:
    """One prompt and the candidate answers to rank. ``prompt`` is a list of chat messages
    ({role, content}) or a plain string; ``candidates`` are (candidate_id, text) pairs;
    ``answer`` is the checkable answer of a synthetic task, when there is one."""

    prompt_id: str
    prompt: list[dict] | str
    candidates: list[tuple[str, str]]
    answer: str | None = None

    @property
    def candidate_ids(self) -> list[str]:
        return [cid for cid, _ in self.candidates]

    @property
    def texts(self) -> list[str]:
        return [text for _, text in self.candidates]


@dataclass
class RankResult:
    """``ranks[i]`` is the rank of ``candidate_ids[i]``: 1 is best, tied candidates share the
    lowest rank of their group (1, 1, 3). ``ranks`` is None unless ``status`` is "ok".
    ``consistent``: whether every presentation order agreed (None when not measured)."""

    prompt_id: str
    candidate_ids: list[str]
    ranks: list[int] | None
    status: Status
    consistent: bool | None
    judge: str
    meta: dict[str, Any] = field(default_factory=dict)


class Judge(Protocol):
    name: str

    def rank(self, requests: Sequence[RankRequest]) -> list[RankResult]: ...


def ranks_from_scores(scores: Sequence[float]) -> list[int]:
    """Competition ranks (1 = highest score; equal scores share a rank: 1, 1, 3)."""
    return [1 + sum(1 for other in scores if other > score) for score in scores]


def check_candidates(request: RankRequest) -> str | None:
    """Why ``request`` cannot be ranked, or None when it can."""
    n = len(request.candidates)
    if not MIN_CANDIDATES <= n <= MAX_CANDIDATES:
        return (
            f"prompt {request.prompt_id!r}: {n} candidate(s); ranking needs "
            f"{MIN_CANDIDATES}..{MAX_CANDIDATES}"
        )
    ids = request.candidate_ids
    if len(set(ids)) != len(ids):
        return f"prompt {request.prompt_id!r}: repeated candidate_id"
    return None
