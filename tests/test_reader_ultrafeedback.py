"""UltraFeedback reader: ranking, pairs, score fallbacks, ledger rows and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from curation.errors import SourceError
from curation.ingest import ReadOptions, ingest
from curation.readers.ultrafeedback import JUDGE, rating_value, read_ultrafeedback
from curation.schema import CONVERSATIONS, LEDGER, PREFERENCES, stable_id

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")


def completion(model: str, response: str, overall: float | None, *ratings: str) -> dict:
    ratings = ratings or ("3",) * len(ASPECTS)
    return {
        "model": model,
        "response": response,
        "overall_score": overall,
        "annotations": {
            aspect: {"Rating": rating, "Rationale": "because"}
            for aspect, rating in zip(ASPECTS, ratings, strict=False)
        },
    }


def write_rows(path: Path, rows: list[dict | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_ranking_gives_pairs_and_best_conversation(tmp_path: Path) -> None:
    row = {
        "source": "evol_instruct",
        "correct_answers": ["Seven", "7"],
        "incorrect_answers": ["None"],
        "instruction": "Name a prime.",
        "completions": [
            completion("m-six", "Six.", 6.0),
            completion("m-eight", "Seven.", 8.0),
            completion("m-three", "Nine.", 3.0),
            completion("m-six-b", "Four.", 6.0),
        ],
    }
    path = write_rows(tmp_path / "uf.jsonl", [row])
    result = read_ultrafeedback([path], ReadOptions())
    assert result.preferences.schema == PREFERENCES
    assert result.conversations.schema == CONVERSATIONS
    assert result.ledger.height == 0

    pairs = result.preferences
    # C(4,2) = 6 pairs, less the tie between the two 6.0 answers.
    assert pairs.height == 5
    chosen = pairs["chosen"].list.first().struct.field("content").to_list()
    rejected = pairs["rejected"].list.first().struct.field("content").to_list()
    assert list(zip(chosen, rejected, pairs["margin"], strict=True)) == [
        ("Seven.", "Six.", 2.0),
        ("Seven.", "Four.", 2.0),
        ("Seven.", "Nine.", 5.0),
        ("Six.", "Nine.", 3.0),
        ("Four.", "Nine.", 3.0),
    ]
    assert set(pairs["origin"]) == {"ai"}
    assert json.loads(pairs["judge"][0]) == {"model": "gpt-4", "dataset": "ultrafeedback"}
    assert pairs["judge"][0] == JUDGE
    assert pairs["prompt"][0].to_list() == [{"role": "user", "content": "Name a prime."}]
    assert pairs["source_ids"].to_list() == [["uf.jsonl:1"]] * 5
    assert pairs["id"].n_unique() == 5
    assert pairs["source_id"][0] == "uf.jsonl:1:1>0"

    conversation = result.conversations.row(0, named=True)
    assert conversation["id"] == stable_id("ultrafeedback", "uf.jsonl:1")
    assert conversation["messages"] == [
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "Seven."},
    ]
    meta = json.loads(conversation["meta"])
    assert meta["model"] == "m-eight"
    assert meta["score"] == 8.0
    assert meta["source"] == "evol_instruct"
    assert meta["score_scale"] == "overall_score"
    assert meta["correct_answers"] == ["Seven", "7"]
    assert "incorrect_answers" not in meta  # ["None"] is UltraFeedback's "no answers"
    assert meta["ranking"] == [
        {"model": "m-eight", "score": 8.0},
        {"model": "m-six", "score": 6.0},
        {"model": "m-six-b", "score": 6.0},
        {"model": "m-three", "score": 3.0},
    ]


def test_missing_overall_score_ranks_by_mean_aspect_rating(tmp_path: Path) -> None:
    row = {
        "instruction": "Say hi.",
        "completions": [
            completion("a", "hi", None, "5", "N/A", "4", "5"),  # mean of 5, 4, 5
            completion("b", "yo", 9.0, "2", "2", "2", "2"),  # overall ignored: scales differ
            {**completion("c", "hey", None), "fine-grained_score": 3.5},
        ],
    }
    path = write_rows(tmp_path / "uf.jsonl", [row])
    result = read_ultrafeedback([path], ReadOptions())
    meta = json.loads(result.conversations["meta"][0])
    assert meta["score_scale"] == "aspect_mean"
    assert meta["ranking"] == [
        {"model": "a", "score": pytest.approx(14 / 3)},
        {"model": "c", "score": 3.5},
        {"model": "b", "score": 2.0},
    ]
    assert result.preferences.height == 3


def test_unscored_completion_goes_to_the_ledger(tmp_path: Path) -> None:
    row = {
        "instruction": "Q",
        "completions": [
            completion("a", "A", None, "4"),
            completion("b", "B", None, "N/A", "N/A"),
            completion("c", "C", None, "2"),
        ],
    }
    path = write_rows(tmp_path / "uf.jsonl", [row])
    result = read_ultrafeedback([path], ReadOptions())
    assert result.ledger.schema == LEDGER
    ledger = result.ledger.row(0, named=True)
    assert ledger["rule"] == "ingest.unscored"
    assert ledger["stage"] == "ingest"
    assert ledger["verdict"] == "drop"
    assert ledger["row_id"] == stable_id("ultrafeedback", "uf.jsonl:1")
    assert "completion 1 (b)" in ledger["reason"]
    assert result.preferences.height == 1  # a vs c


def test_too_few_scored_completions(tmp_path: Path) -> None:
    rows = [
        {"instruction": "one", "completions": [completion("a", "A", 7.0)]},
        {"instruction": "none", "completions": []},
        {"instruction": "ties", "completions": [completion("a", "A", 7), completion("b", "B", 7)]},
    ]
    path = write_rows(tmp_path / "uf.jsonl", rows)
    result = ingest("ultrafeedback", [path])
    assert result.preferences.height == 0  # the tie gives no pair, and is no error
    # A lone scored completion still makes an SFT conversation; an empty row makes nothing.
    assert result.conversations["source_id"].to_list() == ["uf.jsonl:1", "uf.jsonl:3"]
    ledger = result.ledger.select("row_id", "rule", "verdict").rows()
    assert ledger == [
        (stable_id("ultrafeedback", "uf.jsonl:1"), "ingest.too_few_completions", "flag"),
        (stable_id("ultrafeedback", "uf.jsonl:2"), "ingest.too_few_completions", "drop"),
    ]


def test_a_completion_without_any_score_leaves_the_others_ranked(tmp_path: Path) -> None:
    # Completion 1 has no score at all: it is left out, not the instruction, and the ledger
    # names it, not completion 0, which has its overall_score.
    row = {
        "instruction": "Q",
        "completions": [
            {"model": "m1", "response": "Eight.", "overall_score": 8},
            {"model": "m2", "response": "None."},
        ],
    }
    result = read_ultrafeedback([write_rows(tmp_path / "uf.jsonl", [row])], ReadOptions())
    conversation = result.conversations.row(0, named=True)
    assert conversation["messages"][1]["content"] == "Eight."
    meta = json.loads(conversation["meta"])
    assert (meta["score_scale"], meta["score"]) == ("overall_score", 8.0)
    assert result.preferences.height == 0
    ledger = result.ledger.select("rule", "verdict", "reason").rows()
    assert ledger == [
        (
            "ingest.unscored",
            "drop",
            "completion 1 (m2) has no numeric overall_score and no numeric aspect rating",
        ),
        (
            "ingest.too_few_completions",
            "flag",
            "1 scored completion(s) of 2; a preference pair needs 2",
        ),
    ]


def test_mixed_scales_rank_on_the_scale_most_completions_have(tmp_path: Path) -> None:
    no_ratings = {"annotations": {}}
    rows = [
        {
            "instruction": "two overall scores, one aspect rating",
            "completions": [
                {**completion("a", "A", 8.0), **no_ratings},
                {**completion("b", "B", 6.0), **no_ratings},
                completion("c", "C", None, "4"),
            ],
        },
        {
            # A tie: overall_score, the critique's own rating, ranks.
            "instruction": "one of each",
            "completions": [
                {**completion("d", "D", 7.0), **no_ratings},
                completion("e", "E", None, "5"),
            ],
        },
    ]
    result = read_ultrafeedback([write_rows(tmp_path / "uf.jsonl", rows)], ReadOptions())
    scales = [json.loads(m)["score_scale"] for m in result.conversations["meta"]]
    assert scales == ["overall_score", "overall_score"]
    assert [m[1]["content"] for m in result.conversations["messages"].to_list()] == ["A", "D"]
    assert result.preferences["margin"].to_list() == [2.0]
    unscored = result.ledger.filter(rule="ingest.unscored")["reason"].to_list()
    assert [reason.split(" has ")[0] for reason in unscored] == [
        "completion 2 (c)",
        "completion 1 (e)",
    ]
    for reason in unscored:
        assert "no numeric overall_score, which ranks this instruction" in reason
        assert "aspect ratings are on another scale" in reason


@pytest.mark.parametrize(
    ("value", "expected"),
    [("4", 4.0), (" 5 ", 5.0), ("N/A", None), ("", None), (3, 3.0), (None, None), ("nan", None)],
)
def test_rating_value(value: object, expected: float | None) -> None:
    assert rating_value(value) == expected


# ---- bad input -------------------------------------------------------------------------------


def test_bad_lines_become_rejected_rows(tmp_path: Path) -> None:
    good = json.dumps({"instruction": "Q", "completions": [completion("a", "A", 1.0)]})
    wrong = {"instruction": "Q", "completions": [{"model": "a", "response": 5}]}
    path = tmp_path / "uf.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf"
        + good.encode()
        + b"\n"
        + good[:30].encode()
        + b"\n   \n"
        + json.dumps(wrong).encode()
        + b"\n"
        + good.replace('"Q"', '"\xff"').encode("latin-1")
        + b"\n"
    )
    result = read_ultrafeedback([path], ReadOptions())
    assert result.conversations.height == 1
    rejected = result.rejected
    assert rejected["line"].to_list() == [2, 3, 4, 5]
    assert rejected["field"][2] == "completions[0].response"
    assert "UTF-8" in rejected["reason"][3]


def test_empty_and_missing_files_are_source_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    with pytest.raises(SourceError, match="empty"):
        read_ultrafeedback([empty], ReadOptions())
    with pytest.raises(SourceError, match="no such file"):
        read_ultrafeedback([tmp_path / "gone.jsonl"], ReadOptions())


def test_parquet_input(tmp_path: Path) -> None:
    path = tmp_path / "uf.parquet"
    pl.DataFrame(
        [
            {
                "instruction": "Q",
                "completions": [
                    completion("a", "A", None, "4", "4", "4", "4"),
                    # Fewer aspects: Parquet stores the missing ones as null structs.
                    completion("b", "B", None, "2", "N/A"),
                ],
            }
        ]
    ).write_parquet(path)
    result = read_ultrafeedback([path], ReadOptions())
    assert result.rejected.height == 0
    assert result.preferences["margin"].to_list() == [2.0]
    missing = tmp_path / "missing.parquet"
    pl.DataFrame({"instruction": ["Q"]}).write_parquet(missing)
    with pytest.raises(SourceError, match="completions"):
        read_ultrafeedback([missing], ReadOptions())


def strict_json(text: str) -> object:
    """json.loads that refuses NaN and Infinity, which are not JSON."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_nan_fine_grained_score_counts_as_unscored(tmp_path: Path) -> None:
    # Parquet exports write a missing fine-grained_score as NaN. It is no score: the completion
    # must neither win the SFT conversation nor reach a pair with a NaN margin.
    path = tmp_path / "uf.parquet"
    nan = float("nan")
    completions = [
        {**completion("m-nan", "Unscored.", None, "N/A", "N/A"), "fine-grained_score": nan},
        {**completion("m-three", "Three.", None), "fine-grained_score": 3.0},
        {**completion("m-one", "One.", None), "fine-grained_score": 1.0},
        # NaN beside numeric ratings: the ratings' mean stands in, as when the field is absent.
        {**completion("m-rated", "Rated.", None, "2", "2"), "fine-grained_score": nan},
    ]
    pl.DataFrame([{"instruction": "Q", "completions": completions}]).write_parquet(path)
    result = read_ultrafeedback([path], ReadOptions())
    assert result.rejected.height == 0

    conversation = result.conversations.row(0, named=True)
    assert conversation["messages"][1] == {"role": "assistant", "content": "Three."}
    meta = strict_json(conversation["meta"])
    assert meta["score"] == 3.0
    assert meta["ranking"] == [
        {"model": "m-three", "score": 3.0},
        {"model": "m-rated", "score": 2.0},
        {"model": "m-one", "score": 1.0},
    ]

    pairs = result.preferences
    assert pairs.height == 3
    assert pairs["margin"].is_finite().all()
    chosen = pairs["chosen"].list.first().struct.field("content").to_list()
    rejected = pairs["rejected"].list.first().struct.field("content").to_list()
    assert "Unscored." not in chosen + rejected
    assert sorted(zip(chosen, rejected, pairs["margin"], strict=True)) == [
        ("Rated.", "One.", 1.0),
        ("Three.", "One.", 2.0),
        ("Three.", "Rated.", 1.0),
    ]
    for judge in pairs["judge"]:
        strict_json(judge)

    ledger = result.ledger.select("rule", "verdict", "reason").rows()
    assert len(ledger) == 1
    rule, verdict, reason = ledger[0]
    assert (rule, verdict) == ("ingest.unscored", "drop")
    assert (
        reason == "completion 0 (m-nan) has no numeric overall_score and no numeric aspect rating"
    )


# ---- embedded sample -------------------------------------------------------------------------


@pytest.mark.skipif(
    not (SAMPLES / "ultrafeedback.jsonl").exists(), reason="sample data not written yet"
)
def test_sample_file() -> None:
    result = read_ultrafeedback([SAMPLES / "ultrafeedback.jsonl"], ReadOptions())
    assert result.rejected.height == 0
    assert result.preferences.height > 0
    assert result.conversations.height > 0
    assert (result.preferences["margin"] > 0).all()
