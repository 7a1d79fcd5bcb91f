"""Append-only curation: conversations stored as one Parquet part per drop, a new drop curated
alone against the earlier parts' kept state, and the result equal to one full ``curate`` over
every row, part by part. Real Parquet parts and manifests on disk (curation.storage)."""

import json

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from assets.resources import SAMPLES
from curation.append import PARTS_MANIFEST, curate_parts, read_parts_manifest
from curation.curate import CurationResult, build_filters, curate
from curation.ingest import IngestResult, ingest
from curation.storage import MANIFEST, Part, PartUpdate, read_manifest, write_parts
from curation.tokens import TokenCounter
from training.tokenizer import TokenizerConfig, corpus_texts, train_tokenizer

SOURCES = [
    ("oasst", ["oasst_trees.jsonl", "oasst_messages.jsonl"]),
    ("flan", ["flan.jsonl", "synthetic_flan.jsonl"]),
    ("hh", ["hh_rlhf.jsonl"]),
    ("ultrafeedback", ["ultrafeedback.jsonl", "synthetic_ultrafeedback.jsonl"]),
    ("jsonl", ["synthetic_chat.jsonl"]),
]


@pytest.fixture(scope="module")
def filters():
    tokenizer = train_tokenizer(corpus_texts(SAMPLES / "pretrain.jsonl"), TokenizerConfig())
    return build_filters({}, TokenCounter(tokenizer))


def edited(frame: pl.DataFrame, new_id: str, suffix: str) -> pl.DataFrame:
    """A near copy: every message with a few words added at its end."""
    return frame.with_columns(
        pl.lit(new_id).alias("id"),
        pl.col("messages").list.eval(
            pl.struct(
                pl.element().struct.field("role"),
                pl.element().struct.field("content") + suffix,
            )
        ),
    )


@pytest.fixture(scope="module")
def rows():
    return IngestResult.concat(
        [ingest(fmt, [SAMPLES / name for name in names]) for fmt, names in SOURCES]
    ).conversations


@pytest.fixture(scope="module")
def parts(rows, filters):
    """Three parts as drops arrive: A (every source but HH-RLHF and OpenAssistant), B (HH, plus
    an exact copy and a near copy of kept A rows), C (OpenAssistant, plus an exact copy of a B
    row and another near copy of the same A row). The sample sources' synthetic rows have near
    duplicates across sources; these splits keep each such cluster within one part."""
    late = pl.col("source").is_in(["hh", "oasst"])
    a = rows.filter(~late)
    result = curate(a, filters)
    named = result.ledger["reason"].str.extract(r"duplicate of (\S+) ").drop_nulls()
    answer_chars = pl.col("messages").list.last().struct.field("content").str.len_chars()
    lonely = result.curated.filter(~pl.col("id").is_in(named.implode())).sort(
        answer_chars, descending=True
    )
    first, second = lonely.slice(0, 1), lonely.slice(1, 1)
    b = pl.concat(
        [
            rows.filter(pl.col("source") == "hh"),
            first.with_columns(pl.lit("b-exact").alias("id")),
            edited(second, "b-near", " and so on"),
        ]
    )
    c = pl.concat(
        [
            rows.filter(pl.col("source") == "oasst"),
            b.head(1).with_columns(pl.lit("c-exact").alias("id")),
            edited(second, "c-near", " as noted"),
        ]
    )
    return a, b, c


def table(folder, frames: dict[str, pl.DataFrame], base=None):
    names = list(frames)
    update = PartUpdate(
        parts=[Part(n, f"tag-{n}", rows=f.height) for n, f in frames.items()],
        new=frames if base is None else {n: frames[n] for n in names if n not in base.by_name()},
        base=base,
    )
    return write_parts(folder, update)


def joined(run, names) -> CurationResult:
    return CurationResult(
        *(pl.concat([getattr(run.results[n], f) for n in names]) for f in CURATION_FIELDS)
    )


CURATION_FIELDS = ("curated", "ledger", "states")


