"""Incremental curation gives the full run's frames: on the embedded sources split into an old
part and a new drop that brings an exact and a near duplicate of old rows and a new version of
an old row (the kept copy of a duplicate pair, so an old verdict has to change), through the
pure API and through two Dagster materializations."""

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from assets.curate import curated_conversations
from assets.io_manager import PolarsParquetIOManager
from assets.profile import CachedTokenCounts, length_profile
from assets.resources import SAMPLES, StorageResource
from curation.curate import CurationResult, build_filters, curate
from curation.incremental import CurationState, curate_incremental, load_state, save_state
from curation.ingest import IngestResult, ingest
from curation.profile import profile
from curation.readers.text import read_text_corpus
from curation.storage import read_manifest, write_parquet
from curation.tokens import TokenCounter
from training.tokenizer import TokenizerConfig, corpus_texts, save_tokenizer, train_tokenizer

SOURCES = [
    ("oasst", ["oasst_trees.jsonl", "oasst_messages.jsonl"]),
    ("flan", ["flan.jsonl", "synthetic_flan.jsonl"]),
    ("hh", ["hh_rlhf.jsonl"]),
    ("ultrafeedback", ["ultrafeedback.jsonl", "synthetic_ultrafeedback.jsonl"]),
    ("jsonl", ["synthetic_chat.jsonl"]),
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(corpus_texts(SAMPLES / "pretrain.jsonl"), TokenizerConfig())


@pytest.fixture(scope="module")
def filters(tokenizer):
    return build_filters({}, TokenCounter(tokenizer))


@pytest.fixture(scope="module")
def data(filters):
    """(old rows A, A + a drop B, what B brings), as ``conversations`` combines drops: a row
    that comes again leaves its old place and takes its new one at the end."""
    rows = IngestResult.concat(
        [ingest(fmt, [SAMPLES / name for name in names]) for fmt, names in SOURCES]
    ).conversations
    old, later = rows.head(1400), rows.slice(1400)
    full_old = curate(old, filters)
    # An old exact-duplicate pair: its kept copy comes again with other content.
    exact = full_old.ledger.filter(pl.col("rule") == "duplicate.exact").row(0, named=True)
    kept_id = exact["reason"].split("exact duplicate of ")[1].split(" ")[0]
    replaced = old.filter(pl.col("id") == kept_id).with_columns(
        pl.col("messages").list.eval(
            pl.struct(
                pl.element().struct.field("role"),
                pl.element().struct.field("content") + " (second edition, revised)",
            )
        )
    )
    # A kept old row with a long answer: copied exactly, and with one word changed.
    long = (
        full_old.curated.filter(
            pl.col("messages").list.last().struct.field("content").str.len_chars() > 400
        )
        .filter(pl.col("id") != kept_id)
        .head(1)
    )
    copy = long.with_columns(pl.lit("drop-b-exact").alias("id"))
    near = long.with_columns(
        pl.lit("drop-b-near").alias("id"),
        pl.col("messages").list.eval(
            pl.struct(
                pl.element().struct.field("role"),
                pl.element().struct.field("content").str.replace(" the ", " a "),
            )
        ),
    )
    drop = pl.concat([later, replaced, copy, near])
    combined = pl.concat([old.filter(pl.col("id") != kept_id), drop])
    facts = {
        "old_duplicate": exact["row_id"],
        "replaced": kept_id,
        "original": long["id"][0],
        "drop_rows": drop.height,
    }
    return old, combined, facts


def assert_same(result: CurationResult, expected: CurationResult) -> None:
    for name in ("curated", "ledger", "states"):
        assert_frame_equal(getattr(result, name), getattr(expected, name))


def refreshed(tmp_path, data, filters) -> tuple[CurationResult, CurationState, object]:
    old, combined, _ = data
    first, state, run = curate_incremental(old, filters, None, context="tok")
    assert run.mode == "full" and "no state" in run.reason
    assert_same(first, curate(old, filters))
    save_state(state, tmp_path / "state")
    return curate_incremental(combined, filters, load_state(tmp_path / "state"), context="tok")


def test_a_drop_costs_its_own_rows_and_gives_the_full_runs_frames(tmp_path, data, filters):
    old, combined, facts = data
    result, state, run = refreshed(tmp_path, data, filters)
    assert run.mode == "incremental"
    assert run.rows_filtered == facts["drop_rows"]
    assert 0 < run.rows_signed <= facts["drop_rows"]
    expected = curate(combined, filters)
    assert_same(result, expected)

    states = dict(result.states.select("row_id", "rule").iter_rows())
    reasons = dict(result.states.select("row_id", "reason").iter_rows())
    assert states["drop-b-exact"] == "duplicate.exact"
    assert facts["original"] in reasons["drop-b-exact"]
    assert states["drop-b-near"] == "duplicate.near"
    # The old duplicate's kept copy was replaced by other content: the old row is kept now.
    assert states[facts["old_duplicate"]] is None
    assert states[facts["replaced"]] is None
    # The state holds every current row once, signatures beside the rows dedup saw.
    assert state.rows.height == combined.height
    assert state.signatures.shape == (128, state.dedup.height)


def test_removed_rows_and_a_second_refresh_stay_exact(tmp_path, data, filters):
    _, combined, _ = data
    _, state, _ = refreshed(tmp_path, data, filters)
    save_state(state, tmp_path / "state")
    # Rows removed (among them kept copies of duplicates) and the rest in another order.
    fewer = combined.filter(pl.int_range(pl.len()) % 7 != 3).reverse()
    result, _, run = curate_incremental(fewer, filters, load_state(tmp_path / "state"), "tok")
    assert run.mode == "incremental" and run.rows_filtered == 0
    assert_same(result, curate(fewer, filters))


def test_config_code_or_tokenizer_changes_run_full(tmp_path, data, filters, tokenizer):
    _, combined, _ = data
    _, state, _ = refreshed(tmp_path, data, filters)
    stricter = build_filters({"duplicates": {"threshold": 0.8}}, TokenCounter(tokenizer))
    result, _, run = curate_incremental(combined, stricter, state, context="tok")
    assert run.mode == "full" and "config" in run.reason
    assert run.rows_filtered == combined.height
    assert_same(result, curate(combined, stricter))
    _, _, run = curate_incremental(combined, filters, state, context="another tokenizer")
    assert run.mode == "full"


def test_what_the_memoised_path_does_not_cover_runs_curate(data, filters):
    old, _, _ = data
    # Messages of another struct layout: the cast and its verdicts concern the whole column.
    odd = old.head(50).with_columns(
        pl.col("messages").list.eval(
            pl.struct(pl.element().struct.field("content"), pl.element().struct.field("role"))
        )
    )
    result, state, run = curate_incremental(odd, filters, None)
    assert (run.mode, state) == ("full", None) and "canonical" in run.reason
    assert_same(result, curate(odd, filters))
    reordered = [filters[-1], *filters[:-1]]
    result, state, run = curate_incremental(old.head(50), reordered, None)
    assert (run.mode, state) == ("full", None) and "last" in run.reason


def test_an_unreadable_state_means_a_full_run(tmp_path, data, filters):
    old, _, _ = data
    _, state, _ = curate_incremental(old.head(100), filters, None)
    folder = save_state(state, tmp_path / "state")
    assert load_state(tmp_path / "state") is not None
    (folder / "rows.parquet").write_bytes(b"not parquet")
    assert load_state(tmp_path / "state") is None
    assert load_state(tmp_path / "elsewhere") is None


def test_token_counts_are_reused_and_equal_the_tokenizers(tmp_path, data, tokenizer):
    old, combined, _ = data
    texts = old["messages"].list.eval(pl.element().struct.field("content")).explode().to_list()
    more = combined["messages"].list.eval(pl.element().struct.field("content")).explode()
    plain = TokenCounter(tokenizer)
    first = CachedTokenCounts(plain, tmp_path, "tok")
    assert first(texts) == plain(texts) and first.counted == len(texts)
    first.save()
    second = CachedTokenCounts(plain, tmp_path, "tok")
    assert second(more.to_list()) == plain(more.to_list())
    # Only texts the first run had not seen were tokenized.
    seen = set(texts)
    assert second.counted == sum(t not in seen for t in more.to_list()) > 0
    assert CachedTokenCounts(plain, tmp_path, "other tokenizer").cache.is_empty()


def test_two_materializations_second_is_incremental(tmp_path, data, filters, tokenizer):
    old, combined, facts = data
    out = tmp_path / "out"
    save_tokenizer(tokenizer, out / "project_tokenizer")
    pretrain = read_text_corpus([SAMPLES / "pretrain.jsonl"], "pretrain").texts
    write_parquet(pretrain, out / "pretrain_corpus.parquet")
    assets = [
        curated_conversations,
        length_profile,
        dg.AssetSpec("conversations"),
        dg.AssetSpec("pretrain_corpus"),
        dg.AssetSpec("project_tokenizer"),
    ]
    resources = {
        "io_manager": PolarsParquetIOManager(base_dir=str(out)),
        "storage": StorageResource(base_dir=str(out)),
    }
    home = tmp_path / "home"
    home.mkdir()
    runs = []
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        for frame in (old, combined):
            write_parquet(frame, out / "conversations.parquet")
            result = dg.materialize(
                assets,
                selection=["curated_conversations", "curation_ledger", "length_profile"],
                instance=instance,
                resources=resources,
            )
            assert result.success
            meta = [
                *result.asset_materializations_for_node("curated_conversations"),
                *result.asset_materializations_for_node("length_profile"),
            ]
            runs.append({m.asset_key.path[0]: m.metadata for m in meta})
    first, second = (r["curated_conversations"] for r in runs)
    assert first["mode"].value == "full"
    # The input is one whole file that changed: every row runs, unchanged ones reused.
    assert second["mode"].value == "incremental"
    assert second["rows_filtered"].value == facts["drop_rows"]
    expected = curate(combined, filters)
    assert_frame_equal(read_manifest(out / "curated_conversations").read(), expected.curated)
    ledger = read_manifest(out / "curation_ledger")
    assert_frame_equal(ledger.read("ledger"), expected.ledger)
    assert_frame_equal(ledger.read("states"), expected.states)

    # The profile tokenized only the drop's texts the second time, and its stats are a full
    # profile's.
    def texts(frame):
        return frame["messages"].list.eval(pl.element().struct.field("content")).explode()

    seen = set(texts(old).to_list()) | set(pretrain["text"].to_list())
    assert runs[0]["length_profile"]["texts_tokenized"].value > 5000
    assert runs[1]["length_profile"]["texts_tokenized"].value == sum(
        t not in seen for t in texts(combined).to_list()
    )
    stats = profile(combined, TokenCounter(tokenizer), texts=pretrain).stats
    assert_frame_equal(pl.read_parquet(out / "length_profile.parquet"), stats)


def test_an_exact_key_shared_by_different_texts_falls_back_to_curate(data, filters, monkeypatch):
    from curation import incremental

    old, _, _ = data
    monkeypatch.setattr(incremental, "_exact", lambda *args: None)
    result, state, run = curate_incremental(old, filters, None)
    assert (run.mode, state) == ("full", None) and "exact-duplicate key" in run.reason
    assert_same(result, curate(old, filters))
