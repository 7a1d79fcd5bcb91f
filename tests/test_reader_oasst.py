"""OpenAssistant reader: both shapes, best-ranked threads, human pairs, exclusions, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from curation.errors import SourceError
from curation.ingest import ReadOptions, ingest
from curation.readers.oasst import detect_shape, read_oasst
from curation.schema import CONVERSATIONS, LEDGER, PREFERENCES, REJECTED, stable_id

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"


def msg(
    message_id: str,
    parent_id: str | None,
    role: str,
    tree: str = "t1",
    rank: int | None = None,
    **extra: object,
) -> dict:
    """One flat-export message with OpenAssistant's field names and defaults."""
    return {
        "message_id": message_id,
        "parent_id": parent_id,
        "message_tree_id": tree,
        "role": role,
        "text": f"text of {message_id}",
        "lang": "en",
        "rank": rank,
        "review_result": True,
        "deleted": False,
        "synthetic": False,
        "labels": None,
        "detoxify": None,
        "tree_state": "ready_for_export",
        "user_id": "ignored",
        **extra,
    }


def tree_one() -> list[dict]:
    """p1 -> {a1 r1, a2 r0 -> p2 -> a3, a4 r2, a5 r3 deleted -> p3, a6 failed review}."""
    return [
        msg(
            "p1",
            None,
            "prompter",
            labels={"name": ["quality", "spam"], "value": [0.9, 0.0], "count": [3, 3]},
        ),
        msg("a1", "p1", "assistant", rank=1),
        msg("a2", "p1", "assistant", rank=0, detoxify={"toxicity": 0.01}),
        msg("p2", "a2", "prompter"),
        msg("a3", "p2", "assistant", labels={"name": ["quality"], "value": [0.7], "count": [2]}),
        msg("a4", "p1", "assistant", rank=2),
        msg("a5", "p1", "assistant", rank=3, deleted=True),
        msg("p3", "a5", "prompter"),
        msg("a6", "p1", "assistant", review_result=False),
    ]


def other_trees() -> list[dict]:
    return [
        # t2 (German) ends on a prompter turn, which the thread drops.
        msg("q1", None, "prompter", tree="t2", lang="de"),
        msg("b1", "q1", "assistant", tree="t2", lang="de"),
        msg("q2", "b1", "prompter", tree="t2", lang="de"),
        # t3 was aborted by grading: the whole tree is excluded.
        msg("r1", None, "prompter", tree="t3", tree_state="aborted_low_grade"),
        msg("s1", "r1", "assistant", tree="t3", tree_state="aborted_low_grade"),
        # t4 has a spam label on its root.
        msg("u1", None, "prompter", tree="t4", labels={"name": ["spam"], "value": [0.8]}),
        msg("v1", "u1", "assistant", tree="t4"),
        # t5: a prompt nobody answered: valid, unused.
        msg("w1", None, "prompter", tree="t5"),
        # t7: several unranked replies: the first read is followed, no pairs.
        msg("x0", None, "prompter", tree="t7"),
        msg("x1", "x0", "assistant", tree="t7"),
        msg("x2", "x0", "assistant", tree="t7"),
    ]


def all_messages() -> list[dict]:
    return tree_one() + other_trees()


def write_jsonl(path: Path, rows: list[dict | str]) -> Path:
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def nest(messages: list[dict]) -> list[dict]:
    """The trees export of flat messages: replies nested, labels as {name: {value, count}}."""
    nodes: dict[str, dict] = {}
    trees: list[dict] = []
    for m in messages:
        node = {k: v for k, v in m.items() if k not in {"message_tree_id", "tree_state"}}
        labels = m["labels"]
        if labels is not None:
            counts = labels.get("count") or [None] * len(labels["name"])
            node["labels"] = {
                n: {"value": v, "count": c}
                for n, v, c in zip(labels["name"], labels["value"], counts, strict=True)
            }
        node["replies"] = []
        nodes[m["message_id"]] = node
        if m["parent_id"] is None:
            trees.append(
                {
                    "message_tree_id": m["message_tree_id"],
                    "tree_state": m["tree_state"],
                    "prompt": node,
                }
            )
        else:
            nodes[m["parent_id"]]["replies"].append(node)
    return trees