def by_part(result: CurationResult, parts: dict[str, pl.DataFrame]) -> CurationResult:
    """A full run's frames put in part order (stable: each part keeps the full run's order)."""
    part_of = pl.concat(
        [
            f.select(pl.col("id").alias("row_id"), part=pl.lit(k))
            for k, f in enumerate(parts.values())
        ]
    ).unique("row_id", keep="first")

    def order(frame, column):
        return (
            frame.join(
                part_of.rename({"row_id": column}), on=column, how="left", maintain_order="left"
            )
            .sort("part", maintain_order=True)
            .drop("part")
        )

    return CurationResult(
        order(result.curated, "id"), order(result.ledger, "row_id"), order(result.states, "row_id")
    )


def test_appended_drops_cost_their_own_rows_and_equal_a_full_run(tmp_path, parts, filters):
    a, b, c = parts
    state = tmp_path / "state"
    conv = table(tmp_path / "conv", {"A": a})
    first = curate_parts(conv, filters, state, context="tok")
    assert first.info.mode == "full" and first.info.rows_filtered == a.height
    stored = [("A", "tag-A")]

    conv = table(tmp_path / "conv", {"A": a, "B": b}, base=conv)
    second = curate_parts(conv, filters, state, context="tok", stored=stored)
    assert second.info.mode == "append", second.info.reason
    # Only B went through the filters and got signatures; A's part was not curated again.
    assert list(second.results) == ["B"]
    assert second.info.rows_filtered == b.height
    assert 0 < second.info.rows_signed <= b.height
    stored.append(("B", "tag-B"))

    conv = table(tmp_path / "conv", {"A": a, "B": b, "C": c}, base=conv)
    third = curate_parts(conv, filters, state, context="tok", stored=stored)
    assert third.info.mode == "append" and list(third.results) == ["C"]

    frames = {"A": a, "B": b, "C": c}
    expected = by_part(curate(pl.concat([a, b, c]), filters), frames)
    results = {**first.results, **second.results, **third.results}
    got = CurationResult(
        *(pl.concat([getattr(results[n], f) for n in frames]) for f in CURATION_FIELDS)
    )
    for name in CURATION_FIELDS:
        assert_frame_equal(getattr(got, name), getattr(expected, name))
    reasons = dict(got.states.select("row_id", "reason").iter_rows())
    assert "exact duplicate of" in reasons["b-exact"]
    assert "near duplicate of" in reasons["b-near"]
    assert reasons["c-exact"] is not None and "exact duplicate of" in reasons["c-exact"]
    assert "near duplicate of" in reasons["c-near"]
    # One state folder per part, named by the manifest written last.
    _, entries = read_parts_manifest(state)
    assert [e.name for e in entries] == ["A", "B", "C"]
    assert {p.name for p in state.iterdir() if p.is_dir()} == {e.folder for e in entries}


def test_a_changed_earlier_part_or_config_runs_over_every_row(tmp_path, parts, filters):
    a, b, _ = parts
    state = tmp_path / "state"
    conv = table(tmp_path / "conv", {"A": a, "B": b})
    curate_parts(conv, filters, state, context="tok")
    stored = [("A", "tag-A"), ("B", "tag-B")]
    # A drop ingested again: its part's tag changes, the run covers every row (incrementally).
    moved = write_parts(
        tmp_path / "conv",
        PartUpdate([Part("A", "tag-A2", rows=a.height), Part("B", "tag-B")], {"A": a}, conv),
    )
    again = curate_parts(moved, filters, state, context="tok", stored=stored)
    assert again.info.mode == "incremental" and "earlier part changed" in again.info.reason
    assert again.info.rows_filtered == 0 and list(again.results) == ["A", "B"]
    # Another tokenizer: nothing is reused.
    other = curate_parts(moved, filters, state, context="tok2", stored=stored)
    assert other.info.mode == "full" and "tokenizer changed" in other.info.reason
    expected = by_part(curate(pl.concat([a, b]), filters), {"A": a, "B": b})
    for name in CURATION_FIELDS:
        assert_frame_equal(
            pl.concat([getattr(other.results[n], name) for n in "AB"]), getattr(expected, name)
        )


