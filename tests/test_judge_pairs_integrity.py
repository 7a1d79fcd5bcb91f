"""What reaches preferences.parquet from an LLM judge is what the judge said: pairs its
presentation orders disagreed on are ties, a pairwise judge's own verdicts are never reversed by
the aggregate ranks, two ids of one text never make a pair, and a repeated prompt id is refused
before any call. Each runs the real path: candidates table -> HTTP judge on 127.0.0.1 ->
rankings table -> pairs."""

from __future__ import annotations

import json

import polars as pl
import pytest

from curation.feedback.pairs import PairsConfig, rankings_to_pairs
from curation.feedback.schema import CANDIDATES, rankings_frame, read_candidates
from curation.judge import JudgeConfig, OpenAIJudge
from curation.judge.stub import Reply, StubServer, completion, longest_first, presented
from curation.judge.tables import failed_sets, judge_candidates


def table(texts_by_prompt: dict[str, list[str]]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "id": prompt,
                "source": "synthetic_chat",
                "prompt": [{"role": "user", "content": f"Explain {prompt}."}],
                "reference": None,
                "answer": None,
                "task": None,
                "candidates": [
                    {
                        "candidate_id": f"{prompt}c{i}",
                        "text": text,
                        "origin": "model",
                        "model": "ckpt",
                        "sampling": "{}",
                    }
                    for i, text in enumerate(texts)
                ],
            }
            for prompt, texts in texts_by_prompt.items()
        ],
        schema=CANDIDATES,
    )


def numbered(k: int) -> list[str]:
    """Texts that name their candidate index, so a responder can tell who is shown where."""
    return [f"candidate {i} says something" for i in range(k)]


def index_of(text: str) -> int:
    return int(text.split()[1])


def judge_for(server: StubServer, **settings) -> OpenAIJudge:
    config = JudgeConfig(
        base_url=server.base_url, model="stub", backoff_base_s=0.001, max_retries=0, **settings
    )
    return OpenAIJudge(config, api_key="sk-integrity")


def source_ids(pairs: pl.DataFrame) -> set[str]:
    return set(pairs["source_id"].to_list())


def test_listwise_pairs_the_orders_disagreed_on_are_ties_not_preferences():
    # In the given order the judge says c0 > c1 > c2 > c3; shown reversed it says
    # c1 > c2 > c0 > c3. The orders agree on c1 > c2 and on c3 last; on c0 versus c1 and c0
    # versus c2 they disagree, whatever Copeland makes of the rest.
    def two_minds(body: dict, n: int) -> Reply:
        shown = presented(body)
        label = {index_of(text): lab for lab, text in shown}
        order = [0, 1, 2, 3] if index_of(shown[0][1]) == 0 else [1, 2, 0, 3]
        return Reply(body=completion(json.dumps({"ranking": [label[i] for i in order]})))

    candidates = table({"p0": numbered(4)})
    with StubServer(two_minds) as server:
        rankings = judge_candidates(candidates, judge_for(server, permutations=2))
    (row,) = rankings.to_dicts()
    assert row["ranks"] == [2, 1, 3, 4] and row["consistent"] is False
    assert json.loads(row["meta"])["disagreed_pairs"] == [["p0c0", "p0c1"], ["p0c0", "p0c2"]]

    result = rankings_to_pairs(rankings, candidates)
    assert source_ids(result.pairs) == {
        "p0:p0c1>p0c2",
        "p0:p0c1>p0c3",
        "p0:p0c2>p0c3",
        "p0:p0c0>p0c3",
    }
    assert result.counts["tied"] == 2 and result.counts["order_disagreements"] == 2
    best_vs_worst = rankings_to_pairs(rankings, candidates, PairsConfig("best_vs_worst"))
    assert source_ids(best_vs_worst.pairs) == {"p0:p0c1>p0c3"}


# A pairwise judge whose consistent verdicts form cycles: Copeland ranks them [3, 1, 1, 3],
# which would put c1 above c0 although the judge said c0 > c1 in both orders, and tie c0 with c3
# although it said c3 > c0.
BEATS = {(0, 1), (2, 0), (3, 0), (1, 2), (1, 3), (2, 3)}


def cyclic_judge(body: dict, n: int) -> Reply:
    first, second = (index_of(text) for _, text in presented(body))
    return Reply(body=completion(json.dumps({"winner": "A" if (first, second) in BEATS else "B"})))


@pytest.mark.parametrize("swap_orders", [True, False])
def test_pairwise_pairs_are_the_judges_own_verdicts_not_the_ranks(swap_orders):
    candidates = table({"p0": numbered(4)})
    with StubServer(cyclic_judge) as server:
        judge = judge_for(server, template="pairwise", swap_orders=swap_orders)
        rankings = judge_candidates(candidates, judge)
    (row,) = rankings.to_dicts()
    assert row["ranks"] == [3, 1, 1, 3] and row["status"] == "ok"

    result = rankings_to_pairs(rankings, candidates)
    assert source_ids(result.pairs) == {f"p0:p0c{i}>p0c{j}" for i, j in BEATS}
    assert result.pairs["margin"].to_list() == [1.0] * 6
    assert result.counts["tied"] == 0
    # best versus worst keeps a verdict the judge stated, never a reversed one
    (kept,) = rankings_to_pairs(rankings, candidates, PairsConfig("best_vs_worst")).pairs.rows(
        named=True
    )
    better, worse = (int(part[-1]) for part in kept["source_id"].split(":")[1].split(">"))
    assert (better, worse) in BEATS
    # a verdict states no degree: a margin above 1 keeps none of them
    strict = rankings_to_pairs(rankings, candidates, PairsConfig(min_margin=2))
    assert strict.pairs.height == 0 and strict.counts["below_margin"] == 6