def read(*paths: Path, source: str | None = None):
    return read_oasst(list(paths), ReadOptions(source=source))


def by_source_id(result) -> dict[str, dict]:
    return {row["source_id"]: row for row in result.conversations.iter_rows(named=True)}


def dropped(result) -> dict[str, tuple[str, str]]:
    """stable row id -> (rule, reason) of the ingest ledger."""
    rows = result.ledger.iter_rows(named=True)
    return {r["row_id"]: (r["rule"], r["reason"]) for r in rows if r["verdict"] == "drop"}


def row_id(message_id: str) -> str:
    return stable_id("oasst", message_id)


# --- Both shapes give the same result -------------------------------------------------------------


@pytest.fixture(params=["flat", "trees"])
def fixture_file(request, tmp_path: Path) -> Path:
    rows = all_messages() if request.param == "flat" else nest(all_messages())
    return write_jsonl(tmp_path / f"oasst_{request.param}.jsonl", rows)


def test_shape_is_detected(fixture_file: Path) -> None:
    assert detect_shape(fixture_file) == fixture_file.stem.removeprefix("oasst_")


def test_schemas_are_canonical(fixture_file: Path) -> None:
    result = read(fixture_file)
    assert result.conversations.schema == CONVERSATIONS
    assert result.preferences.schema == PREFERENCES
    assert result.rejected.schema == REJECTED
    assert result.ledger.schema == LEDGER
    assert result.rejected.height == 0


def test_best_ranked_thread(fixture_file: Path) -> None:
    conversations = by_source_id(read(fixture_file))
    assert set(conversations) == {"a3", "b1", "x1"}  # t3/t4 excluded, t5 has no answer
    row = conversations["a3"]
    assert row["id"] == stable_id("oasst", "a3")
    assert row["source"] == "oasst"
    assert [m["role"] for m in row["messages"]] == ["user", "assistant", "user", "assistant"]
    assert [m["content"] for m in row["messages"]][1] == "text of a2"  # rank 0 beats rank 1
    assert row["provenance"]["ids"] == ["p1", "a2", "p2", "a3"]
    assert row["provenance"]["file"] == str(fixture_file)
    assert row["provenance"]["line"] == 1
    meta = json.loads(row["meta"])
    assert meta["tree_id"] == "t1"
    assert meta["tree_state"] == "ready_for_export"
    assert meta["prompt_labels"] == {"quality": 0.9, "spam": 0.0}
    assert meta["labels"] == {"quality": 0.7}
    assert meta["detoxify"] == [{"toxicity": 0.01}, None]
    assert meta["synthetic"] is False


def test_trailing_prompter_is_dropped_and_langs_kept(fixture_file: Path) -> None:
    conversations = by_source_id(read(fixture_file))
    assert conversations["b1"]["provenance"]["ids"] == ["q1", "b1"]
    assert conversations["b1"]["lang"] == "de"
    assert conversations["a3"]["lang"] == "en"


def test_unranked_siblings_follow_the_first(fixture_file: Path) -> None:
    conversations = by_source_id(read(fixture_file))
    assert conversations["x1"]["provenance"]["ids"] == ["x0", "x1"]


def test_pairs_prefer_the_better_rank(fixture_file: Path) -> None:
    result = read(fixture_file)
    pairs = {tuple(row["source_ids"]): row for row in result.preferences.iter_rows(named=True)}
    # Three ranked, kept replies to p1 (a5 is deleted, a6 failed review and is unranked): C(3,2).
    assert set(pairs) == {("p1", "a2", "a1"), ("p1", "a2", "a4"), ("p1", "a1", "a4")}
    rank = {"a2": 0, "a1": 1, "a4": 2}
    for (_, chosen, rejected), row in pairs.items():
        assert rank[chosen] < rank[rejected]
        assert row["margin"] == rank[rejected] - rank[chosen]
        assert row["origin"] == "human"
        assert row["judge"] is None
        assert row["prompt"] == [{"role": "user", "content": "text of p1"}]
        assert row["chosen"] == [{"role": "assistant", "content": f"text of {chosen}"}]
        assert row["rejected"] == [{"role": "assistant", "content": f"text of {rejected}"}]
        assert row["id"] == stable_id("oasst", f"{chosen}>{rejected}")
        assert row["lang"] == "en"


