"""A drop that delivers rows an earlier drop already holds, unchanged, adds nothing: the rows
stay in the earlier drop's part, curation appends an empty part, and the exported datasets keep
their data versions (so nothing retrains). A row delivered again with other content moves to
the later drop, as before. ``without_later_ids`` on small frames, then through Dagster on a real
instance with real drops: d1; d1's folder copied as a new drop; d1's rows again with one of
them changed. Conversations come from a chat file, comparisons from an OpenAssistant tree file
(the sources' own ids, so a re-delivery reuses them in both tables)."""

import json
import re
import shutil
import uuid
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from test_refresh_assets import GROUPS, chat, metadata, run, write_jsonl

from assets.ingest import raw_drops
from assets.partitions import without_later_ids
from assets.resources import SAMPLES
from curation.storage import read_manifest

EXPORTS = ("sft_dataset", "prompt_dataset", "preference_dataset")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def part(rows: list[tuple[str, str]], file: str) -> pl.DataFrame:
    """A part of (id, text) rows, read from ``file``: provenance differs between parts."""
    return pl.DataFrame(
        [
            {
                "id": row_id,
                "messages": [{"role": "user", "content": text}],
                "meta": "{}",
                "provenance": {"file": file, "line": line},
            }
            for line, (row_id, text) in enumerate(rows, start=1)
        ]
    )


def held(parts: list[pl.DataFrame]) -> list[list[tuple[str, str]]]:
    return [
        list(zip(p["id"], p["messages"].list.first().struct.field("content"), strict=True))
        for p in parts
    ]


def test_an_unchanged_row_stays_in_its_first_part_and_a_changed_one_moves():
    d1 = part([("a", "one"), ("b", "two"), ("c", "three")], "d1/chat.jsonl")
    copy = part([("a", "one"), ("b", "two"), ("c", "three")], "d2/chat.jsonl")
    verbatim = without_later_ids([d1, copy])
    assert held(verbatim.parts) == [held([d1])[0], []]
    assert (verbatim.replaced, verbatim.redelivered) == (0, 3)

    changed = part([("a", "one"), ("b", "TWO, revised"), ("c", "three")], "d2/chat.jsonl")
    moved = without_later_ids([d1, changed])
    assert held(moved.parts) == [[("a", "one"), ("c", "three")], [("b", "TWO, revised")]]
    assert (moved.replaced, moved.redelivered) == (1, 2)

    # A third drop repeating the second's content but for "c": "a" stays where it first came,
    # "b" where its latest content first came, "c" (changed now) moves to the third.
    third = part([("a", "one"), ("b", "TWO, revised"), ("c", "three, again")], "d3/chat.jsonl")
    result = without_later_ids([d1, changed, third])
    assert held(result.parts) == [
        [("a", "one")],
        [("b", "TWO, revised")],
        [("c", "three, again")],
    ]
    # Replaced: d1's b, both earlier c; redelivered: a twice, b once.
    assert (result.replaced, result.redelivered) == (3, 3)
    # Parts one refresh at a time decide as all at once: d1 and the second part as kept, then
    # the third against them.
    stepwise = without_later_ids([pl.concat(moved.parts), third])
    assert stepwise.parts[0].height == 2 and held(stepwise.parts)[1] == [("c", "three, again")]


def test_another_meta_is_a_change_and_a_part_without_repeats_is_returned_as_is():
    d1 = part([("a", "one")], "d1/chat.jsonl")
    relabelled = part([("a", "one")], "d2/chat.jsonl").with_columns(meta=pl.lit('{"v": 2}'))
    result = without_later_ids([d1, relabelled])
    assert [p.height for p in result.parts] == [0, 1] and result.replaced == 1
    other = part([("z", "new")], "d2/chat.jsonl")
    alone = without_later_ids([d1, other])
    assert alone.parts[0] is d1 and alone.parts[1] is other
    assert (alone.replaced, alone.redelivered) == (0, 0)


def oasst_trees(count: int) -> list[dict]:
    """The first sample trees under new message ids: rows of this drop only, not the embedded
    sample's (the pairs OpenAssistant's sibling ranks give keep these ids)."""
    lines = (SAMPLES / "oasst_trees.jsonl").read_text(encoding="utf-8").splitlines()[:count]
    fresh = [UUID.sub(lambda m: str(uuid.uuid5(uuid.NAMESPACE_URL, m[0])), x) for x in lines]
    return [json.loads(x) for x in fresh]


def versions(instance) -> dict[str, str | None]:
    found = {}
    for name in EXPORTS:
        event = instance.get_latest_materialization_event(dg.AssetKey(name))
        found[name] = event.asset_materialization.tags.get("dagster/data_version")
    return found


def rows_by_part(out: Path, name: str) -> dict[str, pl.DataFrame]:
    table = read_manifest(out / name)
    return {p.name: pl.read_parquet(table.path(p)) for p in table.parts}


