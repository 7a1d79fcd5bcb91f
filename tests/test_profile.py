import pandas as pd
import polars as pl
import pytest

from curation.profile import ProfileConfig, plot_histograms, profile, write_profile
from curation.schema import CONVERSATIONS, frame
from curation.tokens import TokenCounter
from training.tokenizer import TokenizerConfig, train_tokenizer


def conversation(source: str, *turns: str) -> dict:
    roles = ["user", "assistant"]
    return {
        "id": f"{source}-{len(turns)}-{turns[0][:5]}",
        "source": source,
        "source_id": "x",
        "lang": "en",
        "messages": [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)],
        "meta": "{}",
        "provenance": {"file": "f", "line": 1, "ids": []},
    }


@pytest.fixture
def conversations() -> pl.DataFrame:
    rows = [conversation("flan", "word " * n, "yes") for n in range(10, 60)]
    rows += [
        conversation("oasst", "hi there", "answer " * n, "more?", "sure " * n) for n in range(5, 30)
    ]
    return frame(rows, CONVERSATIONS)


def test_stats_per_source_and_role_match_a_direct_computation(conversations):
    tokenizer = train_tokenizer(
        ["word yes hi there answer more sure"] * 50, TokenizerConfig(vocab_size=300)
    )
    result = profile(conversations, TokenCounter(tokenizer))
    words = result.stats.filter(measure="words").sort("source", "role")
    flan_user = words.filter(source="flan", role="user").row(0, named=True)
    assert flan_user["count"] == 50
    assert flan_user["min"] == 10 and flan_user["max"] == 59
    reference = pd.Series(range(10, 60))  # the bench compares against pandas too
    assert flan_user["p50"] == reference.quantile(0.5, interpolation="lower")
    assert flan_user["p90"] == reference.quantile(0.9, interpolation="lower")
    oasst_assistant = words.filter(source="oasst", role="assistant").row(0, named=True)
    assert oasst_assistant["count"] == 50  # two assistant turns per conversation
    tokens = result.table("tokens")
    assert set(tokens["source"]) == {"flan", "oasst"}
    assert tokens.filter(source="flan", role="assistant")["max"][0] == 1  # "yes" is one token
    turns = result.turns.sort("source")
    assert turns["conversations"].to_list() == [50, 25]
    assert turns["mean_turns"].to_list() == [2.0, 4.0]


def test_pretraining_text_is_profiled_as_its_own_role(conversations):
    texts = pl.DataFrame({"source": ["pretrain"] * 3, "text": ["a b c", "d e", ""]})
    result = profile(conversations, None, texts=texts)
    text_words = result.stats.filter(measure="words", role="text").row(0, named=True)
    assert (text_words["count"], text_words["min"], text_words["max"]) == (3, 0, 3)
    assert result.stats.filter(measure="tokens").height == 0  # no tokenizer, no token rows


def test_histograms_and_tables_are_written(tmp_path, conversations):
    result = profile(conversations, None)
    written = write_profile(result, tmp_path, bins=ProfileConfig.histogram_bins)
    pngs = sorted(p.name for p in written.values() if p.suffix == ".png")
    assert pngs == ["hist_assistant_words.png", "hist_user_words.png"]
    for name in pngs:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pl.read_parquet(tmp_path / "length_stats.parquet").height == result.stats.height
    assert not list(tmp_path.glob("*.tmp"))


def test_null_and_empty_content_do_not_crash(tmp_path):
    rows = [conversation("s", "", "x")]
    table = frame(rows, CONVERSATIONS).with_columns(
        pl.lit([{"role": "user", "content": None}], dtype=CONVERSATIONS["messages"]).alias(
            "messages"
        )
    )
    result = profile(table, None)
    assert result.stats.filter(measure="chars")["max"].to_list() == [0]
    assert plot_histograms(result.lengths, tmp_path)


def test_counts_of_drops_add_up_to_the_stats_of_all_messages(conversations):
    """Stats and turn stats from length counts kept per drop, summed, equal the ones taken
    over every message at once (what a refresh relies on to profile only the new drop)."""
    from polars.testing import assert_frame_equal

    from curation.profile import (
        conversation_turns,
        length_counts,
        message_lengths,
        summarize,
        summarize_counts,
        summarize_turn_counts,
        summarize_turns,
        turn_counts,
    )

    texts = ["word yes hi there answer more sure"] * 50
    counter = TokenCounter(train_tokenizer(texts, TokenizerConfig(vocab_size=300)))
    halves = [conversations.head(31), conversations.slice(31)]
    counts = pl.concat([length_counts(message_lengths(h, counter)) for h in halves])
    everything = message_lengths(conversations, counter)
    assert_frame_equal(summarize_counts(counts), summarize(everything))
    turns = pl.concat([turn_counts(conversation_turns(h)) for h in halves])
    expected_turns = summarize_turns(conversation_turns(conversations))
    assert_frame_equal(summarize_turn_counts(turns), expected_turns)
    # Every message counted once per measure.
    assert counts.filter(pl.col("measure") == "chars")["count"].sum() == everything.height