def test_exclusions_are_in_the_ledger(fixture_file: Path) -> None:
    ledger = dropped(read(fixture_file))
    assert ledger[row_id("a5")] == ("ingest.deleted", "message deleted")
    assert ledger[row_id("p3")] == ("ingest.deleted", "ancestor a5 deleted")
    assert ledger[row_id("a6")] == ("ingest.review_failed", "failed review")
    assert ledger[row_id("r1")][0] == ledger[row_id("s1")][0] == "ingest.spam_tree"
    assert "aborted_low_grade" in ledger[row_id("s1")][1]
    assert ledger[row_id("u1")][0] == ledger[row_id("v1")][0] == "ingest.spam_tree"
    assert "spam label 0.80" in ledger[row_id("v1")][1]
    assert len(ledger) == 7
    assert set(read(fixture_file).ledger["stage"]) == {"ingest"}


def test_every_message_is_accounted_for(fixture_file: Path) -> None:
    """Used, unused-but-valid and ledgered messages partition the input; none is in two places."""
    result = read(fixture_file)
    used = {i for ids in result.conversations["provenance"].struct.field("ids") for i in ids}
    used |= {i for ids in result.preferences["source_ids"] for i in ids}
    ledgered = set(result.ledger["row_id"])
    every = {m["message_id"] for m in all_messages()}
    assert not {row_id(i) for i in used} & ledgered
    unused = {i for i in every if i not in used and row_id(i) not in ledgered}
    assert unused == {"q2", "w1", "x2"}  # trailing prompt, unanswered prompt, second branch
    assert len(used) + len(ledgered) + len(unused) == len(every)


def test_custom_source_name(fixture_file: Path) -> None:
    result = read(fixture_file, source="oasst2")
    assert set(result.conversations["source"]) == {"oasst2"}
    assert stable_id("oasst2", "a3") in set(result.conversations["id"])


def test_ingest_entry_point(fixture_file: Path) -> None:
    assert ingest("oasst", [fixture_file]).counts()["conversations"] == 3


# --- Bad input -----------------------------------------------------------------------------------


def test_missing_parent_rejects_it_and_descendants(tmp_path: Path) -> None:
    rows = [*tree_one(), msg("o1", "gone", "assistant"), msg("o2", "o1", "prompter")]
    result = read(write_jsonl(tmp_path / "m.jsonl", rows))
    rejected = {r["line"]: r for r in result.rejected.iter_rows(named=True)}
    assert set(rejected) == {10, 11}
    assert rejected[10]["reason"] == "parent gone not found in tree t1"
    assert rejected[10]["field"] == "parent_id"
    assert rejected[10]["file"] == str(tmp_path / "m.jsonl")
    assert rejected[11]["reason"] == "ancestor o1: parent gone not found in tree t1"
    assert "o2" in rejected[11]["raw"]
    assert result.conversations.height == 1  # the good tree is untouched


def test_parent_in_another_tree_is_not_found(tmp_path: Path) -> None:
    rows = [*tree_one(), msg("z1", "p1", "assistant", tree="elsewhere")]
    result = read(write_jsonl(tmp_path / "m.jsonl", rows))
    assert result.rejected["reason"].to_list() == ["parent p1 not found in tree elsewhere"]


