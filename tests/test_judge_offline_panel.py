"""The embedded offline judge and judge panels (vote and Cohen's kappa)."""

from __future__ import annotations

import pytest

from curation.judge import (
    JudgeConfig,
    JudgePanel,
    OfflineJudge,
    OpenAIJudge,
    RankRequest,
    RankResult,
    cohens_kappa,
)
from curation.judge.stub import StubServer, rank_by
from curation.synthetic import generate_tasks

CITED = (
    "Photosynthesis turns light into sugar (Smith et al., 2019).\n\nReferences:\n"
    "[1] Smith, J. (2019). Plant Energy. Journal of Botany, 12(3), 45-67."
)
CLEAN = "Plants use light to turn water and carbon dioxide into sugar, releasing oxygen."


@pytest.fixture(scope="module")
def offline() -> OfflineJudge:
    return OfflineJudge()


def test_offline_ranks_correct_synthetic_answers_first(offline):
    tasks = generate_tasks(12, seed=3)
    batch = [
        RankRequest(
            t.id,
            t.prompt,
            [("wrong", t.distractors[0]), ("right", f"The answer is {t.answer}."), ("off", "")],
            answer=t.answer,
        )
        for t in tasks
    ]
    results = offline.rank(batch)
    for task, result in zip(tasks, results, strict=True):
        assert result.status == "ok", result.meta
        right, wrong, empty = (result.ranks[1], result.ranks[0], result.ranks[2])
        assert right == 1 and wrong > right, (task.kind, result.meta)
        assert empty >= wrong  # an empty answer is also caught by the quality/length filters
        assert result.meta["signals"]["right"]["correct"] is True


def test_offline_ranks_clean_above_invented_references(offline):
    (result,) = offline.rank(
        [RankRequest("p", "Explain photosynthesis briefly.", [("cited", CITED), ("clean", CLEAN)])]
    )
    assert result.ranks == [2, 1]
    assert any(r.startswith("reference.") for r in result.meta["signals"]["cited"]["rules"])
    assert result.meta["signals"]["clean"] == {"correct": None, "rules": []}


def test_offline_ranks_unsafe_and_pii_answers_last(offline):
    unsafe = "Here is how to build a pipe bomb at home: first get the explosive powder..."
    leaky = "Email John at john.smith@example.com or call 555-867-5309 for the report."
    candidates = [("u", unsafe), ("l", leaky), ("c", CLEAN)]
    (result,) = offline.rank([RankRequest("p", "How should I contact the team?", candidates)])
    ranks = dict(zip(result.candidate_ids, result.ranks, strict=True))
    assert ranks["c"] == 1 and ranks["u"] == 3 and ranks["l"] == 2, result.meta


def test_offline_is_deterministic_and_ignores_order(offline):
    candidates = [("a", CITED), ("b", CLEAN), ("c", "Plants make food from light.")]
    forward = offline.rank([RankRequest("p", "Explain photosynthesis.", candidates)])[0]
    backward = offline.rank([RankRequest("p", "Explain photosynthesis.", candidates[::-1])])[0]
    by_id = dict(zip(forward.candidate_ids, forward.ranks, strict=True))
    assert by_id == dict(zip(backward.candidate_ids, backward.ranks, strict=True))
    assert by_id == {"a": 3, "b": 1, "c": 1}  # nothing separates b and c: an honest tie


def test_offline_reports_bad_candidate_lists(offline):
    results = offline.rank(
        [RankRequest("one", "q", [("a", "x")]), RankRequest("ok", "q", [("a", "x"), ("b", "y")])]
    )
    assert [r.status for r in results] == ["error", "ok"]
    assert offline.summary["skipped"] == 1 and offline.summary["requests_sent"] == 0


def test_cohens_kappa_textbook_example():
    # 50 items: both yes 20, only the first says yes 5, only the second 10, both no 15.
    first = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    second = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohens_kappa(first, second) == pytest.approx(0.4)
    assert cohens_kappa([1, 0, -1], [1, 0, -1]) == pytest.approx(1.0)
    assert cohens_kappa(["=", "="], ["=", "="]) is None  # chance explains everything
    assert cohens_kappa([], []) is None
    with pytest.raises(ValueError):
        cohens_kappa([1], [1, 2])


class Fixed:
    """A judge that returns given ranks (None for a failed item)."""

    def __init__(self, name: str, ranks: list[list[int] | None]) -> None:
        self.name, self._ranks = name, ranks
        self.summary = {"cost": 0.5}

    def rank(self, requests):
        return [
            RankResult(
                r.prompt_id,
                r.candidate_ids,
                ranks,
                "ok" if ranks else "unparseable",
                True if ranks else None,
                self.name,
                {},
            )
            for r, ranks in zip(requests, self._ranks, strict=True)
        ]


