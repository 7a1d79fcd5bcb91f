"""Row-level lineage: from a checkpoint back to the raw rows behind it, and from one raw row forward
to every verdict, dataset and checkpoint it reached.

Everything is read from the files the pipeline already writes under the outputs folder (raw
assets with provenance, ledgers, exported datasets, each checkpoint's lineage.json), so a trace
needs no Dagster instance and works on outputs copied to another machine. Recorded absolute
paths that no longer exist are re-anchored under the outputs folder by their longest existing
tail, and the report shows both paths, so relocation is visible rather than silent.

A checkpoint is credited with a row only as far as its lineage can prove it: the dataset's row
ids and file contents must still hash to what training recorded (``row_ids_sha256``,
``data_sha256``), the row must not be among the stage's ``row_ids_left_out``, and each parent
and reward model must still be the checkpoint the stage was trained with (their lineage digests).
Anything short of that is listed as unverified with the reason, never dropped: a row removed
from a dataset since training keeps the checkpoints that may have learnt from it.

The results are plain dicts (JSON-ready) so the CLI can print them and an asset can attach them
as metadata; ``format_*`` turn them into text tables.

The package splits that work by what each part reads or decides: ``catalog`` (the rows, rejects
and ledgers of an outputs folder, read through ``parquet``), ``datasets`` (an exported dataset's
ids and digests), ``locate`` and ``lineage`` (where a recorded checkpoint is now, and what its
lineage.json says), ``trained_data`` and ``checkpoint`` (checkpoint back to raw rows),
``claims`` and ``row`` (raw row forward to checkpoints), ``render`` (text tables), ``errors``
(TraceError). Import from here: the names below are the public API.
"""

from curation.trace.catalog import FEEDBACK_PAIRS, Catalog, load_catalog
from curation.trace.checkpoint import checkpoint_chain, checkpoint_records, trace_checkpoint
from curation.trace.claims import (
    CHANGED,
    CONTENT_CHANGED,
    GONE,
    LEFT_OUT,
    REWARD,
    TRAINED,
    UNVERIFIED,
)
from curation.trace.datasets import (
    content_check,
    dataset_files,
    dataset_ids,
    hf_dataset_ids,
    ids_sha256,
    missing_dataset_files,
)
from curation.trace.errors import TraceError
from curation.trace.lineage import (
    MODEL_INPUTS,
    left_out_ids,
    lineage_inputs,
    lineage_sha256,
    model_inputs,
    parent_pin,
    read_lineage,
)
from curation.trace.locate import LINEAGE, all_checkpoints, checkpoint_folder, relocate
from curation.trace.render import format_checkpoint_trace, format_row_trace, table
from curation.trace.row import trace_row

__all__ = [
    "CHANGED",
    "CONTENT_CHANGED",
    "FEEDBACK_PAIRS",
    "GONE",
    "LEFT_OUT",
    "LINEAGE",
    "MODEL_INPUTS",
    "REWARD",
    "TRAINED",
    "UNVERIFIED",
    "Catalog",
    "TraceError",
    "all_checkpoints",
    "checkpoint_chain",
    "checkpoint_folder",
    "checkpoint_records",
    "content_check",
    "dataset_files",
    "dataset_ids",
    "format_checkpoint_trace",
    "format_row_trace",
    "hf_dataset_ids",
    "ids_sha256",
    "left_out_ids",
    "lineage_inputs",
    "lineage_sha256",
    "load_catalog",
    "missing_dataset_files",
    "model_inputs",
    "parent_pin",
    "read_lineage",
    "relocate",
    "table",
    "trace_checkpoint",
    "trace_row",
]
