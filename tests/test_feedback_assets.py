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


def rankings_inputs(folder) -> tuple:
    """``out`` holding the inputs ai_rankings reads, and an empty ``home`` for an instance."""
    out, home = folder / "out", folder / "home"
    out.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    candidate_table().write_parquet(out / "candidate_sets.parquet")
    pl.DataFrame(schema=PREFERENCES).write_parquet(out / "curated_preferences.parquet")
    return out, home


def rank_with(judge, out, instance, asset=ai_rankings, **kwargs):
    return dg.materialize(
        # inputs read from out/ as rankings_inputs wrote them
        [dg.SourceAsset("candidate_sets"), dg.SourceAsset("curated_preferences"), asset],
        instance=instance,
        resources={
            "io_manager": PolarsParquetIOManager(base_dir=str(out)),
            "storage": StorageResource(base_dir=str(out)),
            "judge": judge,
        },
        **kwargs,
    )


def test_endpoint_judge_gets_its_key_from_the_environment_and_never_stores_it(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("POSTFORGE_JUDGE_API_KEY", SECRET)
    out, home = rankings_inputs(tmp_path)
    with StubServer() as server, dg.instance_for_test(temp_dir=str(home)) as instance:
        judge = JudgeResource(
            backend="openai",
            base_url=server.base_url,
            model="stub",
            api_key=dg.EnvVar("POSTFORGE_JUDGE_API_KEY"),
        )
        result = rank_with(judge, out, instance)
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


def fails_on_question_zero(times: int):
    """A responder that answers HTTP 502 to the first ``times`` calls about "Question 0?",
    then recovers (an endpoint's bad minute)."""
    from curation.judge.stub import Reply, longest_first

    failures = [0]

    def respond(body: dict, n: int) -> Reply:
        if "Question 0?" in body["messages"][1]["content"] and failures[0] < times:
            failures[0] += 1
            return Reply(502, {"error": {"message": "bad gateway"}})
        return longest_first(body, n)

    return respond


def materialize_rankings(folder, server, asset=ai_rankings, run_config=None):
    out, home = rankings_inputs(folder)
    judge = JudgeResource(backend="openai", base_url=server.base_url, model="stub", max_retries=0)
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        return rank_with(judge, out, instance, asset, raise_on_error=False, run_config=run_config)


def failure_messages(result) -> list[str]:
    return [
        event.event_specific_data.error.message
        for event in result.all_events
        if event.event_type_value == "STEP_FAILURE"
    ]


def test_failed_sets_fail_the_step_and_a_rerun_pays_only_for_them(tmp_path):
    from curation.judge.stub import longest_first

    with StubServer(fails_on_question_zero(100)) as server:
        failed = materialize_rankings(tmp_path, server)
        sent = server.requests
    assert not failed.success
    (message,) = failure_messages(failed)
    assert (
        "the judge failed on 1 of 4 candidate set(s) (25.0%, above max_error_share 0); "
        "first: p0: gave up after 1 attempt(s); last: HTTP 502: bad gateway. Answered calls are "
        "cached: a re-run pays only for the failed sets"
    ) in message
    assert sent == 8  # two orders of four sets
    assert not (tmp_path / "out" / "ai_rankings.parquet").exists()
    with StubServer(longest_first) as server:
        rerun = materialize_rankings(tmp_path, server)
        paid = server.requests
    assert rerun.success and paid == 2  # the six answered calls came from the cache


def test_the_judge_retry_policy_fires_on_failed_sets(tmp_path):
    from pipelines.automation import with_retry_policy

    retried = with_retry_policy(ai_rankings, dg.RetryPolicy(max_retries=1))
    with StubServer(fails_on_question_zero(2)) as server:  # the set's two calls fail once
        result = materialize_rankings(tmp_path, server, retried)
        sent = server.requests
    assert result.success, failure_messages(result)
    assert [e.event_type_value for e in result.all_events].count("STEP_RESTARTED") == 1
    assert sent == 8 + 2
    assert pl.read_parquet(tmp_path / "out" / "ai_rankings.parquet")["status"].to_list() == (
        ["ok"] * 4
    )


def test_failed_sets_within_max_error_share_are_written_and_counted(tmp_path):
    config = {"ops": {"ai_rankings": {"config": {"max_error_share": 0.25}}}}
    with StubServer(fails_on_question_zero(100)) as server:
        result = materialize_rankings(tmp_path, server, run_config=config)
    assert result.success, failure_messages(result)
    metadata = result.asset_materializations_for_node("ai_rankings")[0].metadata
    assert metadata["failed_sets"].value == 1
    assert metadata["statuses"].value == {"ok": 3, "error": 1}


def test_the_endpoint_url_is_bound_through_envvar_and_never_stored(tmp_path, monkeypatch):
    """A URL may carry a credential (a token in its path or query, a user:password host); bound
    as a plain string it went into the job snapshot the instance stores and the UI shows."""
    from pipelines.definitions import judge_resource

    out, home = rankings_inputs(tmp_path)
    with StubServer() as server, dg.instance_for_test(temp_dir=str(home)) as instance:
        monkeypatch.setenv("POSTFORGE_JUDGE_URL", server.base_url)
        monkeypatch.setenv("POSTFORGE_JUDGE_API_KEY", SECRET)
        judge = judge_resource()
        assert judge.backend == "openai"
        result = rank_with(judge, out, instance)
        assert result.success and len(server.log) >= 4  # the endpoint was reached
        address = server.base_url.split("//")[1]
        run = instance.get_run_by_id(result.run_id)
        # the instance stores snapshots compressed: read them back rather than grep its files
        stored = dg.serialize_value(instance.get_job_snapshot(run.job_snapshot_id))
        assert "POSTFORGE_JUDGE_URL" in stored  # the variable's name stands in for its value
        assert address not in stored and SECRET not in stored
        assert address not in dg.serialize_value(run)
    for path in [*out.rglob("*"), *home.rglob("*")]:
        if path.is_file():
            data = path.read_bytes()
            assert SECRET.encode() not in data and address.encode() not in data, path