def test_cycle_is_rejected_without_looping(tmp_path: Path) -> None:
    rows = [
        msg("c1", "c3", "prompter", tree="t9"),
        msg("c2", "c1", "assistant", tree="t9"),
        msg("c3", "c2", "prompter", tree="t9"),
        msg("c4", "c2", "prompter", tree="t9"),  # hangs below the cycle
        msg("self", "self", "prompter", tree="t9"),
        *tree_one(),
    ]
    result = read(write_jsonl(tmp_path / "m.jsonl", rows))
    reasons = dict(zip(result.rejected["line"], result.rejected["reason"], strict=True))
    assert set(reasons) == {1, 2, 3, 4, 5}
    for line in (1, 2, 3):
        assert reasons[line].startswith("parent links form a cycle: ")
        assert all(name in reasons[line] for name in ("c1", "c2", "c3"))
    assert reasons[4].startswith("ancestor c2: parent links form a cycle")
    assert reasons[5] == "parent links form a cycle: self -> self"
    assert result.conversations.height == 1


def test_duplicate_message_id_is_rejected(tmp_path: Path) -> None:
    rows = [*tree_one(), msg("a1", "p1", "assistant", rank=1)]
    result = read(write_jsonl(tmp_path / "m.jsonl", rows))
    assert result.rejected["field"].to_list() == ["message_id"]
    assert "duplicate message_id a1" in result.rejected["reason"][0]


def test_duplicate_tree_rejects_all_its_nodes(tmp_path: Path) -> None:
    trees = nest(tree_one())
    result = read(write_jsonl(tmp_path / "t.jsonl", [trees[0], trees[0]]))
    assert result.rejected.height == len(tree_one())
    assert set(result.rejected["line"]) == {2}
    assert result.conversations.height == 1


def test_wrong_types_truncated_blank_and_bom(tmp_path: Path) -> None:
    lines: list[dict | str] = [
        "\ufeff" + json.dumps(msg("p1", None, "prompter")),
        msg("a1", "p1", "assistant", rank="first"),
        "",
        json.dumps(msg("a2", "p1", "assistant"))[:40],
        msg("a3", "p1", "robot"),
        msg("a4", "p1", "assistant", labels={"name": ["spam"], "value": []}),
        msg("a5", "p1", "assistant", rank=0),
    ]
    result = read(write_jsonl(tmp_path / "m.jsonl", lines))
    rejected = {r["line"]: r for r in result.rejected.iter_rows(named=True)}
    assert set(rejected) == {2, 3, 4, 5, 6}
    assert rejected[2]["field"] == "rank"
    assert rejected[3]["reason"] == "blank line"
    assert "truncated" in rejected[4]["reason"]
    assert rejected[5]["field"] == "role"
    assert rejected[6]["field"] == "labels"
    assert by_source_id(result)["a5"]["provenance"]["ids"] == ["p1", "a5"]  # BOM line read


def test_wrong_type_inside_a_tree_names_the_field(tmp_path: Path) -> None:
    trees = nest(tree_one())
    trees[0]["prompt"]["replies"][1]["rank"] = "zero"
    good = nest(other_trees())
    result = read(write_jsonl(tmp_path / "t.jsonl", [trees[0], *good]))
    assert result.rejected["line"].to_list() == [1]
    assert result.rejected["field"][0] == "prompt.replies[1].rank"
    assert set(by_source_id(result)) == {"b1", "x1"}


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_missing_file_raises(tmp_path: Path, suffix: str) -> None:
    with pytest.raises(SourceError, match="no such file"):
        read(tmp_path / f"absent{suffix}")


def test_empty_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(SourceError, match="empty"):
        read(path)


def test_file_of_another_format_raises(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "flan.jsonl", [{"inputs": "x", "targets": "y"}])
    with pytest.raises(SourceError, match="message_id"):
        read(path)


# --- Parquet --------------------------------------------------------------------------------------


def test_parquet_flat(tmp_path: Path) -> None:
    rows = all_messages()
    for row in rows:  # as in HF's oasst1 Parquet: rank is a float column
        row["rank"] = None if row["rank"] is None else float(row["rank"])
    path = tmp_path / "oasst.parquet"
    pl.DataFrame(rows).write_parquet(path)
    result = read(path)
    assert result.rejected.height == 0
    assert set(by_source_id(result)) == {"a3", "b1", "x1"}
    assert result.preferences.height == 3
    assert by_source_id(result)["a3"]["provenance"]["line"] == 1
    assert len(dropped(result)) == 7


