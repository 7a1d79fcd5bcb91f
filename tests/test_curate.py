"""The curation pipeline's mechanics, with small filters whose behaviour is obvious."""

import json
from dataclasses import dataclass
from typing import ClassVar

import polars as pl
import pytest

from curation.curate import ConfigError, build_filters, curate
from curation.filters.base import Batch, Findings, Policy
from curation.schema import CONVERSATIONS, frame


def conv(id_: str, *turns: str | None, source: str = "s", roles: list[str] | None = None) -> dict:
    roles = roles or ["user", "assistant"] * len(turns)
    return {
        "id": id_,
        "source": source,
        "source_id": id_,
        "lang": "en",
        "messages": [{"role": r, "content": t} for r, t in zip(roles, turns, strict=False)],
        "meta": "{}",
        "provenance": {"file": "f", "line": 1, "ids": []},
    }


@dataclass(frozen=True)
class DropBad:
    category: ClassVar[str] = "test"
    policy: Policy = Policy("drop")

    def __call__(self, batch: Batch) -> Findings:
        hits = batch.answers().filter(pl.col("content").str.contains("BAD"))
        ledger = hits.select(
            "row_id",
            rule=pl.lit("test.bad"),
            verdict=self.policy.expr(),
            reason=pl.lit("says BAD"),
            score=pl.lit(1.0),
        ).unique("row_id", maintain_order=True)
        return Findings(ledger=ledger)


@dataclass(frozen=True)
class RedactSecret:
    category: ClassVar[str] = "test"

    def __call__(self, batch: Batch) -> Findings:
        hits = batch.messages.filter(pl.col("content").str.contains("secret"))
        rewrites = hits.select("row_id", "turn", pl.col("content").str.replace_all("secret", "<X>"))
        ledger = hits.select(
            "row_id",
            rule=pl.lit("test.secret"),
            verdict=pl.lit("rewrite"),
            reason=pl.lit("redacted"),
            score=pl.lit(1.0),
        ).unique("row_id", maintain_order=True)
        return Findings(ledger=ledger, rewrites=rewrites)


@dataclass(frozen=True)
class SeesText:
    """Records what it saw, to prove later filters see rewritten text and no dropped rows."""

    category: ClassVar[str] = "test"
    seen: list

    def __call__(self, batch: Batch) -> Findings:
        self.seen.extend(batch.messages["content"].to_list())
        return Findings()


def test_drops_rewrites_and_conservation():
    rows = [
        conv("a", "hi", "fine answer"),
        conv("b", "hi", "BAD answer"),
        conv("c", "my secret", "the secret is safe"),
        conv("d", "secret", "BAD secret"),  # rewritten by one filter, dropped by the next
    ]
    seen: list[str] = []
    result = curate(frame(rows, CONVERSATIONS), [RedactSecret(), DropBad(), SeesText(seen)])
    states = dict(result.states.select("row_id", "state").iter_rows())
    assert states == {"a": "kept", "b": "dropped", "c": "rewritten", "d": "dropped"}
    assert result.curated["id"].to_list() == ["a", "c"]  # input order kept
    assert result.curated.filter(id="c")["messages"][0].to_list() == [
        {"role": "user", "content": "my <X>"},
        {"role": "assistant", "content": "the <X> is safe"},
    ]
    assert "BAD answer" not in seen and "the <X> is safe" in seen  # later filters see the rewrite
    assert result.counts() == {"kept": 1, "rewritten": 1, "dropped": 2}
    assert result.states.height == len(rows)
    ledger_d = result.ledger.filter(row_id="d").sort("rule")
    assert ledger_d["rule"].to_list() == ["test.bad", "test.secret"]  # every rule that fired
    assert set(result.ledger["stage"]) == {"curate"}
    assert result.curated.columns == list(CONVERSATIONS.names())


