"""Label Studio and Argilla round trips on candidate sets built from the sample data: export,
a simulated annotator fills in the tool's own export format, import, then pairs. Bad files fail
naming the file, the task and the field."""

import json
from math import comb

import polars as pl
import pytest

from assets.resources import SAMPLES
from curation.feedback.annotation import (
    AnnotationError,
    export_argilla,
    export_label_studio,
    import_argilla,
    import_label_studio,
    label_studio_config,
)
from curation.feedback.candidates import merge_candidates, source_sets
from curation.feedback.pairs import rankings_to_pairs
from curation.feedback.schema import RANKINGS
from curation.ingest import ingest


@pytest.fixture(scope="module")
def sets() -> pl.DataFrame:
    oasst = ingest("oasst", [SAMPLES / "oasst_trees.jsonl"])
    uf = ingest("ultrafeedback", [SAMPLES / "ultrafeedback.jsonl"])
    prefs = pl.concat([oasst.preferences, uf.preferences])
    merged, _ = merge_candidates(None, source_sets(prefs), oasst.conversations)
    # a few sets of each source, with 2..4 candidates
    return pl.concat(
        [merged.filter(pl.col("source") == s).head(4) for s in ("oasst", "ultrafeedback")]
    )


def longest_first(texts: dict[str, str]) -> list[str]:
    return sorted(texts, key=lambda i: (-len(texts[i]), i))


def test_label_studio_ranker_round_trip(sets, tmp_path):
    summary = export_label_studio(sets, tmp_path, mode="ranker")
    assert summary["tasks"] == sets.height
    config = (tmp_path / "label_studio_config.xml").read_text()
    assert '<Ranker name="rank" toName="answers"/>' in config and "$candidates" in config
    tasks = json.loads((tmp_path / "label_studio_tasks.json").read_text())
    # the annotator (user 7) ranks longest first; Label Studio's export adds ids and results
    for number, task in enumerate(tasks, start=1):
        texts = {item["id"]: item["body"] for item in task["data"]["candidates"]}
        task["id"] = number
        task["annotations"] = [
            {
                "id": 100 + number,
                "completed_by": 7,
                "was_cancelled": False,
                "result": [
                    {
                        "id": "r1",
                        "from_name": "rank",
                        "to_name": "answers",
                        "type": "ranker",
                        "value": {"ranker": {"rank": longest_first(texts)}},
                    }
                ],
            }
        ]
    tasks[0]["annotations"].append(
        {"id": 1, "completed_by": 8, "was_cancelled": True, "result": []}
    )
    exported = tmp_path / "export.json"
    exported.write_text(json.dumps(tasks))

    rankings, counts = import_label_studio(exported)
    assert rankings.schema == RANKINGS
    assert counts == {"tasks": sets.height, "annotations": sets.height, "skipped": 1}
    assert set(rankings["origin"]) == {"human"} and set(rankings["judge"]) == {"label_studio:7"}
    assert json.loads(rankings["meta"][0])["annotator"] == "7"
    for row in rankings.iter_rows(named=True):
        lengths = [len(t) for t in row["texts"]]
        assert lengths == sorted(lengths, reverse=True)
        assert row["ranks"] == list(range(1, len(row["texts"]) + 1))
    pairs = rankings_to_pairs(rankings, sets).pairs
    expected = sum(comb(n, 2) for n in sets["candidates"].list.len())
    assert pairs.height == expected
    chosen = pairs["chosen"].list.first().struct.field("content").str.len_chars()
    rejected = pairs["rejected"].list.first().struct.field("content").str.len_chars()
    assert (chosen >= rejected).all() and set(pairs["origin"]) == {"human"}


def test_label_studio_pairwise_round_trip(sets, tmp_path):
    summary = export_label_studio(sets, tmp_path, mode="pairwise", seed=1)
    tasks = json.loads((tmp_path / "label_studio_tasks.json").read_text())
    assert summary["tasks"] == len(tasks) == sum(comb(n, 2) for n in sets["candidates"].list.len())
    assert "<Pairwise" in label_studio_config("pairwise")
    # sides are shuffled: the first candidate is not always on the left
    order = {
        r["id"]: [c["candidate_id"] for c in r["candidates"]] for r in sets.iter_rows(named=True)
    }
    flipped = [
        order[t["data"]["prompt_id"]].index(t["data"]["left_id"])
        > order[t["data"]["prompt_id"]].index(t["data"]["right_id"])
        for t in tasks
    ]
    assert any(flipped) and not all(flipped)
    for task in tasks:
        data = task["data"]
        side = "left" if len(data["left"]) >= len(data["right"]) else "right"
        task["annotations"] = [
            {
                "completed_by": {"id": 3, "email": "ann@example.org"},
                "result": [
                    {
                        "from_name": "preference",
                        "to_name": "left,right",
                        "type": "pairwise",
                        "value": {"selected": side},
                    }
                ],
            }
        ]
    exported = tmp_path / "export.json"
    exported.write_text(json.dumps(tasks))
    rankings, counts = import_label_studio(exported)
    assert counts["annotations"] == len(tasks)
    assert set(rankings["judge"]) == {"label_studio:ann@example.org"}
    pairs = rankings_to_pairs(rankings, sets).pairs
    assert pairs.height == len(tasks)
    chosen = pairs["chosen"].list.first().struct.field("content").str.len_chars()
    rejected = pairs["rejected"].list.first().struct.field("content").str.len_chars()
    assert (chosen >= rejected).all()