def test_parquet_trees(tmp_path: Path) -> None:
    path = tmp_path / "trees.parquet"
    pl.DataFrame(nest(all_messages()), infer_schema_length=None).write_parquet(path)
    assert detect_shape(path) == "trees"
    result = read(path)
    assert result.rejected.height == 0
    assert set(by_source_id(result)) == {"a3", "b1", "x1"}
    assert result.preferences.height == 3
    assert len(dropped(result)) == 7


def test_parquet_missing_column_raises(tmp_path: Path) -> None:
    path = tmp_path / "oasst.parquet"
    pl.DataFrame(all_messages()).drop("text").write_parquet(path)
    with pytest.raises(SourceError, match="text"):
        read(path)


# --- Depth and several files ----------------------------------------------------------------------


def wrong_role_order() -> list[dict]:
    """tb: an assistant root answered by an assistant. t1's prompter p1 also has a prompter
    reply (pp) answered by an assistant (pa), and a2's thread goes on with an assistant (aa)."""
    return [
        msg("r", None, "assistant", tree="tb"),
        msg("r2", "r", "assistant", tree="tb"),
        *tree_one(),
        msg("pp", "p1", "prompter"),
        msg("pa", "pp", "assistant", rank=0),
        msg("aa", "a3", "assistant"),
        msg("ab", "aa", "prompter"),
    ]


@pytest.mark.parametrize("shape", ["flat", "trees"])
def test_roles_out_of_order_are_rejected_with_descendants(tmp_path: Path, shape: str) -> None:
    rows = wrong_role_order() if shape == "flat" else nest(wrong_role_order())
    path = write_jsonl(tmp_path / f"m_{shape}.jsonl", rows)
    result = read(path)
    rejected = {
        json.loads(r["raw"])["message_id"]: r for r in result.rejected.iter_rows(named=True)
    }
    assert set(rejected) == {"r", "r2", "pp", "pa", "aa", "ab"}
    assert {r["field"] for r in rejected.values()} == {"role"}
    assert {r["file"] for r in rejected.values()} == {str(path)}
    root = "tree tb starts with an assistant message; a tree's root is a prompt"
    assert rejected["r"]["reason"] == root
    assert rejected["r2"]["reason"] == f"ancestor r: {root}"
    reply = (
        "prompter message replies to prompter message p1; prompter and assistant turns alternate"
    )
    assert rejected["pp"]["reason"] == reply
    assert rejected["pa"]["reason"] == f"ancestor pp: {reply}"
    assert rejected["aa"]["reason"].startswith("assistant message replies to assistant message a3")
    assert rejected["ab"]["reason"].startswith("ancestor aa: ")
    if shape == "flat":
        assert rejected["r"]["line"] == 1 and rejected["pp"]["line"] == 12
    # The good part of t1 is untouched: the same thread and pairs as without the bad messages.
    threads = [[m["role"] for m in t] for t in result.conversations["messages"].to_list()]
    assert threads == [["user", "assistant", "user", "assistant"]]
    assert result.conversations["source_id"].to_list() == ["a3"]
    assert result.preferences.height == 3
    assert not {i for ids in result.preferences["source_ids"] for i in ids} & set(rejected)
    # Every message is in exactly one place.
    assert not {row_id(i) for i in rejected} & set(result.ledger["row_id"])


def test_deep_chain_does_not_recurse(tmp_path: Path) -> None:
    depth = 5000
    rows = [msg("m0", None, "prompter", tree="deep")]
    for i in range(1, depth):
        role = "assistant" if i % 2 else "prompter"
        rows.append(msg(f"m{i}", f"m{i - 1}", role, tree="deep"))
    result = read(write_jsonl(tmp_path / "deep.jsonl", rows))
    assert result.conversations["messages"].list.len().to_list() == [depth]


