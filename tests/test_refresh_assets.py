"""A refresh through Dagster on a real instance: two drops, the second curated alone. The
combined tables and the curation outputs are one Parquet part per drop; the refresh writes the
new drop's parts only, leaves the first drop's files as they were, its checks read parts and
stored counts, and what it stores equals one full ``curate`` over every row."""

import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from assets.curate import (
    CurationConfig,
    _check_keys,
    filter_mapping,
    no_exact_duplicates_left,
    rows_are_conserved,
)
from assets.ingest import raw_drops
from assets.io_manager import PolarsParquetIOManager
from assets.partitions import DROPS
from assets.resources import StorageResource
from curation.curate import build_filters, curate
from curation.profile import profile
from curation.storage import Part, PartUpdate, read_manifest, write_parts
from curation.tokens import TokenCounter
from pipelines.definitions import all_assets, all_checks, defs
from training.tokenizer import load_tokenizer

GROUPS = ("ingest", "profile", "curate")
CURATION = ("curated_conversations", "curation_ledger", "curated_preferences", "conversations")


def chat(prefix: str, count: int, extra: list[dict] | None = None) -> list[dict]:
    rows = [
        {
            "id": f"{prefix}-{i}",
            "messages": [
                {"role": "user", "content": f"Drop {prefix}, question {i}: name a colour {i}."},
                {
                    "role": "assistant",
                    "content": f"Colour number {i} of drop {prefix} is a shade of "
                    f"{['red', 'green', 'blue', 'teal'][i % 4]} with tone {i * 7}.",
                },
            ],
        }
        for i in range(count)
    ]
    return rows + (extra or [])


def hh_pair(topic: str) -> dict:
    question = f"\n\nHuman: How do I look after a {topic}?"
    return {
        "chosen": f"{question}\n\nAssistant: Water it weekly and give it light.",
        "rejected": f"{question}\n\nAssistant: No idea.",
    }


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def run(instance, drops: Path, out: Path, drop: str, selection) -> dg.ExecuteInProcessResult:
    instance.add_dynamic_partitions(DROPS.name, [drop])
    return dg.materialize(
        [*all_assets, *all_checks],
        selection=selection,
        partition_key=drop,
        instance=instance,
        resources={
            **defs.resources,
            "io_manager": PolarsParquetIOManager(base_dir=str(out)),
            "storage": StorageResource(base_dir=str(out)),
        },
        run_config={"ops": {"raw_drops": {"config": {"root": str(drops)}}}},
    )


def files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*.parquet")}


@pytest.fixture(scope="module")
def refreshed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("refresh")
    drops, out = tmp / "drops", tmp / "out"
    first_rows = chat("d1", 30)
    write_jsonl(drops / "d1" / "chat.jsonl", first_rows)
    # d2: new rows, an exact copy of a d1 row and a d1 row with two words added.
    near = json.loads(json.dumps(first_rows[3]))
    near["id"] = "d2-near"
    near["messages"][1]["content"] += " Truly so."
    exact = {**first_rows[5], "id": "d2-exact"}
    write_jsonl(drops / "d2" / "chat.jsonl", chat("d2", 6, [exact, near]))
    home = tmp / "home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        first = run(instance, drops, out, "d1", dg.AssetSelection.groups(*GROUPS))
        before = {name: files(out / name) for name in CURATION}
        downstream = dg.AssetSelection.assets(raw_drops.key).downstream()
        second = run(instance, drops, out, "d2", downstream & dg.AssetSelection.groups(*GROUPS))
        after_second = {name: files(out / name) for name in CURATION}
        # d3 delivers a new version of a d1 row (same id): d1's part loses it.
        newer = json.loads(json.dumps(first_rows[7]))
        newer["messages"][1]["content"] = "A second edition of this answer, with more detail."
        write_jsonl(drops / "d3" / "chat.jsonl", [newer])
        third = run(instance, drops, out, "d3", downstream & dg.AssetSelection.groups(*GROUPS))
    return first, second, before, out, after_second, third


def metadata(result, asset: str) -> dict:
    (event,) = [
        e.materialization
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == asset
    ]
    return {k: v.value for k, v in event.metadata.items()}


