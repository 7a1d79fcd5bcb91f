"""`postforge trace` on real outputs: the ingest and curation assets materialized on the embedded
data (plus a raw file with an unreadable line), the real mixtures and exported datasets, and
checkpoint folders whose lineage.json is written the way training writes it (the row-id digest
from training.common, over the dataset as training loads it). No model is trained: lineage is
all a trace reads from a checkpoint."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from assets.ingest import RAW_SOURCES
from assets.io_manager import PolarsParquetIOManager
from assets.resources import StorageResource
from assets.training import RecipeResource
from curation.storage import read_manifest
from curation.trace import (
    TraceError,
    checkpoint_records,
    format_checkpoint_trace,
    format_row_trace,
    trace_checkpoint,
    trace_row,
)
from pipelines.cli import main
from pipelines.definitions import defs

POSTFORGE = str(Path(sys.executable).with_name("postforge"))
ASSETS = {
    *RAW_SOURCES,
    "raw_pretrain",
    "conversations",
    "preferences_human",
    "ingest_rejects",
    "pretrain_corpus",
    "project_tokenizer",
    "curated_conversations",
    "curated_preferences",
    "sft_dataset",
    "preference_dataset",
    "pretrain_dataset",
    "pretrain_mixture",
    "decay_mixture",
}
# stage → (dataset folder, dataset asset, parent stage)
STAGES = {
    "pretrain": ("pretrain_mixture", "pretrain_mixture", None),
    "midtrain": ("decay_mixture", "decay_mixture", "pretrain"),
    "sft": ("sft", "sft_dataset", "midtrain"),
}
EXTRA_FLAN = [
    {
        "inputs": "Name the trace fixture's first colour.",
        "targets": "Vermilion, the fixture's first colour.",
        "task_source": "Flan2021",
        "task_name": "trace_colours",
        "template_type": "zs_noopt",
    },
    {
        "inputs": "Name the trace fixture's second colour.",
        "targets": "Cerulean, the fixture's second colour.",
        "task_source": "Flan2021",
        "task_name": "trace_colours",
        "template_type": "zs_noopt",
    },
]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("outputs")
    extra = tmp_path_factory.mktemp("raw") / "trace_flan.jsonl"
    lines = [json.dumps(row) for row in EXTRA_FLAN] + ['{"inputs": "cut off']
    extra.write_text("\n".join(lines) + "\n", encoding="utf-8")
    selected = [a for a in defs.assets if any(k.to_user_string() in ASSETS for k in a.keys)]
    flan_paths = [*RAW_SOURCES["raw_flan"][1], str(extra)]
    with dg.instance_for_test(temp_dir=str(tmp_path_factory.mktemp("dagster_home"))) as instance:
        result = dg.materialize(
            selected,
            instance=instance,
            resources={
                "io_manager": PolarsParquetIOManager(base_dir=str(out)),
                "storage": StorageResource(base_dir=str(out)),
                "recipe": RecipeResource(path="recipes/test-cpu.yaml"),
            },
            run_config={"ops": {"raw_flan": {"config": {"paths": flan_paths}}}},
        )
    assert result.success
    write_checkpoints(out)
    return out


def write_checkpoints(out: Path) -> None:
    from training.common import ids_digest, load_splits
    from training.datafiles import content_digest

    for day, (stage, (folder, asset, parent)) in enumerate(STAGES.items(), start=1):
        data = out / "datasets" / folder
        checkpoint = out / "checkpoints" / stage / "checkpoint"
        checkpoint.mkdir(parents=True)
        parent_folder = out / "checkpoints" / parent / "checkpoint" if parent else None
        inputs = {
            "asset": asset,
            "data": str(data),
            "data_sha256": content_digest(data),
            "row_ids_sha256": ids_digest(load_splits(data)["train"]),
        }
        if stage == "sft":
            inputs["row_ids_left_out"] = []  # conversations with no answer within max_length
        lineage = {
            "stage": stage,
            "inputs": inputs,
            "parent_checkpoint": str(parent_folder) if parent_folder else None,
            # pins the parent run, as training.runs.lineage_record does
            "parent_lineage_sha256": lineage_digest(parent_folder) if parent_folder else None,
            "metrics": {},
            "code_version": "test",
            "finished_at": f"2025-01-0{day}T00:00:00Z",
        }
        write_lineage(checkpoint, lineage)


def lineage_digest(checkpoint: Path) -> str:
    return hashlib.sha256((checkpoint / "lineage.json").read_bytes()).hexdigest()


def write_lineage(checkpoint: Path, lineage: dict) -> None:
    checkpoint.mkdir(parents=True, exist_ok=True)
    (checkpoint / "lineage.json").write_text(json.dumps(lineage), encoding="utf-8")


def read_lineage(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "lineage.json").read_text(encoding="utf-8"))


def sft_checkpoint(out: Path) -> Path:
    return out / "checkpoints" / "sft" / "checkpoint"


def read_table(
    out: Path, name: str, member: str | None = None, columns: list[str] | None = None
) -> pl.DataFrame:
    """An asset's rows: its whole file, or the parts its manifest names."""
    whole = out / f"{name}.parquet"
    if whole.is_file():
        return pl.read_parquet(whole, columns=columns)
    table = read_manifest(out / name)
    assert table is not None and table.parts, f"{out / name}: no manifest"
    frame = table.scan(member)
    return (frame.select(columns) if columns else frame).collect()


def provenance(out: Path) -> pl.DataFrame:
    return (
        pl.concat(
            [
                read_table(out, "conversations", columns=["id", "provenance"]),
                read_table(out, "pretrain_corpus", columns=["id", "provenance"]),
            ]
        )
        .with_columns(file=pl.col("provenance").struct.field("file"))
        .drop("provenance")
    )