def test_deep_chain_with_deleted_top_does_not_recurse(tmp_path: Path) -> None:
    rows = [
        msg("m0", None, "prompter", tree="deep"),
        msg("m1", "m0", "assistant", tree="deep", deleted=True),
    ]
    rows += [msg(f"m{i}", f"m{i - 1}", "prompter", tree="deep") for i in range(2, 5000)]
    result = read(write_jsonl(tmp_path / "deep.jsonl", rows))
    assert result.ledger.height == 4999


def test_deeply_nested_tree_line_fails_cleanly(tmp_path: Path) -> None:
    """The JSON decoder recurses per nesting level; a pathological tree must not crash with a
    RecursionError. Today that is a SourceError naming the file; once records.py turns the
    RecursionError into a rejected row, it is that row."""
    depth = 2000  # built as text: json.dumps would hit the same limit
    node = '{"message_id": "m%d", "role": "prompter", "text": "x", "replies": ['
    line = '{"message_tree_id": "deep", "prompt": ' + "".join(node % i for i in range(depth))
    line += "]}" * depth + "}"
    path = write_jsonl(tmp_path / "deep_trees.jsonl", [line])
    try:
        result = read(path)
    except SourceError as error:
        assert "deep_trees.jsonl" in str(error)
    else:
        assert result.rejected["line"].to_list() == [1]


def test_trees_may_span_files_and_shapes(tmp_path: Path) -> None:
    messages = tree_one()
    flat = write_jsonl(tmp_path / "part1.jsonl", messages[:4])
    rest = write_jsonl(tmp_path / "part2.jsonl", messages[4:])
    other = write_jsonl(tmp_path / "trees.jsonl", nest(other_trees()))
    result = read(flat, rest, other)
    assert set(by_source_id(result)) == {"a3", "b1", "x1"}
    assert result.preferences.height == 3
    assert by_source_id(result)["b1"]["provenance"]["file"] == str(other)


# --- The embedded samples -----------------------------------------------------------------------


def answered_trees(path: Path) -> dict[str, tuple[str, list[str]]]:
    """tree id -> (root id, ids of the assistant replies to the root), from the raw sample."""
    trees: dict[str, tuple[str, list[str]]] = {}
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8-sig").splitlines() if line]
    if rows and "prompt" in rows[0]:
        for tree in rows:
            root = tree["prompt"]
            replies = [r["message_id"] for r in root["replies"] if r["role"] == "assistant"]
            trees[tree["message_tree_id"]] = (root["message_id"], replies)
        return trees
    roots = {m["message_id"]: m["message_tree_id"] for m in rows if m["parent_id"] is None}
    for root_id, tree_id in roots.items():
        trees[tree_id] = (root_id, [])
    for m in rows:
        if m["parent_id"] in roots and m["role"] == "assistant":
            trees[roots[m["parent_id"]]][1].append(m["message_id"])
    return trees


@pytest.mark.parametrize("name", ["oasst_trees.jsonl", "oasst_messages.jsonl"])
def test_embedded_samples(name: str) -> None:
    path = SAMPLES / name
    if not path.exists():
        pytest.skip(f"{path} not written yet")
    result = read(path)
    ledgered = set(result.ledger["row_id"])
    spam = {
        reason.split()[1]
        for rule, reason in zip(result.ledger["rule"], result.ledger["reason"], strict=True)
        if rule == "ingest.spam_tree"
    }
    expected = {
        tree_id
        for tree_id, (root, replies) in answered_trees(path).items()
        if tree_id not in spam
        and row_id(root) not in ledgered
        and any(row_id(r) not in ledgered for r in replies)
    }
    with_conversation = {json.loads(m)["tree_id"] for m in result.conversations["meta"]}
    assert expected and with_conversation == expected  # one thread per answered, kept tree
    assert result.conversations.height == len(expected)
    assert result.preferences.height > 0
    assert (result.preferences["margin"] > 0).all()
    assert (result.ledger["rule"] == "ingest.deleted").any()


def test_a_file_of_other_records_is_named_as_not_an_oasst_file(tmp_path: Path) -> None:
    path = tmp_path / "hh.jsonl"
    path.write_text(json.dumps({"chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(SourceError, match="not an oasst file"):
        read_oasst([path], ReadOptions())
