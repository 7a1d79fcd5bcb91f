"""Preference pairs whose prompt has FLAN-style options: when the options filter rewrites the
prompt and the chosen answer, the rejected answer is mapped the same way, so the pair does not
prefer "dolphin" over "(D) octopus" (a difference of form a reward model learns instead of the
content). Inputs are real Parquet and JSONL files read by the generic reader, and the embedded
UltraFeedback sample through the ``postforge`` CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import polars as pl

from curation.curate import build_filters
from curation.ingest import ingest
from curation.preferences import curate_preferences

POSTFORGE = str(Path(sys.executable).with_name("postforge"))
SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
QUESTION = "Which of these is a mammal?"
MAMMAL = f"{QUESTION}\nOPTIONS:\n(A) shark\n(B) dolphin\n(C) trout\n(D) octopus"
LETTER_FORM = re.compile(r"^\s*[(\[]?[A-H][)\].]")


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pl.DataFrame(rows).write_parquet(path)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def curated(path: Path, config: dict | None = None):
    """(pairs as read, their curation, source_id → row id) for a generic preference file."""
    pairs = ingest(path.suffix.lstrip("."), [path]).preferences
    assert pairs.height > 0
    ids = dict(pairs.select(pl.col("source_id").str.extract(r":(\d+)$").cast(int), "id").rows())
    return pairs, curate_preferences(pairs, build_filters(config or {})), ids


def answers(result, row_id: str) -> tuple[str, str]:
    row = result.curated.filter(id=row_id).row(0, named=True)
    return row["chosen"][-1]["content"], row["rejected"][-1]["content"]


def ledger_of(result, row_id: str) -> dict[str, list[tuple[str, str]]]:
    rows = result.ledger.filter(row_id=row_id)
    found: dict[str, list[tuple[str, str]]] = {}
    for rule, verdict, reason in rows.select("rule", "verdict", "reason").iter_rows():
        found.setdefault(rule, []).append((verdict, reason))
    return found


def assert_conserved(pairs: pl.DataFrame, result) -> None:
    counts = result.counts()
    assert result.states.height == pairs.height == result.states["row_id"].n_unique()
    assert counts["kept"] + counts["rewritten"] == result.curated.height
    dropped = set(result.states.filter(state="dropped")["row_id"])
    assert dropped == set(result.ledger.filter(verdict="drop")["row_id"])


def assert_every_change_has_a_reason(pairs: pl.DataFrame, result) -> None:
    """A kept pair that differs from its input has a rewrite in the ledger, and its state says
    so; one that does not differ has neither."""
    before = pairs.select("id", "prompt", "chosen", "rejected")
    after = result.curated.select("id", "prompt", "chosen", "rejected")
    changed = after.join(before, on=["id", "prompt", "chosen", "rejected"], how="anti")["id"]
    rewrites = set(result.ledger.filter(verdict="rewrite")["row_id"])
    states = dict(result.states.select("row_id", "state").iter_rows())
    for row_id in after["id"]:
        assert (row_id in set(changed)) == (row_id in rewrites) == (states[row_id] == "rewritten")


def test_flan_pair_ends_with_both_answers_in_option_text_form(tmp_path: Path) -> None:
    path = write_parquet(
        tmp_path / "flan_pairs.parquet",
        [
            {"prompt": MAMMAL, "chosen": "(B)", "rejected": "(D) octopus"},
            {
                "prompt": MAMMAL,
                "chosen": "Dolphins breathe air. So the answer is (B).",
                "rejected": "Octopuses have eight arms. So the answer is (D).",
            },
            {"prompt": MAMMAL, "chosen": "(B)", "rejected": "A shark: it swims in the sea."},
            {
                "prompt": "Which of these is a mammal, a shark or a dolphin?",
                "chosen": "A dolphin.",
                "rejected": "(D) octopus",
            },
        ],
    )
    pairs, result, ids = curated(path)
    assert_conserved(pairs, result)
    assert_every_change_has_a_reason(pairs, result)

    letters, reasoned, prose, plain = ids[1], ids[2], ids[3], ids[4]
    assert answers(result, letters) == ("dolphin", "octopus")
    assert answers(result, reasoned) == (
        "Dolphins breathe air. So the answer is dolphin.",
        "Octopuses have eight arms. So the answer is octopus.",
    )
    row = result.curated.filter(id=letters).row(0, named=True)
    assert row["prompt"] == [{"role": "user", "content": QUESTION}]

    # The rejected rewrite is in the ledger with its reason; the prompt's rewrite once.
    found = ledger_of(result, letters)
    assert found["options.explicit"] == [
        (
            "rewrite",
            "removed options: 'OPTIONS:\\n(A) shark\\n(B) dolphin\\n(C) trout\\n(D) octopus'; "
            "answer '(B)' → 'dolphin'",
        )
    ]
    assert found["options.rejected_answer"] == [
        (
            "rewrite",
            "rejected answer '(D) octopus' → 'octopus' (its options were removed from the prompt)",
        )
    ]
    ((_, reason),) = ledger_of(result, reasoned)["options.rejected_answer"]
    assert "So the answer is octopus." in reason
    counts = dict(result.rule_counts().select("rule", "rows").iter_rows())
    assert counts["options.explicit"] == 3 and counts["options.rejected_answer"] == 2

    # A rejected answer that names no option is text already: it stays, with no rejected rule.
    assert answers(result, prose) == ("dolphin", "A shark: it swims in the sea.")
    assert set(ledger_of(result, prose)) == {"options.explicit"}
    # Without options nothing is rewritten, a letter-like answer included.
    assert answers(result, plain) == ("A dolphin.", "(D) octopus")
    assert ledger_of(result, plain) == {}
    states = dict(result.states.select("row_id", "state").iter_rows())
    assert states == {
        letters: "rewritten",
        reasoned: "rewritten",
        prose: "rewritten",
        plain: "kept",
    }

    # When the options stay (policy flag), so do the letters, on both sides.
    _, flagged, _ = curated(path, {"options": {"policy": "flag"}})
    assert answers(flagged, letters) == ("(B)", "(D) octopus")
    assert "options.rejected_answer" not in set(flagged.ledger["rule"])


def test_rejected_answer_that_cannot_be_mapped_like_the_chosen_one(tmp_path: Path) -> None:
    """A rejected letter naming none of the options would keep the letter cue: the pair goes,
    with the reason. A pair whose answers become equal has nothing to prefer: it goes too.
    The same pairs curate alike from JSONL and Parquet."""
    rows = [
        {"prompt": MAMMAL, "chosen": "(B)", "rejected": "(F)"},
        {"prompt": MAMMAL, "chosen": "(B) dolphin", "rejected": "(B)"},
        {"prompt": MAMMAL, "chosen": "(B)", "rejected": "(A) shark"},
    ]
    results = []
    for path in (
        write_jsonl(tmp_path / "pairs.jsonl", rows),
        write_parquet(tmp_path / "pairs.parquet", rows),
    ):
        pairs, result, ids = curated(path)
        assert_conserved(pairs, result)
        assert_every_change_has_a_reason(pairs, result)
        unknown, same, mapped = ids[1], ids[2], ids[3]
        states = {r["row_id"]: r for r in result.states.iter_rows(named=True)}
        assert states[unknown]["state"] == "dropped"
        assert states[unknown]["rule"] == "options.unresolvable_letter"
        assert states[unknown]["reason"] == (
            "the rejected answer '(F)' refers to option F, but no option has that letter; "
            "its letter would stay beside the chosen answer's option text"
        )
        assert ("drop", states[unknown]["reason"]) in ledger_of(result, unknown)[
            "options.unresolvable_letter"
        ]
        assert states[same]["state"] == "dropped"
        assert states[same]["rule"] == "preference.identical"
        assert "'dolphin'" in states[same]["reason"]
        assert answers(result, mapped) == ("dolphin", "shark")
        results.append(result.curated.drop("id", "source", "source_id", "source_ids"))
    assert (
        results[0]
        .select("prompt", "chosen", "rejected")
        .equals(results[1].select("prompt", "chosen", "rejected"))
    )


def test_embedded_ultrafeedback_sample_through_the_cli(tmp_path: Path) -> None:
    """The embedded UltraFeedback sample has FLAN pairs with options and letter answers: after
    ``postforge ingest`` and ``postforge curate`` no kept pair with options has an answer in
    letter form on either side, and each rejected rewrite is in the ledger."""
    sample = SAMPLES / "ultrafeedback.jsonl"
    ingested, out = tmp_path / "ingested", tmp_path / "curated"
    for args in (
        ("ingest", "--format", "ultrafeedback", str(sample), "--out", str(ingested)),
        ("curate", str(ingested), "--out", str(out)),
    ):
        done = subprocess.run([POSTFORGE, *args], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    kept = pl.read_parquet(out / "curated_preferences.parquet")
    ledger = pl.read_parquet(out / "preference_ledger.parquet")
    states = pl.read_parquet(out / "preference_states.parquet")
    with_options = ledger.filter(rule="options.explicit", verdict="rewrite")["row_id"]
    rewritten = kept.filter(pl.col("id").is_in(with_options.implode()))
    assert rewritten.height > 0
    for row in rewritten.iter_rows(named=True):
        for side in ("chosen", "rejected"):
            assert not LETTER_FORM.match(row[side][0]["content"]), (row["id"], side)
    # The sample's rejected answers were letters ("(D) octopus", "(A) shark"): each kept pair
    # with options had its rejected answer rewritten, and the ledger says how.
    mapped = ledger.filter(rule="options.rejected_answer")
    assert set(rewritten["id"]) <= set(mapped["row_id"])
    assert all(r.startswith("rejected answer '(") for r in mapped["reason"])
    of_rewritten = states.filter(pl.col("row_id").is_in(rewritten["id"].implode()))
    assert set(of_rewritten["state"]) == {"rewritten"}