def test_argilla_round_trip_with_both_response_forms(sets, tmp_path):
    summary = export_argilla(sets, tmp_path)
    records = json.loads((tmp_path / "argilla_records.json").read_text())
    settings = json.loads((tmp_path / "argilla_settings.json").read_text())
    assert summary["records"] == len(records) == sets.height
    widest = max(sets["candidates"].list.len())
    assert settings["questions"][0]["values"] == [f"response_{i}" for i in range(1, widest + 1)]
    for number, record in enumerate(records):
        slots = [k for k in record["fields"] if k.startswith("response_")]
        ordered = sorted(slots, key=lambda s: (-len(record["fields"][s]), s))
        if number % 2:
            value = ordered  # the SDK's form: option values, best first
        else:  # the server's form, with the last two tied
            value = [
                {"value": s, "rank": min(i, len(ordered) - 1)} for i, s in enumerate(ordered, 1)
            ]
        record["responses"] = {
            "ranking": [
                {"value": value, "user_id": "5f0c-user", "status": "submitted"},
                {"value": ordered, "user_id": "other", "status": "discarded"},
            ]
        }
        record["_server_id"] = f"srv-{number}"
    exported = tmp_path / "records.json"
    exported.write_text(json.dumps(records))
    rankings, counts = import_argilla(exported)
    assert counts == {"records": len(records), "annotations": len(records), "skipped": len(records)}
    assert set(rankings["judge"]) == {"argilla:5f0c-user"} and set(rankings["origin"]) == {"human"}
    by_id = {r["id"]: r for r in rankings.iter_rows(named=True)}
    for number, record in enumerate(records):
        row = by_id[record["id"]]
        assert row["candidate_ids"][0] in record["metadata"]["candidate_ids"]
        k = len(row["ranks"])
        tied = number % 2 == 0 and k >= 2
        assert row["ranks"] == (list(range(1, k)) + [k - 1] if tied else list(range(1, k + 1)))
    pairs = rankings_to_pairs(rankings, sets)
    ties = sum(1 for n, r in enumerate(records) if n % 2 == 0)
    assert pairs.counts["tied"] == ties
    assert pairs.pairs.height == sum(comb(n, 2) for n in sets["candidates"].list.len()) - ties


def write(tmp_path, content) -> str:
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def ranker_task(**data_overrides):
    data = {
        "prompt_id": "p",
        "prompt": "q",
        "candidates": [
            {"id": "a", "title": "Answer 1", "body": "x"},
            {"id": "b", "title": "Answer 2", "body": "y"},
        ],
    }
    data.update(data_overrides)
    return {
        "data": data,
        "annotations": [
            {
                "completed_by": 1,
                "result": [
                    {
                        "type": "ranker",
                        "from_name": "rank",
                        "value": {"ranker": {"rank": ["b", "a"]}},
                    }
                ],
            }
        ],
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ({"data": {}}, "expected a JSON list"),
        ([ranker_task(), {"annotations": []}], "task 1: data: missing"),
        ([ranker_task(prompt_id=None)], "task 0: data.prompt_id: missing"),
        ([ranker_task(candidates="a,b")], "task 0: data.candidates: expected list, got str"),
        (
            [
                {
                    **ranker_task(),
                    "annotations": [
                        {"result": [{"type": "ranker", "value": {"ranker": {"rank": ["b", "zz"]}}}]}
                    ],
                }
            ],
            r"task 0: annotations\[0\].result\[0\].value.ranker.rank: unknown answer id 'zz'",
        ),
        (
            [
                {
                    **ranker_task(),
                    "annotations": [
                        {"result": [{"type": "ranker", "value": {"ranker": {"rank": ["b"]}}}]}
                    ],
                }
            ],
            r"value.ranker.rank: every answer must be ranked once; missing \['a'\]",
        ),
        (
            [
                {
                    "data": {
                        "prompt_id": "p",
                        "left_id": "a",
                        "left": "x",
                        "right_id": "b",
                        "right": "y",
                    },
                    "annotations": [
                        {"result": [{"type": "pairwise", "value": {"selected": "both"}}]}
                    ],
                }
            ],
            r"task 0: annotations\[0\].result\[0\].value.selected: expected 'left' or 'right'",
        ),
    ],
)
def test_bad_label_studio_files_name_file_task_and_field(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(AnnotationError, match=message) as error:
        import_label_studio(path)
    assert str(error.value).startswith(path)


def argilla_record(value, **overrides):
    record = {
        "id": "p",
        "fields": {"prompt": "q", "response_1": "x", "response_2": "y"},
        "metadata": {"prompt_id": "p", "candidate_ids": ["a", "b"]},
        "responses": {"ranking": [{"value": value, "user_id": "u"}]},
    }
    record.update(overrides)
    return record


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            [argilla_record(["response_2", "response_1"]), argilla_record(["maybe", "response_1"])],
            r"task 1: responses.ranking\[0\].value: unknown option 'maybe'",
        ),
        (
            [argilla_record(["response_2"])],
            r"task 0: responses.ranking\[0\].value: every response must be ranked",
        ),
        (
            [
                argilla_record(
                    [{"value": "response_1", "rank": "first"}, {"value": "response_2", "rank": 2}]
                )
            ],
            r"task 0: responses.ranking\[0\].value\[0\].rank: expected int, got str",
        ),
        (
            [argilla_record(["response_1", "response_2"], metadata={"prompt_id": "p"})],
            "task 0: metadata.candidate_ids: expected a list of ids",
        ),
        ([argilla_record("response_1")], r"task 0: responses.ranking\[0\].value: expected a non"),
    ],
)
def test_bad_argilla_files_name_file_task_and_field(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(AnnotationError, match=message) as error:
        import_argilla(path)
    assert str(error.value).startswith(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(AnnotationError, match="nope.json: no such file"):
        import_argilla(tmp_path / "nope.json")