def test_a_drop_that_would_change_earlier_verdicts_falls_back_to_the_exact_path(
    tmp_path, rows, filters
):
    """The FLAN sample brings near duplicates of rows of other sources: appended after them,
    it changes earlier rows' verdicts in a full run (a kept row becomes a near duplicate, a
    reason names a closer link). The append path sees that and runs over every row."""
    a, b = rows.filter(pl.col("source") != "flan"), rows.filter(pl.col("source") == "flan")
    state = tmp_path / "state"
    conv = table(tmp_path / "conv", {"A": a})
    curate_parts(conv, filters, state)
    conv = table(tmp_path / "conv", {"A": a, "B": b}, base=conv)
    run = curate_parts(conv, filters, state, stored=[("A", "tag-A")])
    assert run.info.mode == "incremental" and run.info.rows_filtered == b.height
    assert "earlier" in run.info.reason
    assert list(run.results) == ["A", "B"]  # every part written again
    expected = by_part(curate(pl.concat([a, b]), filters), {"A": a, "B": b})
    for name in CURATION_FIELDS:
        assert_frame_equal(
            pl.concat([getattr(run.results[n], name) for n in "AB"]), getattr(expected, name)
        )


def test_a_new_row_joining_two_earlier_clusters_falls_back(tmp_path, filters):
    """Two earlier rows, each kept, and a new row close to both: a full run merges the two
    clusters (one kept row becomes a duplicate), so the append path must not decide alone."""
    words = [f"w{k}" for k in range(60)]
    left = " ".join(words[:40])
    right = " ".join(words[20:60])
    middle = " ".join(words[10:50])

    def row(i, answer):
        return {
            "id": i,
            "source": "chat",
            "source_id": i,
            "lang": "en",
            "messages": [
                {"role": "user", "content": "Say the words."},
                {"role": "assistant", "content": answer},
            ],
            "meta": "{}",
            "provenance": None,
        }

    a0 = pl.DataFrame([row("x", left), row("y", right)])
    template = curate(a0, filters).curated
    assert template.height == 2  # far apart: both kept
    dedup = filters[-1]
    import dataclasses

    loose = [*filters[:-1], dataclasses.replace(dedup, threshold=0.3, answer_threshold=None)]
    a = a0.cast(template.schema)
    conv = table(tmp_path / "conv", {"A": a})
    curate_parts(conv, loose, tmp_path / "state")
    bridge = pl.DataFrame([row("z", middle)]).cast(template.schema)
    conv = table(tmp_path / "conv", {"A": a, "B": bridge}, base=conv)
    run = curate_parts(conv, loose, tmp_path / "state", stored=[("A", "tag-A")])
    full = by_part(curate(pl.concat([a, bridge]), loose), {"A": a, "B": bridge})
    got = pl.concat([run.results[n].states for n in "AB"])
    assert_frame_equal(got, full.states)
    if run.info.mode != "append":
        assert "two earlier clusters" in run.info.reason or "bucket" in run.info.reason


def test_parts_manifest_is_written_last_and_names_every_file(tmp_path):
    folder = tmp_path / "t"
    one = pl.DataFrame({"id": ["a", "b"], "x": [1, 2]})
    first = write_parts(folder, PartUpdate([Part("p1", "t1", rows=2)], {"p1": one}))
    two = pl.DataFrame({"id": ["c"], "x": [3]})
    second = write_parts(
        folder, PartUpdate([Part("p1", "t1"), Part("p2", "t2", rows=1)], {"p2": two}, first)
    )
    # The first part's file is reused, not rewritten.
    assert second.parts[0].file == first.parts[0].file
    assert read_manifest(folder).read()["id"].to_list() == ["a", "b", "c"]
    names = json.loads((folder / MANIFEST).read_text())["parts"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [MANIFEST, *(n["file"] for n in names)]
    )
    # A crash after a part is written but before the manifest: readers see the old table.
    (folder / "p3-deadbeef.parquet").write_bytes(b"half a file")
    assert read_manifest(folder).read().height == 3
    assert np.array_equal(read_manifest(folder).read()["x"].to_numpy(), [1, 2, 3])
    assert PARTS_MANIFEST != MANIFEST