def test_the_refresh_writes_the_new_drops_parts_only(refreshed):
    first, second, before, out, after_second, _ = refreshed
    assert first.success and second.success
    conversations = metadata(second, "conversations")
    assert conversations["combine"] == "append" and conversations["parts_written"] == ["drop=d2"]
    curated = metadata(second, "curated_conversations")
    assert curated["mode"] == "append", curated["mode_reason"]
    assert curated["parts_written"] == ["drop=d2"]
    # Only the drop's 8 rows went through the filters and got dedup signatures.
    assert curated["rows_filtered"] == 8 and curated["rows_signed"] <= 8
    # d2 has no comparisons: the comparison table is not written again, and the preference
    # branch (curated_preferences, preference_dataset) does not run.
    materialized = {e.asset_key.to_user_string() for e in second.get_asset_materialization_events()}
    assert not materialized & {"preferences_human", "curated_preferences", "preference_dataset"}
    # The profile measured the drop's 8 conversations (16 messages) and nothing else.
    profile = metadata(second, "length_profile")
    assert profile["parts_measured"] == ["drop=d2"] and profile["texts_tokenized"] <= 16
    # The pretraining corpus' counts were read back (one file, named by its texts' digest).
    state = out / "profile_state" / "length_profile"
    assert len(list(state.glob("text_counts.*.parquet"))) == 1
    for name in CURATION:
        after = after_second[name]
        # Every file of the first run is still there, untouched; the new ones are d2's.
        assert {k: after[k] for k in before[name]} == before[name]
        assert all(k.startswith("drop_d2-") for k in set(after) - set(before[name]))
        if name != "curated_preferences":  # no drop before d4 has comparisons
            assert [p.name for p in read_manifest(out / name).parts][:3] == [
                "sources",
                "drop=d1",
                "drop=d2",
            ]


def test_every_check_passes_on_parts(refreshed):
    _, second, _, out, _, _ = refreshed
    evaluations = second.get_asset_check_evaluations()
    checks = {e.check_name: e.passed for e in evaluations}
    assert checks == {
        "rows_are_conserved": True,
        "curated_schema_and_size": True,
        "no_exact_duplicates_left": True,
        "residual_flags": True,
    }
    # The checks judged the tables the step had just stored (every part, d2's included).
    (conserved,) = [e for e in evaluations if e.check_name == "rows_are_conserved"]
    meta = {k: v.value for k, v in conserved.metadata.items()}
    curated = read_manifest(out / "curated_conversations")
    assert meta["parts"] == 3 and meta["curated"] == curated.rows
    assert meta["in"] == read_manifest(out / "conversations").rows


def test_a_refresh_of_chats_runs_six_steps(refreshed):
    """The curated set's checks run inside curated_conversations' step, the three combined
    tables are one step, and a drop without comparisons skips the preference branch: each step
    costs Dagster's floor whatever it does."""
    _, second, _, _, _, _ = refreshed
    steps = sorted(e.step_key for e in second.all_events if e.event_type_value == "STEP_SUCCESS")
    assert steps == [
        "combined_tables",
        "curated_conversations",
        "length_profile",
        "prompt_dataset",
        "raw_drops",
        "sft_dataset",
    ]
    materialized = {e.asset_key.to_user_string() for e in second.get_asset_materialization_events()}
    assert {"conversations", "ingest_rejects", "curation_ledger"} <= materialized
    skipped = {e.step_key for e in second.all_events if e.event_type_value == "STEP_SKIPPED"}
    assert skipped == {"curated_preferences", "preference_dataset"}


def test_a_drop_of_comparisons_appends_after_drops_without_any(tmp_path):
    drops, out, home = tmp_path / "drops", tmp_path / "out", tmp_path / "home"
    write_jsonl(drops / "d1" / "chat.jsonl", chat("d1", 4))
    write_jsonl(drops / "d2" / "hh.jsonl", [hh_pair("fern"), hh_pair("cactus")])
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        assert run(instance, drops, out, "d1", dg.AssetSelection.groups(*GROUPS)).success
        downstream = dg.AssetSelection.assets(raw_drops.key).downstream()
        second = run(instance, drops, out, "d2", downstream & dg.AssetSelection.groups(*GROUPS))
    assert second.success
    # d1 (chats only) added no part to the comparisons: d2's is appended after the sources'.
    preferences = metadata(second, "preferences_human")
    assert preferences["combine"] == "append" and preferences["parts_written"] == ["drop=d2"]
    table = read_manifest(out / "preferences_human")
    assert [p.name for p in table.parts] == ["sources", "drop=d2"]
    assert table.by_name()["drop=d2"].rows == 2
    materialized = {e.asset_key.to_user_string() for e in second.get_asset_materialization_events()}
    assert {"curated_preferences", "preference_dataset"} <= materialized