def test_structural_problems_get_reasons_not_crashes():
    rows = [
        conv("empty"),
        conv("null", "q", None),
        conv("role", "q", "a", roles=["user", "robot"]),
        conv("ok", "q", "a"),
        conv("ok", "q", "again"),  # repeated id
    ]
    result = curate(frame(rows, CONVERSATIONS), [DropBad()])
    by_id = {(r["row_id"], r["state"]): r["rule"] for r in result.states.iter_rows(named=True)}
    assert by_id == {
        ("empty", "dropped"): "quality.empty_conversation",
        ("null", "dropped"): "quality.null_content",
        ("role", "dropped"): "quality.unknown_role",
        ("ok", "kept"): None,
        ("ok", "dropped"): "duplicate.same_id",
    }
    assert "robot" in result.ledger.filter(rule="quality.unknown_role")["reason"][0]
    assert result.states.height == len(rows)


def test_non_string_content_is_dropped_with_its_type():
    table = pl.DataFrame(
        {
            "id": ["x"],
            "source": ["s"],
            "source_id": ["x"],
            "lang": ["en"],
            "messages": [[{"role": "user", "content": 5}]],
            "meta": ["{}"],
            "provenance": [{"file": "f", "line": 1, "ids": []}],
        }
    )
    result = curate(table, [DropBad()])
    assert result.states["rule"].to_list() == ["quality.non_string_content"]
    assert result.curated.height == 0


def test_per_source_policy():
    rows = [conv("a", "q", "BAD", source="flan"), conv("b", "q", "BAD", source="oasst")]
    result = curate(frame(rows, CONVERSATIONS), [DropBad(Policy("drop", {"oasst": "flag"}))])
    assert dict(result.states.select("row_id", "state").iter_rows()) == {
        "a": "dropped",
        "b": "kept",
    }
    assert result.ledger.filter(row_id="b")["verdict"].to_list() == ["flag"]


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="unknown filter"):
        build_filters({"refrences": {}})
    with pytest.raises(ValueError, match="unknown verdict"):
        Policy("delete")


def pair(id_: str, prompt: str, chosen: str, rejected: str) -> dict:
    return {
        "id": id_,
        "source": "s",
        "source_id": id_,
        "lang": "en",
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "origin": "human",
        "margin": 1.0,
        "judge": None,
        "source_ids": [id_],
        "provenance": {"file": "f", "line": 1, "ids": []},
    }


@dataclass(frozen=True)
class PiiLike(RedactSecret):
    category: ClassVar[str] = "pii"


def test_preferences_are_judged_on_prompt_and_chosen_and_redacted_everywhere():
    from curation.preferences import curate_preferences
    from curation.schema import PREFERENCES

    pairs = frame(
        [
            pair("ok", "q", "good", "BAD is fine on the rejected side"),
            pair("bad", "q", "BAD chosen", "x"),
            pair("same", "q", "a", "a"),
            pair("pii", "my secret", "the secret", "secret too"),
        ],
        PREFERENCES,
    )
    result = curate_preferences(pairs, [PiiLike(), DropBad()])
    states = dict(result.states.select("row_id", "state").iter_rows())
    assert states == {"ok": "kept", "bad": "dropped", "same": "dropped", "pii": "rewritten"}
    row = result.curated.filter(id="pii").row(0, named=True)
    assert row["prompt"][0]["content"] == "my <X>"
    assert row["chosen"][0]["content"] == "the <X>"
    assert row["rejected"][0]["content"] == "<X> too"
    assert result.curated.columns == pairs.columns
    assert "preference.identical" in set(result.ledger["rule"])


def write_chats(path, chats: list[list[tuple[str, str]]]):

    lines = [
        json.dumps({"messages": [{"role": r, "content": c} for r, c in chat]}) for chat in chats
    ]
    path.write_text("".join(line + "\n" for line in lines))
    return path


