import polars as pl
import pytest

from curation.mixing import MixConfig, mix, token_targets


def source(prefix: str, n: int, tokens: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": [f"{prefix}{i}" for i in range(n)],
            "text": [f"doc {prefix}{i}" for i in range(n)],
            "tokens": [tokens] * n,
        }
    )


def test_exact_token_proportions_with_upsampling_and_cuts():
    sources = {"pretrain": source("p", 1000, 37), "sft": source("s", 20, 101)}
    config = MixConfig(proportions={"pretrain": 0.7, "sft": 0.3}, total_tokens=10_001, seed=3)
    result = mix(sources, config)
    per_source = dict(result.rows.group_by("source").agg(pl.col("tokens").sum()).iter_rows())
    assert per_source == token_targets(config) == {"pretrain": 7001, "sft": 3000}
    assert sum(per_source.values()) == 10_001
    report = {r["source"]: r for r in result.report.iter_rows(named=True)}
    assert report["sft"]["epochs"] == 2  # 2020 tokens available, 3000 wanted
    assert report["pretrain"]["achieved_share"] == pytest.approx(7001 / 10_001)
    # only the last document of each source is cut
    cut = result.rows.join(
        pl.concat([sources["pretrain"], sources["sft"]]), on="id", suffix="_full"
    )
    assert cut.filter(pl.col("tokens") < pl.col("tokens_full")).height <= 2


def test_deterministic_under_a_seed_and_interleaved():
    sources = {"a": source("a", 200, 10), "b": source("b", 200, 10)}
    config = MixConfig(proportions={"a": 0.5, "b": 0.5}, total_tokens=2000, seed=0)
    first, again = mix(sources, config), mix(sources, config)
    assert first.rows.equals(again.rows)
    other = mix(sources, MixConfig(proportions={"a": 0.5, "b": 0.5}, total_tokens=2000, seed=1))
    assert not first.rows.equals(other.rows)
    head = first.rows.head(40)["source"].to_list()
    assert 5 < head.count("a") < 35  # sources are mixed through the stream, not concatenated


@pytest.mark.parametrize(
    ("proportions", "message"),
    [
        ({"a": 0.5, "b": 0.6}, "sum to 1"),
        ({}, "at least one"),
        ({"a": 1.0, "zzz": 0.0}, "not given"),
    ],
)
def test_bad_mix_configs(proportions, message):
    with pytest.raises(ValueError, match=message):
        mix({"a": source("a", 3, 5)}, MixConfig(proportions=proportions, total_tokens=10))


def test_a_pretraining_mixture_of_instructions_only_is_refused_with_its_key():
    from assets.training import MixingRecipe
    from training.recipe import RecipeError, build

    with pytest.raises(RecipeError, match=r"r.yaml: mixing.*pretrain_instruction_share: 1.0"):
        build(MixingRecipe, {"pretrain_instruction_share": 1.0}, "r.yaml: mixing")
    assert build(MixingRecipe, {"pretrain_instruction_share": 0.2}, "m").decay_tokens > 0