def test_the_stored_outputs_and_profile_equal_one_full_run(refreshed):
    _, _, _, out, _, _ = refreshed
    conversations = read_manifest(out / "conversations")
    tokenizer = load_tokenizer(out / "project_tokenizer")
    filters = build_filters(filter_mapping(CurationConfig()), TokenCounter(tokenizer))
    expected = curate(conversations.read(), filters)
    part_of = pl.concat(
        [
            pl.read_parquet(conversations.path(p), columns=["id"]).with_columns(part=pl.lit(k))
            for k, p in enumerate(conversations.parts)
        ]
    ).rename({"id": "row_id"})

    def by_part(frame):
        return (
            frame.join(part_of, on="row_id", how="left", maintain_order="left")
            .sort("part", maintain_order=True)
            .drop("part")
        )

    ledger = read_manifest(out / "curation_ledger")
    assert_frame_equal(read_manifest(out / "curated_conversations").read(), expected.curated)
    assert_frame_equal(ledger.read("ledger"), by_part(expected.ledger))
    assert_frame_equal(ledger.read("states"), by_part(expected.states))
    pretrain = pl.read_parquet(out / "pretrain_corpus.parquet")
    stats = profile(conversations.read(), TokenCounter(tokenizer), texts=pretrain).stats
    assert_frame_equal(pl.read_parquet(out / "length_profile.parquet"), stats)
    source_ids = conversations.read().select(pl.col("id").alias("row_id"), "source_id")
    states = dict(expected.states.join(source_ids, on="row_id").select("source_id", "rule").rows())
    assert states["d2-exact"] == "duplicate.exact" and states["d2-near"] == "duplicate.near"


def test_a_drop_replacing_an_earlier_row_rebuilds_parts_and_says_why(refreshed):
    _, _, _, out, _, third = refreshed
    assert third.success
    conversations = metadata(third, "conversations")
    assert conversations["combine"] == "rebuild" and conversations["replaced_by_later_drop"] == 1
    curated = metadata(third, "curated_conversations")
    assert curated["mode"] == "incremental" and "earlier part changed" in curated["mode_reason"]
    # The row is d3's now, once; d1's part no longer holds it.
    table = read_manifest(out / "conversations")
    rows = table.read().filter(pl.col("source_id") == "d1-7")
    assert rows.height == 1 and "second edition" in rows["messages"][0][1]["content"]
    assert table.by_name()["drop=d1"].tag.split("|")[1].startswith("minus 1 ")


def stored(folder: Path, frames: dict, members: tuple[str, ...] = ()):
    """A table of one part per entry of ``frames``, written as the IO manager writes one."""
    parts = [Part(name, "t", rows=_height(f)) for name, f in frames.items()]
    return write_parts(folder, PartUpdate(parts, frames, None, members))


def _height(frames) -> int:
    return frames.height if isinstance(frames, pl.DataFrame) else frames["keys"].height


def test_the_checks_in_the_step_fail_on_a_duplicate_left_and_unconserved_rows(tmp_path):
    rows = [
        {"id": "a", "messages": [{"role": "user", "content": "Same words."}]},
        {"id": "b", "messages": [{"role": "user", "content": "Other words."}]},
        {"id": "c", "messages": [{"role": "user", "content": "same   words."}]},
    ]
    frame = pl.DataFrame(rows)
    parts = {"p1": frame[:2], "p2": frame[2:]}
    curated = stored(tmp_path / "curated", parts)
    ledger = stored(
        tmp_path / "ledger", {k: {"keys": _check_keys(f)} for k, f in parts.items()}, ("keys",)
    )
    left = no_exact_duplicates_left(curated, ledger)
    assert not left.passed and left.metadata["duplicates"].value == 1
    clean = stored(tmp_path / "clean", {"p1": frame[:2]})
    clean_keys = stored(
        tmp_path / "clean_keys", {"p1": {"keys": _check_keys(frame[:2])}}, ("keys",)
    )
    assert no_exact_duplicates_left(clean, clean_keys).passed
    # A part whose stored counts do not add up fails the (blocking) conservation check.
    conversations = stored(tmp_path / "conversations", {"p1": frame[:2]})
    conserved = rows_are_conserved(clean, clean_keys, conversations)
    assert not conserved.passed and conserved.metadata["parts_not_conserved"].value == ["p1"]