CHATS = [
    [("user", "Name a colour."), ("assistant", "Blue.")],
    [("assistant", "Hello there."), ("assistant", "How can I help?")],
    [("user", "Hi."), ("user", "Anyone there?"), ("assistant", "Yes, here.")],
    [("system", "Be brief."), ("user", "Capital of France?"), ("assistant", "Paris.")],
    [("user", "Count to two."), ("assistant", "One, two."), ("user", "Now three.")],
    [("system", "Be brief."), ("system", "Be kind."), ("user", "Hi."), ("assistant", "Hello.")],
]


def test_roles_out_of_order_are_dropped_whatever_the_source(tmp_path):
    """A generic chat file the reader accepts as it is: curation drops the conversations no
    chat template takes, and they never reach the SFT set."""
    from curation.datasets import prompt_rows, sft_rows
    from curation.ingest import ingest

    conversations = ingest("jsonl", [write_chats(tmp_path / "chat.jsonl", CHATS)]).conversations
    result = curate(conversations, build_filters({"duplicates": {"enabled": False}}))
    by_line = {
        line: (r["state"], r["rule"], r["reason"])
        for line, r in zip(
            conversations["provenance"].struct.field("line"),
            result.states.iter_rows(named=True),
            strict=True,
        )
    }
    assert [by_line[line][:2] for line in range(1, 7)] == [
        ("kept", None),
        ("dropped", "structure.role_order"),
        ("dropped", "structure.role_order"),
        ("kept", None),
        ("kept", None),  # ends on a user turn: a prompt for RL, in order
        ("dropped", "structure.role_order"),
    ]
    assert by_line[2][2].startswith("message 0 is assistant, expected user (turns alternate")
    assert by_line[3][2].startswith("message 1 is user, expected assistant")
    assert by_line[6][2].startswith("message 1 is system, expected user")
    ledger = result.ledger.filter(rule="structure.role_order")
    assert set(ledger["verdict"]) == {"drop"} and set(ledger["stage"]) == {"curate"}
    sft = sft_rows(result.curated)
    roles = [[m["role"] for m in chat] for chat in sft["messages"].to_list()]
    assert roles == [["user", "assistant"], ["system", "user", "assistant"]]
    prompts = prompt_rows(result.curated)
    assert prompts.filter(pl.col("id") == conversations["id"][4])["prompt"].list.len().item() == 3


def test_incremental_curation_gives_the_same_role_order_verdicts(tmp_path):
    from curation.incremental import curate_incremental
    from curation.ingest import ingest

    conversations = ingest("jsonl", [write_chats(tmp_path / "chat.jsonl", CHATS)]).conversations
    filters = build_filters({})
    full = curate(conversations, filters)
    first, state, run = curate_incremental(conversations[:3], filters, None)
    again, _, run = curate_incremental(conversations, filters, state)
    assert run.mode == "incremental"
    assert again.states.equals(full.states)
    assert again.ledger.equals(full.ledger)
    assert again.curated.equals(full.curated)


def test_preferences_out_of_role_order_are_dropped_on_either_side():
    from curation.preferences import curate_preferences
    from curation.schema import PREFERENCES

    two_users = pair("users", "q", "fine", "worse")
    two_users["prompt"] = [{"role": "user", "content": "q"}, {"role": "user", "content": "q2"}]
    rejected_ends_on_user = pair("ends", "q", "fine", "worse")
    rejected_ends_on_user["rejected"].append({"role": "user", "content": "and you?"})
    pairs = frame([pair("ok", "q", "fine", "worse"), two_users, rejected_ends_on_user], PREFERENCES)
    result = curate_preferences(pairs, [DropBad()])
    states = {r["row_id"]: (r["state"], r["rule"]) for r in result.states.iter_rows(named=True)}
    assert states == {
        "ok": ("kept", None),
        "users": ("dropped", "structure.role_order"),
        "ends": ("dropped", "structure.role_order"),
    }
    reasons = dict(result.ledger.select("row_id", "reason").iter_rows())
    assert reasons["users"].startswith("message 1 is user, expected assistant")
    assert reasons["ends"] == "rejected ends with a user message, not an assistant answer"
    assert result.curated["id"].to_list() == ["ok"]
