import json
import math

import polars as pl
import pytest

from curation.mixing import EOS_PER_DOCUMENT, MixConfig, mix, split_totals, token_targets


def source(prefix: str, n: int, tokens: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": [f"{prefix}{i}" for i in range(n)],
            "text": [f"doc {prefix}{i}" for i in range(n)],
            "tokens": [tokens] * n,
        }
    )


def with_eos(rows: pl.DataFrame) -> dict[str, int]:
    """Tokens per source as packing sees them: text tokens plus one EOS a document."""
    counted = rows.group_by("source").agg((pl.col("tokens") + EOS_PER_DOCUMENT).sum())
    return dict(counted.iter_rows())


def test_exact_token_proportions_with_upsampling_and_cuts():
    sources = {"pretrain": source("p", 1000, 37), "sft": source("s", 20, 101)}
    config = MixConfig(proportions={"pretrain": 0.7, "sft": 0.3}, total_tokens=10_001, seed=3)
    result = mix(sources, config)
    assert with_eos(result.rows) == token_targets(config) == {"pretrain": 7001, "sft": 3000}
    report = {r["source"]: r for r in result.report.iter_rows(named=True)}
    assert report["sft"]["epochs"] == 2  # 20 * 102 = 2040 tokens available, 3000 wanted
    assert report["pretrain"]["achieved_share"] == pytest.approx(7001 / 10_001)
    # only the last document of each source is cut
    cut = result.rows.join(
        pl.concat([sources["pretrain"], sources["sft"]]), on="id", suffix="_full"
    )
    assert cut.filter(pl.col("tokens") < pl.col("tokens_full")).height <= 2


def test_the_eos_of_each_document_is_counted_so_short_documents_do_not_gain():
    sources = {"short": source("s", 500, 3), "long": source("l", 100, 300)}
    config = MixConfig(proportions={"short": 0.5, "long": 0.5}, total_tokens=4000)
    rows = mix(sources, config).rows
    assert with_eos(rows) == {"short": 2000, "long": 2000}
    # 2000 tokens of 4-token documents: 500 documents, of which the EOS are a quarter
    assert rows.filter(pl.col("source") == "short").height == 500


def test_deterministic_under_a_seed_and_interleaved():
    sources = {"a": source("a", 200, 10), "b": source("b", 200, 10)}
    config = MixConfig(proportions={"a": 0.5, "b": 0.5}, total_tokens=2000, seed=0)
    first, again = mix(sources, config), mix(sources, config)
    assert first.rows.equals(again.rows)
    other = mix(sources, MixConfig(proportions={"a": 0.5, "b": 0.5}, total_tokens=2000, seed=1))
    assert not first.rows.equals(other.rows)
    head = first.rows.head(40)["source"].to_list()
    assert 5 < head.count("a") < 35  # sources are mixed through the stream, not concatenated


def test_duplicate_ids_and_row_order_do_not_change_the_mixture():
    dup = pl.DataFrame(
        {
            "id": ["x"] * 120 + [f"y{i}" for i in range(30)],
            "text": [f"t{i}" for i in range(150)],
            "tokens": [1 + i % 13 for i in range(150)],
        }
    )
    sources = {"a": dup, "b": source("b", 50, 10)}
    config = MixConfig(proportions={"a": 0.6, "b": 0.4}, total_tokens=1500, seed=2)
    first = mix(sources, config).rows
    # the cut falls inside the duplicate ids: an arbitrary tie order would change its text
    assert first.filter(pl.col("source") == "a").height < dup.height
    for seed in range(6):
        shuffled = {
            "b": sources["b"].sample(fraction=1.0, shuffle=True, seed=seed),
            "a": dup.sample(fraction=1.0, shuffle=True, seed=seed),
        }
        again = MixConfig(proportions={"b": 0.4, "a": 0.6}, total_tokens=1500, seed=2)
        assert mix(shuffled, again).rows.equals(first), seed


def test_shares_that_sum_to_one_within_tolerance_give_exact_totals():
    thirds = {"a": 0.3333334, "b": 0.3333334, "c": 0.3333334}
    config = MixConfig(proportions=thirds, total_tokens=10_000_000)
    targets = token_targets(config)
    assert sum(targets.values()) == 10_000_000
    assert max(targets.values()) - min(targets.values()) <= 1


def test_the_train_split_has_the_exact_shares_and_the_test_split_is_disjoint():
    sources = {"a": source("a", 3000, 20), "b": source("b", 400, 7)}
    config = MixConfig(proportions={"a": 0.7, "b": 0.3}, total_tokens=50_000, eval_fraction=0.1)
    result = mix(sources, config)
    totals = split_totals(config)
    assert totals == {"train": 45_000, "test": 5_000}
    for split in ("train", "test"):
        rows = result.rows.filter(pl.col("split") == split)
        assert with_eos(rows) == token_targets(config, totals[split]), split
    train_ids = set(result.rows.filter(pl.col("split") == "train")["id"])
    assert not train_ids & set(result.rows.filter(pl.col("split") == "test")["id"])
    train = result.report.filter(pl.col("split") == "train")
    assert dict(zip(train["source"], train["achieved_share"], strict=True)) == pytest.approx(
        {"a": 0.7, "b": 0.3}
    )


