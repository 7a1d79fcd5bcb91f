"""The trace reports as text tables for a terminal; the JSON form is the report itself."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from curation.trace.catalog import FEEDBACK_PAIRS
from curation.trace.lineage import MODEL_INPUTS


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], indent: str = "  ") -> str:
    """Left-aligned columns; a long cell widens its column rather than being cut."""
    cells = [[_cell(v) for v in row] for row in rows]
    if not cells:
        return f"{indent}(none)"
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [headers, ["-" * w for w in widths], *cells]
    return "\n".join(
        indent + "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    return str(value).replace("\n", " ")


def format_checkpoint_trace(report: dict[str, Any]) -> str:
    lines = [
        f"checkpoint {report['checkpoint']}",
        f"outputs    {report['outputs']}",
        f"lineage    {'ok' if report['ok'] else 'BROKEN'}",
    ]
    for stage in report["stages"]:
        header = f"== stage {stage['stage'] or '?'}: {stage['checkpoint'] or '-'}"
        input_of = stage.get("input_of")
        if input_of:
            header += f" ({MODEL_INPUTS[input_of['role']]} of {input_of['of']})"
        if stage.get("pin") and not stage["pin"]["ok"]:
            who = "stage" if input_of else "child"
            header += f" (NOT the checkpoint its {who} was trained with: retrained since)"
        lines += ["", header]
        for model in stage.get("models", []):
            pin = model["pin"]
            pinned = "not pinned" if pin is None else "pin ok" if pin["ok"] else "pin MISMATCH"
            lines.append(
                f"  {model['role']} {model['checkpoint'] or model['recorded'] + ' (not found)'}:"
                f" {pinned}"
            )
        for dataset in stage["datasets"]:
            lines += _format_dataset(dataset)
        lines += [f"  PROBLEM: {p}" for p in stage["problems"]]
    return "\n".join(lines)


def _format_dataset(dataset: dict[str, Any]) -> list[str]:
    rows = dataset.get("rows", {})
    hashes = dataset.get("hash_check", {})
    verdict = ", ".join(
        f"{form} {'ok' if check['ok'] else 'MISMATCH'}" for form, check in hashes.items()
    )
    content = dataset.get("content_check")
    lines = [
        f"  dataset {dataset['dataset']} ({dataset['data'] or dataset['data_recorded']}): "
        f"train {rows.get('train', '-')} rows ({rows.get('train_unique', '-')} ids), "
        f"test {rows.get('test', '-')}; row ids {verdict or 'not checked'}; content "
        + ("not recorded" if content is None else "ok" if content["ok"] else "CHANGED")
    ]
    left_out = dataset.get("left_out")
    if left_out and left_out["rows"]:
        reasons = ", ".join(f"{k} {n}" for k, n in left_out["reasons"].items())
        lines.append(
            f"  left out by the stage: {left_out['rows']} of the train split's rows, not counted "
            f"as used below" + (f" (the stage's count: {reasons})" if reasons else "")
        )
    raw = dataset.get("raw_files", [])
    lines.append(
        table(
            ["reader", "kind", "raw file", "rows", "uses"],
            [(r["asset"], r["kind"], r["file"], r["rows"], r["uses"]) for r in raw],
        )
    )
    if dataset.get("feedback_pairs"):
        lines.append(f"  feedback pairs ({FEEDBACK_PAIRS}): {dataset['feedback_pairs']} used")
    dropped = dataset.get("dropped", {})
    drop_rows = [(where, key, n) for where, counts in dropped.items() for key, n in counts.items()]
    lines.append("  dropped on the way from the same raw files:")
    lines.append(table(["where", "rule / file", "rows"], drop_rows, indent="    "))
    lines += [f"  NOTE: {n}" for n in dataset.get("notes", [])]
    return lines


UNVERIFIED_COLUMNS = ["stage", "checkpoint", "via", "dataset", "ancestor", "status", "why"]


def _pick(records: Iterable[dict[str, Any]], fields: Sequence[str]) -> list[list[Any]]:
    return [[record[f] for f in fields] for record in records]


def format_row_trace(report: dict[str, Any]) -> str:
    # Feedback pairs and the reward-model and unverified checkpoints are read with a default:
    # a report saved before those sections existed still formats.
    rejects = report["ingest_rejects"]
    sections = [
        (
            "read:",
            ["id", "kind", "source", "source_id", "reader", "file", "line"],
            _pick(report["read"], ["id", "kind", "source", "source_id", "asset", "file", "line"]),
        ),
        (
            "feedback pairs:",
            ["id", "origin", "source", "built from (prompt, chosen, rejected)"],
            _pick(report.get("feedback_pairs", []), ["id", "origin", "source", "source_ids"]),
        ),
        (
            "ingest rejects:",
            ["what", "reader", "row id", "file", "line", "field / rule", "reason"],
            [
                ("unreadable", r["asset"], None, r["file"], r["line"], r["field"], r["reason"])
                for r in rejects["unreadable"]
            ]
            + [
                ("excluded", r["asset"], r["row_id"], None, None, r["rule"], r["reason"])
                for r in rejects["excluded"]
            ],
        ),
        (
            "ledger verdicts:",
            ["ledger", "row id", "stage", "filter", "action", "reason"],
            _pick(report["verdicts"], ["asset", "row_id", "stage", "rule", "verdict", "reason"]),
        ),
        (
            "final state after curation:",
            ["ledger", "row id", "state", "rule", "reason"],
            _pick(report["states"], ["asset", "row_id", "state", "rule", "reason"]),
        ),
        (
            "datasets:",
            ["dataset", "split", "row id", "rows"],
            _pick(report["datasets"], ["dataset", "split", "id", "rows"]),
        ),
        (
            "checkpoints trained on it:",
            ["stage", "checkpoint", "via", "dataset", "trained ancestor"],
            _pick(report["checkpoints"], ["stage", "checkpoint", "via", "dataset", "ancestor"]),
        ),
        (
            "checkpoints optimised against a reward model trained on it:",
            ["stage", "checkpoint", "via", "reward model", "dataset"],
            _pick(
                report.get("checkpoints_via_reward_model", []),
                ["stage", "checkpoint", "via", "ancestor", "dataset"],
            ),
        ),
        (
            "checkpoints that may hold it, not verified as trained on it:",
            UNVERIFIED_COLUMNS,
            _pick(report.get("checkpoints_unverified", []), UNVERIFIED_COLUMNS),
        ),
    ]
    lines = [f"row {report['query']} in {report['outputs']}"]
    for title, headers, rows in sections:
        lines += ["", title, table(headers, rows)]
    return "\n".join(lines)
