"""The UI's own API, end to end: a real ``dagster dev`` on 127.0.0.1 lists the asset graph,
queues a materialization of the curation assets (the daemon dequeues it), and serves the
length profile's histograms as inline PNGs in the materialization's metadata."""

from __future__ import annotations

import pytest
from ui_support import (
    CURATION_GROUPS,
    asset_graph,
    curation_selection,
    dagster_dev,
    inline_pngs,
    latest_materialization,
    launch_materialization,
    location,
    run_assets,
    run_errors,
    run_status,
    wait_for_run,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with dagster_dev(tmp_path_factory.mktemp("ui_graphql")) as running:
        yield running


def test_curation_assets_materialize_through_graphql(server):
    graphql = server.graphql
    graph = asset_graph(graphql)
    assert set(CURATION_GROUPS) <= {n.group for n in graph.values()}
    assert {"conversations", "pretrain_corpus", "project_tokenizer"} <= set(
        graph["length_profile"].parents
    )

    selection = curation_selection(graph)
    assert {"length_profile", "curated_conversations", "sft_dataset"} <= selection
    assert not {k for k in selection if graph[k].group == "training"}
    assert latest_materialization(graphql, "length_profile") is None

    run_id = launch_materialization(graphql, selection)
    assert run_status(graphql, run_id) in {"QUEUED", "NOT_STARTED", "STARTING", "STARTED"}
    status = wait_for_run(server, run_id)
    assert status == "SUCCESS", run_errors(graphql, run_id)
    assert run_assets(graphql, run_id) == selection

    profile = latest_materialization(graphql, "length_profile")
    assert profile is not None and profile.run_id == run_id
    images = inline_pngs(profile.markdown)
    histograms = {image.label for image in images}
    assert {"hist_user_tokens", "hist_assistant_tokens"} <= histograms
    for image in images:
        assert image.alt == image.label
        assert image.width >= 200 and image.height >= 150
    # The outputs landed where POSTFORGE_OUTPUTS pointed the server, not in the project.
    assert (server.outputs / "length_profile.parquet").exists()
    assert sorted(p.name for p in (server.outputs / "length_profile").glob("hist_*.png"))


def test_the_launch_form_offers_one_recipe_for_the_run(server):
    """What the launchpad scaffolds and validates for the demo job: the training recipe is one
    resource setting, defaulting to the demo's recipe, and a misspelt field is refused there."""
    location_name, repository_name = location(server.graphql)
    query = """query($selector: PipelineSelector!, $config: RunConfigData) {
      runConfigSchemaOrError(selector: $selector) { ... on RunConfigSchema {
        rootDefaultYaml
        isRunConfigValid(runConfigData: $config) { __typename }
      } } }"""
    selector = {
        "repositoryLocationName": location_name,
        "repositoryName": repository_name,
        "pipelineName": "demo",
    }

    def schema(config: dict) -> dict:
        return server.graphql(query, selector=selector, config=config)["runConfigSchemaOrError"]

    chosen = schema({"resources": {"recipe": {"config": {"path": "recipes/test-cpu.yaml"}}}})
    assert "recipes/tiny-cpu.yaml" in chosen["rootDefaultYaml"]
    assert chosen["isRunConfigValid"]["__typename"] == "PipelineConfigValidationValid"
    misspelt = schema({"resources": {"recipe": {"config": {"pth": "recipes/test-cpu.yaml"}}}})
    assert misspelt["isRunConfigValid"]["__typename"] == "RunConfigValidationInvalid"