def train_files(out: Path, dataset: str) -> list[Path]:
    """A dataset's train split: the whole export's file, or each part's (exports by parts)."""
    folder = out / "datasets" / dataset
    if (folder / "train.parquet").is_file():
        return [folder / "train.parquet"]
    table = read_manifest(folder / "parts")
    assert table is not None, f"{folder}: neither train.parquet nor parts/"
    return table.paths("train")


def train_ids(out: Path, dataset: str) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(f, columns=["id"]) for f in train_files(out, dataset)])


def test_checkpoint_trace_follows_the_parent_chain_to_datasets_files_and_counts(outputs):
    report = trace_checkpoint(sft_checkpoint(outputs), outputs)
    json.dumps(report)  # plain data, ready for asset metadata
    assert report["ok"], report
    assert [s["stage"] for s in report["stages"]] == ["sft", "midtrain", "pretrain"]
    by_stage = {s["stage"]: s["datasets"] for s in report["stages"]}
    for stage, (folder, asset, _) in STAGES.items():
        (dataset,) = by_stage[stage]
        ids = train_ids(outputs, folder)
        assert dataset["dataset"] == asset
        assert dataset["data"] == str(outputs / "datasets" / folder)
        assert dataset["rows"]["train"] == ids.height
        # sft_dataset exports by parts (no save_to_disk copy); the mixtures export whole.
        forms = {"parquet": True} if folder == "sft" else {"parquet": True, "hf": True}
        assert {form: c["ok"] for form, c in dataset["hash_check"].items()} == forms
        expected = dict(ids.join(provenance(outputs), on="id").group_by("file").len().iter_rows())
        assert {r["file"]: r["rows"] for r in dataset["raw_files"]} == expected
        assert sum(r["uses"] for r in dataset["raw_files"]) == ids.height
    sft = by_stage["sft"][0]
    assert {r["asset"] for r in sft["raw_files"]} == set(RAW_SOURCES)
    assert {r["kind"] for r in sft["raw_files"]} == {"conversation"}
    # The drops counted are the curation ledger's, from the files this dataset drew on.
    states = read_table(outputs, "curation_ledger", "states")
    dropped = (
        states.filter(pl.col("state") == "dropped")
        .join(provenance(outputs), left_on="row_id", right_on="id")
        .filter(pl.col("file").is_in([r["file"] for r in sft["raw_files"]]))
        .group_by("rule")
        .len()
    )
    assert sft["dropped"]["curation"] == {
        f"curation_ledger:{rule}": n for rule, n in dropped.iter_rows()
    }
    assert sum(sft["dropped"]["curation"].values()) > 0
    assert sft["dropped"]["excluded_at_ingest"]["ingest.deleted"] >= 1
    records = checkpoint_records(report)
    assert sum(r["raw_rows"] for r in records if r["stage"] == "sft") == sft["rows"]["train"]
    assert all(r["row_ids_ok"] for r in records)
    pretrain_files = {r["file"] for r in by_stage["pretrain"][0]["raw_files"]}
    assert any(f.endswith("pretrain.jsonl") for f in pretrain_files)


def test_unreadable_rows_count_against_the_file_they_came_from(outputs):
    report = trace_checkpoint(sft_checkpoint(outputs), outputs)
    sft = report["stages"][0]["datasets"][0]
    extra = next(r["file"] for r in sft["raw_files"] if r["file"].endswith("trace_flan.jsonl"))
    assert sft["dropped"]["unreadable"] == {extra: 1}