def test_pairwise_position_bias_on_one_pair_makes_only_that_pair_a_tie():
    def biased_on_c0_c1(body: dict, n: int) -> Reply:
        first, second = (index_of(text) for _, text in presented(body))
        if {first, second} == {0, 1}:
            return Reply(body=completion('{"winner": "A"}'))  # whoever is shown first
        return Reply(body=completion(json.dumps({"winner": "A" if first < second else "B"})))

    candidates = table({"p0": numbered(3)})
    with StubServer(biased_on_c0_c1) as server:
        rankings = judge_candidates(candidates, judge_for(server, template="pairwise"))
    meta = json.loads(rankings["meta"][0])
    assert meta["disagreed_pairs"] == [["p0c0", "p0c1"]]
    result = rankings_to_pairs(rankings, candidates)
    assert source_ids(result.pairs) == {"p0:p0c0>p0c2", "p0:p0c1>p0c2"}
    assert result.counts["tied"] == 1 and result.counts["order_disagreements"] == 1


def test_same_text_under_two_ids_is_judged_once_and_never_paired():
    # c2 repeats c0 (up to surrounding whitespace): the candidates stage can emit this, since
    # a candidate id hashes the sample index as well as the text.
    texts = ["a short answer", "a much longer answer here", " a short answer\n"]
    candidates = table({"p0": texts, "p1": texts})
    with StubServer(longest_first) as server:
        rankings = judge_candidates(candidates, judge_for(server, permutations=2))
        shown = [len(presented(body)) for _, body, _ in server.log]
    assert shown == [2] * 4  # two prompts, two orders, each showing the two distinct texts
    for row in rankings.to_dicts():
        prompt = row["id"]
        assert row["candidate_ids"] == [f"{prompt}c0", f"{prompt}c1"]
        assert row["status"] == "ok" and row["consistent"] is True  # not falsely inconsistent
        assert json.loads(row["meta"])["merged_same_text"] == {f"{prompt}c0": [f"{prompt}c2"]}
    pairs = rankings_to_pairs(rankings, candidates).pairs
    assert source_ids(pairs) == {"p0:p0c1>p0c0", "p1:p1c1>p1c0"}


def test_a_set_of_one_text_costs_no_call_and_is_not_a_judge_failure():
    candidates = table({"p0": ["same", "same ", "same"], "p1": ["short", "longer one"]})
    with StubServer(longest_first) as server:
        rankings = judge_candidates(candidates, judge_for(server, permutations=1))
        sent = server.requests
    assert sent == 1
    first = rankings.row(0, named=True)
    assert first["status"] == "error" and "1 candidate(s)" in json.loads(first["meta"])["reason"]
    assert failed_sets(rankings) == []


def test_pairs_of_equal_text_are_never_emitted_whatever_the_ranks_say():
    # rankings made elsewhere (an older file, an annotation tool) can still rank two copies
    candidates = table({"p0": ["one", "two", "one"]})
    rankings = rankings_frame(
        [
            {
                "id": "p0",
                "judge": "label_studio:1",
                "origin": "human",
                "candidate_ids": ["p0c0", "p0c1", "p0c2"],
                "texts": ["one", "two", "one"],
                "ranks": [1, 2, 3],
                "status": "ok",
                "consistent": None,
                "meta": "{}",
            }
        ]
    )
    result = rankings_to_pairs(rankings, candidates)
    assert source_ids(result.pairs) == {"p0:p0c0>p0c1", "p0:p0c1>p0c2"}
    assert result.counts["same_text"] == 1
    chosen = result.pairs["chosen"].list.last().struct.field("content")
    rejected = result.pairs["rejected"].list.last().struct.field("content")
    assert (chosen != rejected).all()


def test_a_repeated_prompt_id_is_refused_before_any_call(tmp_path):
    first = table({"p0": ["a", "bb"]})
    again = table({"p0": ["ccc", "d"]})
    path = tmp_path / "candidates.parquet"
    pl.concat([first, table({"p1": ["x", "yy"]}), again]).write_parquet(path)
    with pytest.raises(ValueError) as error:
        read_candidates(path)
    assert str(error.value) == f"{path}: row 2: id 'p0' repeats row 0"
    # a frame that did not come through read_candidates (an asset input) is checked too
    with StubServer(longest_first) as server:
        with pytest.raises(ValueError, match="row 1: id 'p0' repeats row 0"):
            judge_candidates(pl.concat([first, again]), judge_for(server))
        assert server.requests == 0
