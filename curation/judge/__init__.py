"""Judges that rank candidate answers: an LLM over any OpenAI-compatible endpoint
(``OpenAIJudge``), an embedded offline judge (``OfflineJudge``) and panels of judges
(``JudgePanel``). Every judge has ``rank(requests) -> list[RankResult]``.

Pure: no dagster import; the Dagster resource in ``assets/`` wraps these.
"""

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