def test_cli_prints_the_checkpoint_table_and_json(outputs, capsys):
    assert main(["trace", str(sft_checkpoint(outputs)), "--outputs", str(outputs)]) == 0
    text = capsys.readouterr().out
    assert "lineage    ok" in text
    assert "dataset sft_dataset" in text and "dataset pretrain_mixture" in text
    assert "row ids parquet ok, hf ok; content ok" in text  # the mixtures, exported whole
    sft_line = next(line for line in text.splitlines() if "dataset sft_dataset" in line)
    assert sft_line.endswith("row ids parquet ok; content ok")  # exported by parts
    assert "synthetic_chat.jsonl" in text
    # A stage folder works as well as its checkpoint/ folder.
    assert (
        main(["trace", str(outputs / "checkpoints" / "sft"), "--outputs", str(outputs), "--json"])
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert [s["stage"] for s in report["stages"]] == ["sft", "midtrain", "pretrain"]


def test_a_kept_row_is_followed_into_its_datasets_and_checkpoints(outputs):
    conversations = read_table(outputs, "conversations", columns=["id", "source_id", "provenance"])
    row = conversations.join(train_ids(outputs, "sft"), on="id").row(0, named=True)
    report = trace_row(row["source_id"], outputs)
    (read,) = [r for r in report["read"] if r["kind"] == "conversation"]
    assert (read["id"], read["file"], read["line"]) == (
        row["id"],
        row["provenance"]["file"],
        row["provenance"]["line"],
    )
    assert read["asset"].startswith("raw_")
    assert {"dataset": "sft", "split": "train", "id": row["id"]}.items() <= next(
        d for d in report["datasets"] if d["dataset"] == "sft"
    ).items()
    sft = next(c for c in report["checkpoints"] if c["stage"] == "sft")
    assert (sft["via"], sft["dataset"]) == ("dataset", "sft_dataset")
    assert report["ingest_rejects"] == {"unreadable": [], "excluded": []}
    states = [s["state"] for s in report["states"] if s["row_id"] == row["id"]]
    assert states in (["kept"], ["rewritten"])
    assert "sft_dataset" in format_row_trace(report)


def test_a_pretraining_row_reaches_later_stages_through_their_parents(outputs):
    used = train_ids(outputs, "pretrain_mixture").join(
        train_ids(outputs, "decay_mixture"), on="id", how="anti"
    )
    corpus = read_table(outputs, "pretrain_corpus", columns=["id", "source_id"])
    source_id = corpus.join(used, on="id")["source_id"][0]
    checkpoints = {c["stage"]: c for c in trace_row(source_id, outputs)["checkpoints"]}
    assert checkpoints["pretrain"]["via"] == "dataset"
    assert checkpoints["midtrain"]["via"] == "parent"
    assert checkpoints["sft"]["via"] == "parent"
    assert checkpoints["sft"]["ancestor"] == checkpoints["pretrain"]["checkpoint"]


def test_a_dropped_row_shows_the_ledger_reason_and_no_dataset(outputs):
    states = read_table(outputs, "curation_ledger", "states")
    dropped = states.filter(pl.col("state") == "dropped").row(0, named=True)
    conversations = read_table(outputs, "conversations", columns=["id", "source_id"])
    source_id = conversations.filter(pl.col("id") == dropped["row_id"])["source_id"][0]
    report = trace_row(source_id, outputs)
    verdicts = [(v["stage"], v["rule"], v["verdict"], v["reason"]) for v in report["verdicts"]]
    assert ("curate", dropped["rule"], "drop", dropped["reason"]) in verdicts
    assert [s["state"] for s in report["states"]] == ["dropped"]
    assert report["datasets"] == [] and report["checkpoints"] == []
    text = format_row_trace(report)
    assert dropped["reason"] in text and "datasets:\n  (none)" in text


def test_rows_rejected_or_excluded_at_ingest_are_found(outputs):
    unreadable = trace_row("trace_flan.jsonl:3", outputs)
    assert unreadable["read"] == []
    (rejected,) = unreadable["ingest_rejects"]["unreadable"]
    assert rejected["file"].endswith("trace_flan.jsonl") and rejected["line"] == 3
    assert rejected["asset"] == "raw_flan"
    ledger = read_table(outputs, "ingest_rejects", "ledger")
    deleted = ledger.filter(pl.col("rule") == "ingest.deleted")["row_id"][0]
    excluded = trace_row(deleted, outputs)
    assert [(e["rule"], e["asset"]) for e in excluded["ingest_rejects"]["excluded"]] == [
        ("ingest.deleted", "raw_oasst")
    ]
    assert excluded["datasets"] == []


def test_an_unknown_id_exits_2_naming_where_it_looked(outputs):
    done = subprocess.run(
        [POSTFORGE, "trace", "--row", "no-such-row-42", "--outputs", str(outputs)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    message = done.stderr.strip()
    assert message.startswith("postforge trace: error: no row with id")
    assert "'no-such-row-42'" in message and str(outputs / "curation_ledger") in message
    assert "Traceback" not in done.stderr
    with pytest.raises(TraceError, match="no such checkpoint folder"):
        trace_checkpoint(outputs / "checkpoints" / "dpo", outputs)


def test_a_tampered_dataset_and_a_lost_parent_break_the_chain(outputs, tmp_path, capsys):
    # A copy: lineage still names the original paths, which the trace re-anchors in the copy.
    copy = tmp_path / "outputs"
    shutil.copytree(outputs, copy)
    train = train_files(copy, "sft")[0]
    frame = pl.read_parquet(train)
    assert frame.height > 0
    frame.with_columns(
        id=pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("f" * 16)).otherwise("id")
    ).write_parquet(train)
    report = trace_checkpoint(sft_checkpoint(copy), copy)
    sft = report["stages"][0]["datasets"][0]
    assert sft["data"] == str(copy / "datasets" / "sft")
    assert {form: c["ok"] for form, c in sft["hash_check"].items()} == {"parquet": False}
    assert not report["ok"]
    assert any("row-id hash mismatch" in p for p in report["stages"][0]["problems"])
    assert sft["unresolved_ids"] == 1
    assert "row ids parquet MISMATCH; content CHANGED\n" in format_checkpoint_trace(report)
    assert report["stages"][1]["problems"] == []  # midtrain's data is untouched
    lineage_file = sft_checkpoint(copy) / "lineage.json"
    lineage = json.loads(lineage_file.read_text())
    gone = copy / "checkpoints" / "gone" / "checkpoint"
    lineage_file.write_text(json.dumps({**lineage, "parent_checkpoint": str(gone)}))
    assert main(["trace", str(sft_checkpoint(copy)), "--outputs", str(copy), "--json"]) == 0
    broken = json.loads(capsys.readouterr().out)
    assert [s["stage"] for s in broken["stages"]] == ["sft", None]
    assert broken["stages"][1]["problems"] == [f"parent checkpoint {gone} not found"]


def test_dataset_ids_read_the_parts_a_manifest_names_and_nothing_else(tmp_path):
    from curation.datasets import PARTS, ExportConfig, export_parts, sft_rows
    from curation.storage import Part
    from curation.trace import dataset_ids

    def rows(prefix: str, n: int) -> pl.DataFrame:
        messages = [
            [{"role": "user", "content": f"{prefix} {i}"}, {"role": "assistant", "content": "ok"}]
            for i in range(n)
        ]
        ids = [f"{prefix}-{i}" for i in range(n)]
        return sft_rows(pl.DataFrame({"id": ids, "source": "s", "messages": messages}))

    drops = {"a": rows("a", 20), "b": rows("b", 10)}
    parts = [(Part(name, "t"), lambda f=frame: f) for name, frame in drops.items()]
    export_parts("sft", parts, tmp_path, ExportConfig(eval_fraction=0.3))
    folder = tmp_path / "sft"
    train, test = dataset_ids(folder, "train"), dataset_ids(folder, "test")
    assert sorted(train + test) == sorted(pl.concat(drops.values())["id"].to_list())
    assert train and test and not set(train) & set(test)
    # A part file no manifest names (a write in progress, a stray copy) is not read.
    stray = folder / PARTS / "stray"
    stray.mkdir()
    drops["a"].write_parquet(stray / "train.parquet")
    assert dataset_ids(folder, "train") == train
    assert dataset_ids(tmp_path / "none", "train") is None


def test_a_parent_retrained_after_its_child_breaks_the_chain(outputs, tmp_path):
    from assets.lineage import lineage_table

    copy = tmp_path / "outputs"
    shutil.copytree(outputs, copy)
    midtrain = copy / "checkpoints" / "midtrain" / "checkpoint"
    # midtrain retrained at the same path under another recipe, after sft was trained from it
    retrained = {**read_lineage(midtrain), "finished_at": "2025-02-01T00:00:00Z"}
    retrained["metrics"] = {"train_loss": 1.5}
    write_lineage(midtrain, retrained)
    report = trace_checkpoint(sft_checkpoint(copy), copy)
    assert not report["ok"]
    # The walk goes on through the midtrain now there, marked as not sft's parent.
    assert [s["stage"] for s in report["stages"]] == ["sft", "midtrain", "pretrain"]
    sft, mid, pre = report["stages"]
    assert sft["problems"] == [] and pre["problems"] == []
    assert mid["pin"] == {
        "recorded": read_lineage(sft_checkpoint(copy))["parent_lineage_sha256"],
        "found": lineage_digest(midtrain),
        "ok": False,
    }
    (problem,) = mid["problems"]
    assert problem.startswith(f"{midtrain} is not the parent sft was trained from")
    assert "this one finished 2025-02-01T00:00:00Z" in problem
    assert "sft finished 2025-01-03T00:00:00Z" in problem
    assert pre["pin"]["ok"]  # the retrained midtrain still starts from this pretrain
    records = checkpoint_records(report)
    assert {r["stage"]: r["pinned_by_child"] for r in records} == {
        "sft": None,
        "midtrain": False,
        "pretrain": True,
    }
    text = format_checkpoint_trace(report)
    assert "lineage    BROKEN" in text
    assert f"== stage midtrain: {midtrain} (NOT the checkpoint its child" in text
    # The Dagster check lineage_is_unbroken fails with the same problem.
    ok, problems, table = lineage_table(StorageResource(base_dir=str(copy)), "sft")
    assert not ok and problems == [problem]
    assert "pinned_by_child" in table
    # Forward, sft no longer inherits pretraining rows as trained: its parent is not the one now.
    used = train_ids(copy, "pretrain_mixture").join(
        train_ids(copy, "decay_mixture"), on="id", how="anti"
    )
    hits = trace_row(used["id"][0], copy)
    assert {c["stage"]: c["via"] for c in hits["checkpoints"]} == {
        "pretrain": "dataset",
        "midtrain": "parent",
    }
    (inherited,) = hits["checkpoints_unverified"]
    assert (inherited["stage"], inherited["why"]) == ("sft", f"parent retrained since: {midtrain}")
    # A lineage written before parent_lineage_sha256 existed pins nothing: it traces as before.
    old = read_lineage(sft_checkpoint(copy))
    del old["parent_lineage_sha256"]
    write_lineage(sft_checkpoint(copy), old)
    report = trace_checkpoint(sft_checkpoint(copy), copy)
    assert report["ok"], report
    assert report["stages"][1]["pin"] is None
    assert lineage_table(StorageResource(base_dir=str(copy)), "sft")[0]


def add_dpo_child(out: Path) -> Path:
    """A DPO checkpoint trained from sft: a descendant of sft, on pairs of its own that hold none
    of the rows traced here (the real preference dataset shares source ids with them)."""
    from training.common import ids_digest, load_splits

    data = out / "datasets" / "dpo_pairs"
    data.mkdir(exist_ok=True)
    pl.DataFrame({"id": ["pair-0"], "prompt": ["p"]}).write_parquet(data / "train.parquet")
    dpo = out / "checkpoints" / "dpo" / "checkpoint"
    write_lineage(
        dpo,
        {
            "stage": "dpo",
            "inputs": {
                "asset": "preference_dataset",
                "data": str(data),
                "row_ids_sha256": ids_digest(load_splits(data)["train"]),
            },
            "parent_checkpoint": str(sft_checkpoint(out)),
            "parent_lineage_sha256": lineage_digest(sft_checkpoint(out)),
            "code_version": "test",
        },
    )
    return dpo


def test_a_row_added_to_the_dataset_after_training_is_not_claimed(outputs, tmp_path):
    copy = tmp_path / "outputs"
    shutil.copytree(outputs, copy)
    add_dpo_child(copy)
    trained = train_ids(copy, "sft")["id"]
    before = {c["stage"]: c for c in trace_row(trained[0], copy)["checkpoints"]}
    assert (before["sft"]["via"], before["dpo"]["via"]) == ("dataset", "parent")
    # A new data drop refreshes sft_dataset with a row sft never saw; sft is not retrained.
    conversations = read_table(copy, "conversations", columns=["id"])
    new_id = conversations.filter(~pl.col("id").is_in(trained.implode()))["id"][0]
    train = train_files(copy, "sft")[0]
    frame = pl.read_parquet(train)
    pl.concat([frame, frame.head(1).with_columns(id=pl.lit(new_id))]).write_parquet(train)
    report = trace_row(new_id, copy)
    assert any(d["dataset"] == "sft" and d["split"] == "train" for d in report["datasets"])
    assert report["checkpoints"] == []
    unverified = {c["stage"]: c for c in report["checkpoints_unverified"]}
    assert set(unverified) == {"sft", "dpo"}
    assert unverified["sft"]["via"] == "dataset"
    assert unverified["sft"]["why"] == "dataset changed since training"
    assert (unverified["dpo"]["via"], unverified["dpo"]["ancestor"]) == (
        "parent",
        str(sft_checkpoint(copy)),
    )
    assert "dataset changed since training" in format_row_trace(report)
    # Rows sft did train on are no longer verifiable either: the split it read is gone.
    assert "sft" not in {c["stage"] for c in trace_row(trained[0], copy)["checkpoints"]}


def test_a_row_the_stage_left_out_is_not_claimed(outputs, tmp_path):
    copy = tmp_path / "outputs"
    shutil.copytree(outputs, copy)
    add_dpo_child(copy)
    left_out, kept = train_ids(copy, "sft")["id"].head(2)
    lineage = read_lineage(sft_checkpoint(copy))
    lineage["inputs"]["row_ids_left_out"] = [left_out]
    write_lineage(sft_checkpoint(copy), lineage)
    add_dpo_child(copy)  # dpo pins the sft lineage as it is now
    report = trace_row(left_out, copy)
    assert report["checkpoints"] == []
    (sft,) = report["checkpoints_unverified"]  # dpo inherits nothing from a row sft left out
    assert (sft["stage"], sft["status"], sft["why"]) == ("sft", "left out", "left out by the stage")
    claimed = {c["stage"]: c["via"] for c in trace_row(kept, copy)["checkpoints"]}
    assert claimed == {"sft": "dataset", "dpo": "parent"}


def _staged(target: Path, kind: str, tables: dict[str, pl.DataFrame]) -> Path:
    """A folder a killed write left beside ``target``, named as curation.folders names them:
    ``tmp`` a new set it was writing, ``old`` the previous set it had moved aside."""
    from curation.folders import _leftover

    folder = _leftover(target, kind)
    folder.mkdir(parents=True)
    for name, frame in tables.items():
        frame.write_parquet(folder / f"{name}.parquet")
    return folder


def test_a_trace_reads_the_current_set_and_never_a_killed_writes_leftovers(outputs, tmp_path):
    """Writes killed mid-way: raw_flan's set moved aside between the renames (raw_flan gone)
    beside a half-written new set; a drop partition the same way; a ledger set with a staging
    copy. The trace reads each set where it is now, under its own name, and nothing staged."""
    from curation.folders import write_tables

    copy = tmp_path / "outputs"
    shutil.copytree(outputs, copy)
    raw_flan = copy / "raw_flan"
    flan = pl.read_parquet(raw_flan / "conversations.parquet")
    row = flan.row(0, named=True)

    def renamed(new_id: str) -> pl.DataFrame:
        ids = {"id": pl.lit(new_id), "source_id": pl.lit(new_id)}
        if "source_ids" in flan.columns:
            ids["source_ids"] = pl.concat_list(pl.lit(new_id))
        return flan.head(1).with_columns(**ids)

    raw_flan.rename(_staged(raw_flan, "old", {}))  # the first rename, as replace_folder does
    _staged(raw_flan, "tmp", {"conversations": renamed("staged-flan-row")})
    drop = copy / "raw_drops" / "2026-11-27"
    write_tables({"conversations": renamed("drop-row")}, drop)
    drop.rename(_staged(drop, "old", {}))
    _staged(drop, "tmp", {"conversations": renamed("staged-drop-row")})
    states = pl.DataFrame(
        {"row_id": [row["id"]], "source": ["flan"], "state": ["dropped"], "rule": ["extra.rule"]},
        schema_overrides={"reason": pl.String},
    ).with_columns(reason=pl.lit("too colourful"))
    ledger = states.select(
        "row_id", stage=pl.lit("extra"), rule="rule", verdict=pl.lit("drop"), reason="reason"
    ).with_columns(score=pl.lit(None, dtype=pl.Float64))
    extra = copy / "extra_ledger"
    write_tables({"ledger": ledger, "states": states}, extra)
    staged_states = states.with_columns(rule=pl.lit("staged.rule"))
    _staged(
        extra,
        "tmp",
        {"ledger": ledger.with_columns(rule=pl.lit("staged.rule")), "states": staged_states},
    )
    assert not raw_flan.exists() and not drop.exists()

    report = trace_row(row["id"], copy)
    assert {(r["id"], r["asset"]) for r in report["read"] if r["kind"] == "conversation"} == {
        (row["id"], "raw_flan")
    }
    assert {(s["asset"], s["rule"]) for s in report["states"] if s["rule"] is not None} >= {
        ("extra_ledger", "extra.rule")
    }
    assert not any(s["asset"].startswith(".") for s in report["states"] + report["verdicts"])
    assert "staged.rule" not in {v["rule"] for v in report["verdicts"]}
    (rejected,) = trace_row("trace_flan.jsonl:3", copy)["ingest_rejects"]["unreadable"]
    assert rejected["asset"] == "raw_flan"
    assert [r["asset"] for r in trace_row("drop-row", copy)["read"]] == ["raw_drops"]
    for staged in ("staged-flan-row", "staged-drop-row"):
        with pytest.raises(TraceError, match="no row with id"):
            trace_row(staged, copy)


# --- content digest, removed rows, left-out rows, feedback pairs, reward models, bad input ------


def copy_outputs(outputs: Path, tmp_path: Path) -> Path:
    """A copy to change: lineage still names the original paths, re-anchored in the copy."""
    copy = tmp_path / "outputs"
    shutil.copytree(outputs, copy)
    return copy


def rewrite_train_part(out: Path, dataset: str, change) -> Path:
    """Apply ``change`` to the first train file of ``dataset`` and write it back in place."""
    train = train_files(out, dataset)[0]
    change(pl.read_parquet(train)).write_parquet(train)
    return train


def test_an_answer_rewritten_under_the_same_id_is_no_longer_claimed_as_trained(outputs, tmp_path):
    from assets.lineage import lineage_table

    copy = copy_outputs(outputs, tmp_path)
    row_id = pl.read_parquet(train_files(copy, "sft")[0], columns=["id"])["id"][0]
    assert "sft" in {c["stage"] for c in trace_row(row_id, copy)["checkpoints"]}

    def repair(frame: pl.DataFrame) -> pl.DataFrame:
        messages = frame["messages"].to_list()
        messages[0][-1]["content"] = "REPAIRED: another answer under the same id"
        return frame.with_columns(pl.Series("messages", messages, dtype=frame["messages"].dtype))

    rewrite_train_part(copy, "sft", repair)
    report = trace_checkpoint(sft_checkpoint(copy), copy)
    assert not report["ok"]
    sft = report["stages"][0]
    (dataset,) = sft["datasets"]
    assert all(c["ok"] for c in dataset["hash_check"].values())  # same ids: the hash is blind
    assert dataset["content_check"]["ok"] is False
    (problem,) = sft["problems"]
    assert problem.startswith("content digest mismatch") and str(copy / "datasets/sft") in problem
    assert "content CHANGED" in format_checkpoint_trace(report)
    assert report["stages"][1]["problems"] == []  # midtrain's mixture is untouched
    # The Dagster check runs the same walk, so it fails too.
    ok, problems, _ = lineage_table(StorageResource(base_dir=str(copy)), "sft")
    assert not ok and problems == [problem]
    forward = trace_row(row_id, copy)
    assert "sft" not in {c["stage"] for c in forward["checkpoints"]}
    (unverified,) = [c for c in forward["checkpoints_unverified"] if c["stage"] == "sft"]
    assert unverified["why"].startswith("dataset content changed since training")
    # A lineage older than data_sha256 claims nothing about content.
    old = read_lineage(sft_checkpoint(copy))
    del old["inputs"]["data_sha256"]
    write_lineage(sft_checkpoint(copy), old)
    assert trace_checkpoint(sft_checkpoint(copy), copy)["ok"]


def test_a_row_removed_after_training_keeps_its_checkpoints_as_unverified(outputs, tmp_path):
    copy = copy_outputs(outputs, tmp_path)
    add_dpo_child(copy)
    first = pl.read_parquet(train_files(copy, "sft")[0], columns=["id"])["id"]
    removed, left_out = first[0], first[1]
    lineage = read_lineage(sft_checkpoint(copy))
    lineage["inputs"]["row_ids_left_out"] = [left_out]
    write_lineage(sft_checkpoint(copy), lineage)
    add_dpo_child(copy)  # dpo pins the sft lineage as it is now
    gone = {removed, left_out}
    rewrite_train_part(copy, "sft", lambda f: f.filter(~pl.col("id").is_in(list(gone))))
    report = trace_row(removed, copy)
    assert not [d for d in report["datasets"] if d["dataset"] == "sft"]
    assert report["checkpoints"] == []  # never claimed as trained: nothing can show it was
    unverified = {c["stage"]: c for c in report["checkpoints_unverified"]}
    assert set(unverified) == {"sft", "dpo"}
    assert unverified["sft"]["via"] == "dataset" and not unverified["sft"]["in_dataset_now"]
    assert "does not hold the row now" in unverified["sft"]["why"]
    assert (unverified["dpo"]["via"], unverified["dpo"]["ancestor"]) == (
        "parent",
        str(sft_checkpoint(copy)),
    )
    assert "does not hold the row now" in format_row_trace(report)
    # A removed row the lineage names as left out was in the split, and not trained on.
    (sft,) = trace_row(left_out, copy)["checkpoints_unverified"]
    assert (sft["stage"], sft["status"]) == ("sft", "left out")


def test_the_checkpoint_trace_counts_rows_the_stage_left_out_apart(outputs, tmp_path):
    copy = copy_outputs(outputs, tmp_path)
    ids = train_ids(copy, "sft")["id"]
    left_out = ids.head(3).to_list()
    lineage = read_lineage(sft_checkpoint(copy))
    lineage["inputs"].update(row_ids_left_out=left_out, rows_used=ids.len() - 3)
    lineage["metrics"] = {"without_answer_within_max_length": 3}
    write_lineage(sft_checkpoint(copy), lineage)
    report = trace_checkpoint(sft_checkpoint(copy), copy)
    assert report["ok"], report
    sft = report["stages"][0]["datasets"][0]
    assert sft["rows"]["train"] == ids.len()
    assert (sft["rows"]["left_out"], sft["rows"]["used"]) == (3, ids.len() - 3)
    assert sum(r["uses"] for r in sft["raw_files"]) == ids.len() - 3
    assert sum(r["rows"] for r in sft["raw_files"]) == ids.len() - 3
    assert sft["left_out"] == {"rows": 3, "reasons": {"without_answer_within_max_length": 3}}
    assert sft["dropped"]["left_out_by_stage"] == {"left out by the stage": 3}
    files = provenance(copy).filter(pl.col("id").is_in(left_out)).group_by("file").len()
    assert sft["left_out_raw_files"] == dict(files.iter_rows())
    assert sft["notes"] == []
    records = checkpoint_records(report)
    assert sum(r["raw_rows"] for r in records if r["stage"] == "sft") == ids.len() - 3
    text = format_checkpoint_trace(report)
    assert "left out by the stage: 3 of the train split's rows" in text
    assert "without_answer_within_max_length 3" in text
    # A lineage whose rows_used disagrees with its left-out ids is shown, not trusted silently.
    lineage["inputs"]["rows_used"] = ids.len() - 5
    write_lineage(sft_checkpoint(copy), lineage)
    (note,) = trace_checkpoint(sft_checkpoint(copy), copy)["stages"][0]["datasets"][0]["notes"]
    assert f"rows_used {ids.len() - 5}" in note


def add_feedback_pair(out: Path) -> tuple[str, str]:
    """An AI-feedback pair built from a conversation no checkpoint here trained on, as
    rankings_to_pairs writes it (``source_ids``: prompt row, chosen and rejected candidates),
    added to feedback_preferences and to the preference dataset's train split. Returns the
    prompt row's id and the pair's id."""
    trained = pl.concat(
        [train_ids(out, d) for d in ("sft", "decay_mixture", "pretrain_mixture")]
    ).unique()
    conversations = read_table(out, "conversations", columns=["id", "source"])
    prompt = conversations.filter(
        (pl.col("source") == "flan") & ~pl.col("id").is_in(trained["id"].implode())
    )["id"][0]
    pair = "feedbackpair00001"
    pl.DataFrame(
        {
            "id": [pair],
            "source": ["flan"],
            "source_id": [f"{prompt}:cand-a>cand-b"],
            "origin": ["ai"],
            "source_ids": [[prompt, "cand-a", "cand-b"]],
        }
    ).write_parquet(out / "feedback_preferences.parquet")
    rewrite_train_part(
        out, "preference", lambda f: pl.concat([f, f.head(1).with_columns(id=pl.lit(pair))])
    )
    return prompt, pair


def stage_lineage(out: Path, stage: str, dataset: str, parent: Path | None, **inputs) -> Path:
    """A checkpoint of ``stage`` trained on ``dataset`` as it is now, written as training does."""
    from training.common import ids_digest, load_splits
    from training.datafiles import content_digest

    data = out / "datasets" / dataset
    checkpoint = out / "checkpoints" / stage / "checkpoint"
    write_lineage(
        checkpoint,
        {
            "stage": stage,
            "inputs": {
                "data": str(data),
                "data_sha256": content_digest(data),
                "row_ids_sha256": ids_digest(load_splits(data)["train"]),
                "row_ids_left_out": [],
                **inputs,
            },
            "parent_checkpoint": str(parent) if parent else None,
            "parent_lineage_sha256": lineage_digest(parent) if parent else None,
            "code_version": "test",
            "finished_at": "2025-01-04T00:00:00Z",
        },
    )
    return checkpoint


def test_an_ai_feedback_pair_is_traced_from_its_prompt_row_and_by_its_own_id(outputs, tmp_path):
    copy = copy_outputs(outputs, tmp_path)
    prompt, pair = add_feedback_pair(copy)
    reward = stage_lineage(
        copy, "reward", "preference", sft_checkpoint(copy), asset="preference_dataset"
    )
    report = trace_row(prompt, copy)
    assert [p["id"] for p in report["feedback_pairs"]] == [pair]
    assert report["feedback_pairs"][0]["source_ids"][0] == prompt
    assert {"dataset": "preference", "split": "train", "id": pair}.items() <= next(
        d for d in report["datasets"] if d["dataset"] == "preference"
    ).items()
    (claim,) = report["checkpoints"]
    assert (claim["stage"], claim["via"], claim["dataset"]) == (
        "reward",
        "dataset",
        "preference_dataset",
    )
    assert pair in format_row_trace(report)
    by_pair = trace_row(pair, copy)
    assert [p["id"] for p in by_pair["feedback_pairs"]] == [pair]
    assert [c["checkpoint"] for c in by_pair["checkpoints"]] == [str(reward)]
    back = trace_checkpoint(reward, copy)
    assert back["ok"], back
    assert back["stages"][0]["datasets"][0]["feedback_pairs"] == 1
    assert "feedback pairs (feedback_preferences): 1 used" in format_checkpoint_trace(back)


def test_reward_models_and_references_are_followed_and_pinned(outputs, tmp_path):
    copy = copy_outputs(outputs, tmp_path)
    prompt, _ = add_feedback_pair(copy)
    sft = sft_checkpoint(copy)
    reward = stage_lineage(copy, "reward", "preference", sft)
    ppo = stage_lineage(
        copy,
        "ppo",
        "sft",
        sft,
        reward_model=str(reward),
        reward_model_lineage_sha256=lineage_digest(reward),
    )
    midtrain = copy / "checkpoints" / "midtrain" / "checkpoint"
    dpo = stage_lineage(
        copy,
        "dpo",
        "preference",
        sft,
        reference_checkpoint=str(midtrain),
        reference_checkpoint_lineage_sha256=lineage_digest(midtrain),
    )
    report = trace_checkpoint(ppo, copy)
    assert report["ok"], report
    stages = [s["stage"] for s in report["stages"]]
    assert stages == ["ppo", "sft", "midtrain", "pretrain", "reward"]
    (model,) = report["stages"][0]["models"]
    assert (model["input"], model["checkpoint"], model["pin"]["ok"]) == (
        "reward_model",
        str(reward),
        True,
    )
    assert report["stages"][-1]["input_of"] == {"role": "reward_model", "of": str(ppo)}
    assert f"== stage reward: {reward} (reward model of {ppo})" in format_checkpoint_trace(report)
    dpo_report = trace_checkpoint(dpo, copy)
    assert dpo_report["ok"] and dpo_report["stages"][0]["models"][0]["pin"]["ok"]
    # Forward: ppo never trained on the prompt, it was optimised against a reward model that did.
    forward = trace_row(prompt, copy)
    assert {c["stage"] for c in forward["checkpoints"]} == {"reward", "dpo"}  # both on the pair
    (scored,) = forward["checkpoints_via_reward_model"]
    assert (scored["stage"], scored["via"], scored["ancestor"]) == (
        "ppo",
        "reward model",
        str(reward),
    )
    assert "optimised against a reward model trained on it" in format_row_trace(forward)
    # The reward model and the reference retrained since: both pins break.
    write_lineage(reward, {**read_lineage(reward), "finished_at": "2025-03-01T00:00:00Z"})
    write_lineage(midtrain, {**read_lineage(midtrain), "finished_at": "2025-03-01T00:00:00Z"})
    broken = trace_checkpoint(ppo, copy)
    assert not broken["ok"]
    (problem,) = broken["stages"][0]["problems"]
    assert problem.startswith(f"reward model {reward} is not the one ppo was trained with")
    assert any(
        p.startswith(f"reference {midtrain} is not the one dpo was trained with")
        for p in trace_checkpoint(dpo, copy)["stages"][0]["problems"]
    )
    (unverified,) = [
        c for c in trace_row(prompt, copy)["checkpoints_unverified"] if c["stage"] == "ppo"
    ]
    assert unverified["why"] == f"reward model retrained since: {reward}"
    # Lineages written before the pins existed follow the models and claim no problem.
    for checkpoint in (ppo, dpo):
        old = read_lineage(checkpoint)
        old["inputs"] = {
            k: v for k, v in old["inputs"].items() if not k.endswith("_lineage_sha256")
        }
        write_lineage(checkpoint, old)
    assert trace_checkpoint(ppo, copy)["stages"][0]["problems"] == []
    assert trace_checkpoint(dpo, copy)["stages"][0]["problems"] == []


def test_a_missing_part_is_a_problem_and_a_cut_off_file_an_error_naming_it(
    outputs, tmp_path, capsys
):
    copy = copy_outputs(outputs, tmp_path)
    part = train_files(copy, "sft")[0]
    part.unlink()
    report = trace_checkpoint(sft_checkpoint(copy), copy)
    assert not report["ok"]
    assert any(p.startswith(f"{part}: named in ") for p in report["stages"][0]["problems"])
    assert report["stages"][0]["datasets"][0]["rows"]["train"] == 0
    cut = part  # back, cut off half-way
    cut.write_bytes((outputs / cut.relative_to(copy)).read_bytes()[:-100])
    with pytest.raises(TraceError, match=f"{cut}: not a readable Parquet file"):
        trace_checkpoint(sft_checkpoint(copy), copy)
    assert main(["trace", str(sft_checkpoint(copy)), "--outputs", str(copy)]) == 2
    err = capsys.readouterr().err
    assert f"{cut}: not a readable Parquet file" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("inputs", lambda lineage: {**lineage, "inputs": "x"}),
        (
            "inputs.row_ids_left_out",
            lambda lineage: {**lineage, "inputs": {**lineage["inputs"], "row_ids_left_out": 5}},
        ),
        ("parent_checkpoint", lambda lineage: {**lineage, "parent_checkpoint": ["a"]}),
    ],
)
def test_a_malformed_lineage_field_is_refused_naming_file_and_field(
    outputs, tmp_path, field, change
):
    copy = copy_outputs(outputs, tmp_path)
    lineage_file = sft_checkpoint(copy) / "lineage.json"
    write_lineage(sft_checkpoint(copy), change(read_lineage(sft_checkpoint(copy))))
    with pytest.raises(TraceError, match=f"{lineage_file}: field {field}: expected"):
        trace_checkpoint(sft_checkpoint(copy), copy)
    row_id = train_ids(copy, "sft")["id"][0]
    with pytest.raises(TraceError, match=f"field {field}: expected"):
        trace_row(row_id, copy)


def test_a_publish_killed_between_its_renames_is_named(outputs, tmp_path):
    copy = copy_outputs(outputs, tmp_path)
    stage = copy / "checkpoints" / "sft"
    aside = stage / ".checkpoint.old-1700000000"
    (stage / "checkpoint").rename(aside)
    for asked in (stage, stage / "checkpoint"):
        with pytest.raises(TraceError, match="killed between its two renames") as error:
            trace_checkpoint(asked, copy)
        assert str(aside) in str(error.value)
    assert trace_checkpoint(aside, copy)["stages"][0]["stage"] == "sft"


def test_the_datasets_a_row_entered_are_listed_in_a_fixed_order(tmp_path):
    # value_counts lists groups in no fixed order: the row trace's table changed between runs
    from curation.trace.row import _dataset_hits

    folder = tmp_path / "datasets" / "sft"
    folder.mkdir(parents=True)
    ids = [f"r{i:03d}" for i in range(200)]
    pl.DataFrame({"id": ids[::-1] + ids[:5]}).write_parquet(folder / "train.parquet")
    hits = _dataset_hits(tmp_path, set(ids))
    assert [h["id"] for h in hits] == ids
    assert [h["rows"] for h in hits[:6]] == [2, 2, 2, 2, 2, 1]