@pytest.fixture(scope="module")
def redelivered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("redelivery")
    drops, out, home = tmp / "drops", tmp / "out", tmp / "home"
    home.mkdir()
    rows = chat("d1", 12)
    write_jsonl(drops / "d1" / "chat.jsonl", rows)
    write_jsonl(drops / "d1" / "oasst_trees.jsonl", oasst_trees(4))
    # The exports and what they are built from, short of training (the preference set's
    # feedback pairs come from a checkpoint; without them it is the sources' pairs). Not the
    # length profile: another branch, which a drop's rows reach the same way.
    needed = dg.AssetSelection.assets(*EXPORTS).upstream() & dg.AssetSelection.groups(*GROUPS)
    refresh = dg.AssetSelection.assets(raw_drops.key).downstream() & needed
    seen: dict = {"out": out}
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        assert run(instance, drops, out, "d1", needed).success
        seen["d1"] = {
            "versions": versions(instance),
            "conversations": rows_by_part(out, "conversations"),
            "preferences": rows_by_part(out, "preferences_human"),
        }
        # d1's folder copied byte for byte into a new drop.
        shutil.copytree(drops / "d1", drops / "copy")
        copied = run(instance, drops, out, "copy", refresh)
        seen["copy"] = {
            "result": copied,
            "versions": versions(instance),
            "conversations": rows_by_part(out, "conversations"),
            "preferences": rows_by_part(out, "preferences_human"),
        }
        # d1's rows again, one of them with another answer under its id.
        revised = json.loads(json.dumps(rows))
        revised[4]["messages"][1]["content"] = "A revised answer: colour four is a deep teal."
        write_jsonl(drops / "revised" / "chat.jsonl", revised)
        changed = run(instance, drops, out, "revised", refresh)
        seen["revised"] = {
            "result": changed,
            "versions": versions(instance),
            "conversations": rows_by_part(out, "conversations"),
        }
    return seen


def test_a_copied_drop_leaves_every_row_in_the_first_drops_part(redelivered):
    before, after = redelivered["d1"], redelivered["copy"]
    assert after["result"].success
    for table in ("conversations", "preferences"):
        first = before[table]["drop=d1"]
        assert first.height > 0, table
        # The copy's part is there (the drop was combined) and holds nothing; d1's is as it was.
        assert after[table]["drop=copy"].height == 0, table
        assert after[table]["drop=d1"].equals(first), table
        name = "conversations" if table == "conversations" else "preferences_human"
        combine = metadata(after["result"], name)
        assert combine["combine"] == "append", table
        assert (combine["replaced_by_later_drop"], combine["redelivered"]) == (0, first.height)
    chats = pl.concat(after["conversations"].values()).filter(pl.col("source") == "chat")
    assert chats.height == 12 and chats["id"].n_unique() == 12
    assert before["conversations"]["drop=d1"].filter(pl.col("source") == "chat").height == 12


def test_a_copied_drop_curates_nothing_and_keeps_the_datasets_versions(redelivered):
    before, after = redelivered["d1"], redelivered["copy"]
    curated = metadata(after["result"], "curated_conversations")
    assert curated["mode"] == "append", curated["mode_reason"]
    assert curated["rows_filtered"] == 0 and curated["parts_written"] == ["drop=copy"]
    preferences = metadata(after["result"], "curated_preferences")
    assert preferences["mode"] == "kept; new parts have no pairs"
    assert after["versions"] == before["versions"]
    assert all(after["versions"].values())


def test_a_row_with_new_content_moves_to_the_later_drop_and_the_rest_stay(redelivered):
    before, after = redelivered["copy"], redelivered["revised"]
    assert after["result"].success
    combine = metadata(after["result"], "conversations")
    assert combine["combine"] == "rebuild"
    # Counted over every part it built: d1-4's old content in d1 and in the copy replaced; the
    # copy's other 15 conversations (11 chats, 4 OpenAssistant) and the new drop's other 11
    # chats redelivered.
    assert (combine["replaced_by_later_drop"], combine["redelivered"]) == (2, 15 + 11)
    moved = after["conversations"]["drop=revised"]
    assert moved["source_id"].to_list() == ["d1-4"]
    assert "revised answer" in moved["messages"][0][1]["content"]
    stayed = after["conversations"]["drop=d1"]
    assert stayed.height == 16 - 1 and "d1-4" not in stayed["source_id"].to_list()
    assert stayed.equals(before["conversations"]["drop=d1"].filter(pl.col("source_id") != "d1-4"))
    # d1's part changed, so every row was curated again; the new answer is a new SFT row.
    curated = metadata(after["result"], "curated_conversations")
    assert curated["mode"] == "incremental", curated["mode_reason"]
    for name in ("sft_dataset", "prompt_dataset"):
        assert after["versions"][name] != before["versions"][name], name