@pytest.mark.parametrize(
    ("proportions", "message"),
    [
        ({"a": 0.5, "b": 0.6}, "sum to 1"),
        ({}, "at least one"),
        ({"a": 1.0, "zzz": 0.0}, "not given"),
        ({"a": math.nan, "b": 1.0}, r"proportions\.a: nan is not a finite"),
        ({"a": math.inf, "b": 1.0}, r"proportions\.a: inf is not a finite"),
        ({"a": 1.5, "b": -0.5}, r"proportions\.b: -0\.5"),
    ],
)
def test_bad_mix_configs(proportions, message):
    with pytest.raises(ValueError, match=message):
        mix({"a": source("a", 3, 5)}, MixConfig(proportions=proportions, total_tokens=10))


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (source("a", 3, 5).drop("text"), r"source 'bad': missing column\(s\) \['text'\]"),
        (
            source("a", 3, 5).with_columns(tokens=pl.Series([4, -2, 5])),
            r"source 'bad': 1 row\(s\) with negative tokens \(first: id 'a1', tokens -2\)",
        ),
        (
            source("a", 3, 5).with_columns(tokens=pl.Series([4, None, 5])),
            r"source 'bad': 1 row\(s\) with a null tokens \(first at row 1\)",
        ),
        (source("a", 3, 5).with_columns(pl.col("tokens") * 1.0), "tokens must be integers"),
    ],
)
def test_bad_sources_are_named(frame, message):
    config = MixConfig(proportions={"good": 0.5, "bad": 0.5}, total_tokens=20)
    with pytest.raises(ValueError, match=message):
        mix({"good": source("g", 3, 5), "bad": frame}, config)


def test_a_pretraining_mixture_of_instructions_only_is_refused_with_its_key():
    from assets.training import MixingRecipe
    from training.recipe import RecipeError, build

    with pytest.raises(RecipeError, match=r"r.yaml: mixing.*pretrain_instruction_share: 1.0"):
        build(MixingRecipe, {"pretrain_instruction_share": 1.0}, "r.yaml: mixing")
    assert build(MixingRecipe, {"pretrain_instruction_share": 0.2}, "m").decay_tokens > 0


def test_the_exported_train_split_packs_to_the_exact_shares(sft_workspace, tmp_path):
    """The mixture asset's train split, re-tokenized and packed by the training stage's own
    ``pack`` (one EOS a document, no tail dropped with blocks of one token), has exactly the
    target tokens of each source."""
    from datasets import Dataset

    from assets.resources import SAMPLES, StorageResource
    from assets.training import MIXTURE_EVAL_FRACTION, mixture_asset
    from curation.tokens import TokenCounter
    from training.causal_lm import pack
    from training.tokenizer import load_tokenizer, to_transformers

    tokenizer = load_tokenizer(sft_workspace / "tokenizer")
    counter = TokenCounter(tokenizer)
    texts = [json.loads(line)["text"] for line in (SAMPLES / "pretrain.jsonl").open()]
    sentences = [s.strip() for t in texts for s in t.split(".") if s.strip()]
    frames = {
        "long": pl.DataFrame({"id": [f"l{i}" for i in range(len(texts))], "text": texts}),
        "short": pl.DataFrame({"id": [f"s{i}" for i in range(len(sentences))], "text": sentences}),
    }
    sources = {
        name: frame.with_columns(tokens=pl.Series(counter(frame["text"].to_list())))
        for name, frame in frames.items()
    }
    config = MixConfig(
        proportions={"long": 0.9, "short": 0.1},
        total_tokens=20_000,
        seed=1,
        eval_fraction=MIXTURE_EVAL_FRACTION,
    )
    result = mixture_asset("m", StorageResource(base_dir=str(tmp_path)), mix(sources, config))
    train = pl.read_parquet(tmp_path / "datasets" / "m" / "train.parquet")
    hf = to_transformers(tokenizer)
    packed = {}
    for name in ("long", "short"):
        part = train.filter(pl.col("source") == name).select("text", "tokens")
        _, stats = pack(Dataset.from_polars(part), hf, block=1)
        packed[name] = stats["tokens"]
    assert packed == token_targets(config, split_totals(config)["train"])
    shares = result.metadata["achieved_train_shares"]
    assert shares == pytest.approx({"long": 0.9, "short": 0.1}, abs=1e-4)
    assert result.metadata["train_tokens"] == sum(packed.values())


def test_a_source_with_no_held_out_rows_leaves_the_test_split_to_the_others():
    from curation.datasets import split_expr

    small = source("s", 6, 50)
    assert small.with_columns(split=split_expr(0.02))["split"].to_list() == ["train"] * 6
    halves = {"big": 0.5, "small": 0.5}
    config = MixConfig(proportions=halves, total_tokens=10_000, eval_fraction=0.02)
    result = mix({"big": source("b", 2000, 9), "small": small}, config)
    test = result.rows.filter(pl.col("split") == "test")
    assert with_eos(test) == {"big": 200}  # no train document of "small" leaks into test
    train = result.rows.filter(pl.col("split") == "train")
    assert with_eos(train) == {"big": 4900, "small": 4900}
