"""The curation pipeline's mechanics, with small filters whose behaviour is obvious."""

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