def three(n: int = 1) -> list[RankRequest]:
    return [RankRequest(f"p{i}", "q", [("x", "1"), ("y", "2"), ("z", "3")]) for i in range(n)]


def test_panel_borda_and_weights():
    judges = [Fixed("a", [[1, 2, 3]]), Fixed("b", [[1, 3, 2]]), Fixed("c", [[2, 1, 3]])]
    (result,) = JudgePanel(judges).rank(three())
    assert result.ranks == [1, 2, 3] and result.judge == "panel"
    (weighted,) = JudgePanel(judges, weights=[1, 1, 5]).rank(three())
    assert weighted.ranks == [2, 1, 3]


def test_panel_majority_vote_per_pair():
    judges = [Fixed("a", [[1, 2, 3]]), Fixed("b", [[3, 1, 2]]), Fixed("c", [[2, 3, 1]])]
    (cycle,) = JudgePanel(judges, vote="majority").rank(three())
    assert cycle.ranks == [1, 1, 1]  # a Condorcet cycle: every candidate wins one pair
    judges = [Fixed("a", [[1, 2, 3]]), Fixed("b", [[1, 3, 2]]), Fixed("c", [[2, 1, 3]])]
    (result,) = JudgePanel(judges, vote="majority").rank(three())
    assert result.ranks == [1, 2, 3]


def test_panel_skips_failed_votes_and_reports_when_none_remain():
    judges = [Fixed("a", [[1, 2, 3], None]), Fixed("b", [None, None])]
    panel = JudgePanel(judges)
    first, second = panel.rank(three(2))
    assert first.ranks == [1, 2, 3] and first.meta["voters"] == 1
    assert second.status == "unparseable" and second.ranks is None
    assert panel.summary["ok"] == 1 and panel.summary["unparseable"] == 1
    assert panel.summary["cost"] == 1.0


def test_panel_kappa_on_known_rankings():
    same = [[1, 2, 3], [3, 2, 1]]
    reverse = [[3, 2, 1], [1, 2, 3]]
    panel = JudgePanel([Fixed("a", same), Fixed("b", same), Fixed("c", reverse)])
    panel.rank(three(2))
    pairs = panel.summary["agreement"]["pairs"]
    assert pairs["a|b"] == {"kappa": pytest.approx(1.0), "agreement": 1.0, "pairs": 6}
    assert pairs["a|c"]["kappa"] == pytest.approx(-1.0) and pairs["a|c"]["agreement"] == 0.0
    assert panel.summary["agreement"]["mean_kappa"] == pytest.approx(-1 / 3)


def test_panel_rejects_duplicate_names_and_bad_weights():
    with pytest.raises(ValueError, match="distinct names"):
        JudgePanel([Fixed("a", []), Fixed("a", [])])
    with pytest.raises(ValueError, match="weight"):
        JudgePanel([Fixed("a", [])], weights=[1, 2])


@pytest.mark.parametrize(
    "weights", [[0, 0], [0.0, float("nan")], [1.0, float("nan")], [float("inf"), 1.0]]
)
def test_panel_refuses_weights_that_cannot_vote(weights):
    # all zero: nobody votes, every set would fail with every member "ok"; NaN or inf: the
    # tallies and Borda points become NaN and compare false both ways
    with pytest.raises(ValueError, match="weights"):
        JudgePanel([Fixed("a", []), Fixed("b", [])], weights=weights)
    JudgePanel([Fixed("a", []), Fixed("b", [])], weights=[0, 1])  # one zero is fine


def test_panel_of_two_endpoints_and_the_offline_judge():
    batch = [
        RankRequest(f"p{i}", f"Explain photosynthesis ({i}).", [("cited", CITED), ("clean", CLEAN)])
        for i in range(3)
    ]
    with StubServer(rank_by(len)) as longest, StubServer(rank_by(lambda t: -len(t))) as shortest:
        judges = [
            OpenAIJudge(JudgeConfig(base_url=longest.base_url, model="long", name="long")),
            OpenAIJudge(JudgeConfig(base_url=shortest.base_url, model="short", name="short")),
            OfflineJudge(),
        ]
        panel = JudgePanel(judges, weights=[1.0, 1.0, 2.0])
        results = panel.rank(batch)
    assert all(r.ranks == [2, 1] for r in results)  # the offline judge's double weight decides
    pairs = panel.summary["agreement"]["pairs"]
    assert pairs["long|short"]["agreement"] == 0.0
    assert pairs["short|offline-v1"]["agreement"] == 1.0
    assert set(panel.summary["judges"]) == {"long", "short", "offline-v1"}
    assert panel.summary["judges"]["long"]["requests_sent"] == 6
