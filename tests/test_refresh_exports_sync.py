"""The exported SFT and prompt sets hold exactly the curated set's kept rows after every refresh,
through Dagster on a real instance and real drops, also when a later drop changes an earlier
part's verdicts: a row of an earlier part becoming kept (a row delivered again with other
metadata leaves its first copy's part, and the copy an earlier drop had as its duplicate is
kept) and one becoming dropped (a drop ingested again brings the first copy of a later part's
row). An export part whose curated rows did not change is still reused, not written again."""

from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from test_refresh_assets import chat, write_jsonl

from assets.curate import DatasetConfig, _export_table
from assets.ingest import raw_drops
from assets.io_manager import PolarsParquetIOManager
from assets.partitions import DROPS
from assets.resources import StorageResource
from curation.datasets import export_parts, sft_rows
from curation.storage import Part, PartUpdate, read_manifest, write_parts
from pipelines.definitions import all_assets, all_checks, defs
from training.common import load_splits

WANTED = ("curated_conversations", "curation_ledger", "sft_dataset", "prompt_dataset")
EXPORTS = ("sft", "prompt")


def run(instance, drops: Path, out: Path, drop: str, selection) -> dg.ExecuteInProcessResult:
    if drop not in instance.get_dynamic_partitions(DROPS.name):
        instance.add_dynamic_partitions(DROPS.name, [drop])
    result = dg.materialize(
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
    assert result.success
    return result


def metadata(result, asset: str) -> dict:
    (event,) = [
        e.materialization
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == asset
    ]
    return {k: v.value for k, v in event.metadata.items()}


def curated_ids(out: Path) -> dict[str, set[str]]:
    """Kept row ids per curated part."""
    table = read_manifest(out / "curated_conversations")
    return {p.name: set(pl.read_parquet(table.path(p))["id"]) for p in table.parts}


def curated_questions(out: Path, part: str) -> list[str]:
    """The first turn of each kept row of one curated part (ids are hashed at ingest)."""
    table = read_manifest(out / "curated_conversations")
    frame = pl.read_parquet(table.path(table.by_name()[part]))
    return sorted(frame["messages"].list.first().struct.field("content"))


def exported_ids(out: Path, name: str) -> dict[str, set[str]]:
    """Row ids per exported part, both splits, from the files the manifest names."""
    table = read_manifest(out / "datasets" / name / "parts")
    return {
        p.name: set(pl.concat([pl.read_parquet(table.path(p, s)) for s in ("train", "test")])["id"])
        for p in table.parts
    }


def part_files(out: Path, name: str) -> dict[str, str]:
    return {p.name: p.file for p in read_manifest(out / "datasets" / name / "parts").parts}


def questions(prefix: str, count: int) -> list[str]:
    return [row["messages"][0]["content"] for row in chat(prefix, count)]


def assert_exports_match_curation(out: Path) -> None:
    curated = curated_ids(out)
    for name in EXPORTS:
        # Every curated row ends with an assistant turn after a user turn: both sets hold all.
        assert exported_ids(out, name) == curated, name


@pytest.fixture(scope="module")
def refreshes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exports_sync")
    drops, out, home = tmp / "drops", tmp / "out", tmp / "home"
    home.mkdir()
    first = chat("d1", 5)
    later = chat("b", 3)
    write_jsonl(drops / "d1" / "chat.jsonl", first)
    # d2: d1's texts without ids (positional ids: exact duplicates, dropped) and 3 new rows.
    write_jsonl(drops / "d2" / "chat.jsonl", [{"messages": r["messages"]} for r in first] + later)
    # The curated set, its two exports and what they are built from (no profile, no
    # preference branch: a drop of chats changes neither here).
    needed = dg.AssetSelection.assets(*WANTED).upstream()
    refresh = dg.AssetSelection.assets(raw_drops.key).downstream() & needed
    seen: dict = {"out": out}
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        run(instance, drops, out, "d1", needed)
        second = run(instance, drops, out, "d2", refresh)
        seen["d2"] = {
            "result": second,
            "curated": curated_ids(out),
            "questions": curated_questions(out, "drop=d2"),
            "files": {n: part_files(out, n) for n in EXPORTS},
        }
        assert_exports_match_curation(out)
        # d3: d1's rows again, same ids and texts, with other metadata: a newer version of
        # each (a verbatim copy would stay in d1's part), so they leave d1's part for d3's,
        # where they are duplicates of d2's copies, which are now the first and kept.
        write_jsonl(drops / "d3" / "chat.jsonl", [{**r, "meta": {"revision": 2}} for r in first])
        third = run(instance, drops, out, "d3", refresh)
        seen["d3"] = {
            "result": third,
            "curated": curated_ids(out),
            "questions": curated_questions(out, "drop=d2"),
            "exported": {n: exported_ids(out, n) for n in EXPORTS},
            "files": {n: part_files(out, n) for n in EXPORTS},
        }
        # d1 ingested again, now with d2's three new texts under other ids: they come first,
        # and d2's copies turn from kept to dropped.
        write_jsonl(
            drops / "d1" / "chat.jsonl", [{**r, "id": f"c-{i}"} for i, r in enumerate(later)]
        )
        fourth = run(instance, drops, out, "d1", refresh)
        seen["d1 again"] = {
            "result": fourth,
            "curated": curated_ids(out),
            "questions": {p: curated_questions(out, p) for p in ("drop=d1", "drop=d2")},
            "exported": {n: exported_ids(out, n) for n in EXPORTS},
        }
    return seen


def test_a_row_becoming_kept_in_an_earlier_part_is_exported(refreshes):
    before, after = refreshes["d2"], refreshes["d3"]
    assert before["questions"] == sorted(questions("b", 3))
    # An append exports the new drop's part only: the earlier parts' content is unchanged.
    assert metadata(before["result"], "curated_conversations")["mode"] == "append"
    for name in EXPORTS:
        assert metadata(before["result"], f"{name}_dataset")["parts_written"] == ["drop=d2"]
    curation = metadata(after["result"], "curated_conversations")
    assert curation["mode"] == "incremental"
    # d2's conversations part is unchanged, its curated rows are not: its five copies of
    # d1's texts are kept now, and the SFT and prompt sets hold them.
    gained = after["curated"]["drop=d2"] - before["curated"]["drop=d2"]
    assert len(gained) == 5 and after["curated"]["drop=d1"] == set()
    assert after["questions"] == sorted(questions("b", 3) + questions("d1", 5))
    for name in EXPORTS:
        assert after["exported"][name] == after["curated"], name
        assert gained <= after["exported"][name]["drop=d2"]
        # Only parts whose curated rows changed were exported again: the embedded sources'
        # part (curated again in the same incremental run) kept its files.
        written = metadata(after["result"], f"{name}_dataset")["parts_written"]
        assert written == ["drop=d1", "drop=d2", "drop=d3"], name
        unchanged = set(after["files"][name]) - set(written)
        assert unchanged and all(
            after["files"][name][p] == before["files"][name][p] for p in unchanged
        )


def test_a_row_becoming_dropped_in_an_earlier_part_leaves_the_exports(refreshes):
    before, after = refreshes["d3"], refreshes["d1 again"]
    assert metadata(after["result"], "curated_conversations")["mode"] == "incremental"
    lost = before["curated"]["drop=d2"] - after["curated"]["drop=d2"]
    assert len(lost) == 3
    assert after["questions"]["drop=d1"] == sorted(questions("b", 3))
    assert after["questions"]["drop=d2"] == sorted(questions("d1", 5))
    for name in EXPORTS:
        assert after["exported"][name] == after["curated"], name
        exported = set().union(*after["exported"][name].values())
        assert not lost & exported, name


def test_the_sets_training_loads_hold_every_kept_row_and_nothing_else(refreshes):
    """As training reads them (every split of every part the manifest names, as one set)."""
    after, out = refreshes["d1 again"], refreshes["out"]
    kept = set().union(*after["curated"].values())
    for name in EXPORTS:
        splits = load_splits(out / "datasets" / name)
        ids = [i for split in splits.values() for i in split["id"]]
        assert len(ids) == len(set(ids)) and set(ids) == kept, name


def test_parts_curated_before_content_tags_are_exported_again_once(tmp_path):
    """Exports made while parts were keyed on their conversations tag may be stale: a curated
    part without a ``content`` tag is named by its file, so the first export after the fix
    writes it again and the next one reuses it."""
    rows = pl.DataFrame(
        {
            "id": ["r-0", "r-1"],
            "source": ["jsonl", "jsonl"],
            "messages": [
                [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
                for i in range(2)
            ],
        }
    )
    table = write_parts(
        tmp_path / "curated",
        PartUpdate([Part("drop=d1", "conv-tag", rows=2, stats={})], {"drop=d1": rows}),
    )
    storage, config = StorageResource(base_dir=str(tmp_path)), DatasetConfig()
    # The old keying: the curated part's own tag.
    export_parts("sft", [(table.parts[0], lambda: rows)], tmp_path / "datasets")

    def export_now() -> dict:
        return _export_table("sft", table, sft_rows, storage, config, {}).metadata

    assert export_now()["parts_written"] == ["drop=d1"]
    assert export_now()["parts_written"] == []
