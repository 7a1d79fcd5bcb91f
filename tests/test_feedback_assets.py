"""The judge as a Dagster resource: the key comes from the environment through EnvVar, reaches
the endpoint, and appears nowhere in the instance (event log, metadata) or the outputs."""

import dagster as dg
import polars as pl

from assets.feedback import JudgeResource, ai_rankings
from assets.io_manager import PolarsParquetIOManager
from assets.resources import StorageResource
from curation.feedback.schema import CANDIDATES
from curation.judge.stub import StubServer
from curation.schema import PREFERENCES

SECRET = "sk-asset-test-7781-never-log"


def candidate_table(prompts: int = 4, k: int = 3) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "id": f"p{p}",
                "source": "synthetic_chat",
                "prompt": [{"role": "user", "content": f"Question {p}?"}],
                "reference": None,
                "answer": None,
                "task": None,
                "candidates": [
                    {
                        "candidate_id": f"p{p}c{i}",
                        "text": "x " * (i + 2),
                        "origin": "model",
                        "model": "m",
                        "sampling": "{}",
                    }
                    for i in range(k)
                ],
            }
            for p in range(prompts)
        ],
        schema=CANDIDATES,
    )


def test_endpoint_judge_gets_its_key_from_the_environment_and_never_stores_it(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("POSTFORGE_JUDGE_API_KEY", SECRET)
    out, home = tmp_path / "out", tmp_path / "home"
    out.mkdir()
    home.mkdir()
    candidate_table().write_parquet(out / "candidate_sets.parquet")
    pl.DataFrame(schema=PREFERENCES).write_parquet(out / "curated_preferences.parquet")
    with StubServer() as server, dg.instance_for_test(temp_dir=str(home)) as instance:
        judge = JudgeResource(
            backend="openai",
            base_url=server.base_url,
            model="stub",
            api_key=dg.EnvVar("POSTFORGE_JUDGE_API_KEY"),
        )
        result = dg.materialize(
            # inputs read from out/ as written above
            [dg.SourceAsset("candidate_sets"), dg.SourceAsset("curated_preferences"), ai_rankings],
            instance=instance,
            resources={
                "io_manager": PolarsParquetIOManager(base_dir=str(out)),
                "storage": StorageResource(base_dir=str(out)),
                "judge": judge,
            },
        )
        assert result.success
        keys = {
            {k.lower(): v for k, v in headers.items()}.get("authorization")
            for _, _, headers in server.log
        }
        assert keys == {f"Bearer {SECRET}"}
        metadata = result.asset_materializations_for_node("ai_rankings")[0].metadata
        assert metadata["statuses"].value == {"ok": 4}
        assert metadata["summary"].value["requests_sent"] >= 4
        assert metadata["quality"].value["length_bias"] == 1.0  # this stub likes long answers
    rankings = pl.read_parquet(out / "ai_rankings.parquet")
    assert rankings["ranks"].to_list()[0] == [3, 2, 1]  # the stub ranks longer answers first
    for path in [*out.rglob("*"), *home.rglob("*")]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
