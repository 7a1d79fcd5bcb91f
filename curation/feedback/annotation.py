"""Candidate sets out to people and their rankings back, through Label Studio or Argilla.

Export writes what each tool imports as-is: Label Studio tasks JSON plus its labeling config (a
List + Ranker to order all answers, or Pairwise tasks, one per pair, sides shuffled under a seed
so neither position is always the first candidate), and Argilla v2 records JSON
(``Dataset.records.log`` / ``records.to_json`` shape) plus the settings to create the dataset
with. Import reads the tools' exports back into the rankings table with origin "human" and the
annotator's id in ``judge`` and ``meta``, so human rankings flow through the same pairs stage as
AI ones. A file that does not have the expected shape fails naming the file, the task index and
the field; cancelled, discarded or empty annotations are counted, not errors.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

import polars as pl

from curation.feedback.schema import rankings_frame, render_prompt

Mode = Literal["ranker", "pairwise"]
RANKER, LIST = "rank", "answers"
PAIRWISE = "preference"
ARGILLA_QUESTION = "ranking"


class AnnotationError(ValueError):
    """An annotation export that cannot be read as written."""


def label_studio_config(mode: Mode = "ranker") -> str:
    """The labeling config (XML) that matches ``export_label_studio``'s tasks."""
    if mode == "ranker":
        return (
            "<View>\n"
            '  <Header value="Rank the answers from best (top) to worst"/>\n'
            '  <Text name="prompt" value="$prompt"/>\n'
            f'  <List name="{LIST}" value="$candidates" title="Answers"/>\n'
            f'  <Ranker name="{RANKER}" toName="{LIST}"/>\n'
            "</View>\n"
        )
    if mode == "pairwise":
        return (
            "<View>\n"
            '  <Header value="Select the better answer"/>\n'
            '  <Text name="prompt" value="$prompt"/>\n'
            f'  <Pairwise name="{PAIRWISE}" toName="left,right"/>\n'
            '  <Text name="left" value="$left"/>\n'
            '  <Text name="right" value="$right"/>\n'
            "</View>\n"
        )
    raise ValueError(f"mode: expected 'ranker' or 'pairwise', got {mode!r}")


def _write_json(path: Path, value: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(value, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, path)
    return path


def _swap(seed: int, *keys: str) -> bool:
    digest = hashlib.blake2b("\x1f".join((str(seed), *keys)).encode(), digest_size=1).digest()
    return digest[0] % 2 == 1


def label_studio_tasks(
    candidates: pl.DataFrame, mode: Mode = "ranker", seed: int = 0
) -> list[dict]:
    label_studio_config(mode)  # validates the mode
    tasks = []
    for row in candidates.iter_rows(named=True):
        common = {
            "prompt_id": row["id"],
            "source": row["source"],
            "prompt": render_prompt(row["prompt"]),
        }
        found = row["candidates"]
        if mode == "ranker":
            items = [
                {"id": c["candidate_id"], "title": f"Answer {i}", "body": c["text"]}
                for i, c in enumerate(found, start=1)
            ]
            tasks.append({"data": {**common, "candidates": items}})
            continue
        for first, second in combinations(found, 2):
            if _swap(seed, row["id"], first["candidate_id"], second["candidate_id"]):
                first, second = second, first
            tasks.append(
                {
                    "data": {
                        **common,
                        "left_id": first["candidate_id"],
                        "left": first["text"],
                        "right_id": second["candidate_id"],
                        "right": second["text"],
                    }
                }
            )
    return tasks


def export_label_studio(
    candidates: pl.DataFrame, out_dir: str | Path, mode: Mode = "ranker", seed: int = 0
) -> dict[str, Any]:
    """Write ``label_studio_tasks.json`` and ``label_studio_config.xml`` into ``out_dir``."""
    out = Path(out_dir)
    tasks = label_studio_tasks(candidates, mode, seed)
    path = _write_json(out / "label_studio_tasks.json", tasks)
    config = out / "label_studio_config.xml"
    config.write_text(label_studio_config(mode), encoding="utf-8")
    return {"tasks": len(tasks), "path": str(path), "config": str(config), "mode": mode}


def _load(path: Path) -> list:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AnnotationError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AnnotationError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(value, list):
        raise AnnotationError(f"{path}: expected a JSON list, got {type(value).__name__}")
    return value


class _Reader:
    """Typed field access on one task that names the file, the task index and the field path in
    every error."""

    def __init__(self, path: Path, index: int) -> None:
        self.path, self.index = path, index

    def fail(self, field: str, problem: str) -> AnnotationError:
        return AnnotationError(f"{self.path}: task {self.index}: {field}: {problem}")

    def get(self, value: Any, key: str, kind: type | tuple[type, ...], field: str) -> Any:
        if not isinstance(value, dict) or key not in value or value[key] is None:
            raise self.fail(field, "missing")
        found = value[key]
        if not isinstance(found, kind) or isinstance(found, bool) and kind is not bool:
            names = (
                kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            )
            raise self.fail(field, f"expected {names}, got {type(found).__name__} {found!r:.80}")
        return found


def _annotator(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("email") or value.get("id") or value.get("username") or "unknown")
    return "unknown" if value is None else str(value)


def _ranking_row(
    prompt_id: str, judge: str, ids: list[str], texts: list[str], ranks: list[int], meta: dict
) -> dict:
    return {
        "id": prompt_id,
        "judge": judge,
        "origin": "human",
        "candidate_ids": ids,
        "texts": texts,
        "ranks": ranks,
        "status": "ok",
        "consistent": None,
        "meta": json.dumps(meta, sort_keys=True),
    }


def _label_studio_results(read: _Reader, task: dict) -> Iterator[tuple[dict, dict]]:
    annotations = task.get("annotations", task.get("completions", []))
    if not isinstance(annotations, list):
        raise read.fail("annotations", f"expected a list, got {type(annotations).__name__}")
    for a_index, annotation in enumerate(annotations):
        where = f"annotations[{a_index}]"
        if not isinstance(annotation, dict):
            raise read.fail(where, f"expected an object, got {type(annotation).__name__}")
        if annotation.get("was_cancelled"):
            yield annotation, {}
            continue
        results = read.get(annotation, "result", list, f"{where}.result")
        labels = [
            (r_index, r)
            for r_index, r in enumerate(results)
            if isinstance(r, dict) and r.get("type") in ("ranker", "pairwise")
        ]
        if not labels:
            yield annotation, {}
            continue
        r_index, result = labels[0]
        yield annotation, {"where": f"{where}.result[{r_index}]", **result}


def import_label_studio(path: str | Path) -> tuple[pl.DataFrame, dict[str, int]]:
    """Rankings (origin "human", judge ``label_studio:<annotator>``) from a Label Studio JSON
    export of tasks made by ``export_label_studio`` (either mode)."""
    path = Path(path)
    rows, counts = [], {"tasks": 0, "annotations": 0, "skipped": 0}
    for index, task in enumerate(_load(path)):
        read = _Reader(path, index)
        counts["tasks"] += 1
        data = read.get(task, "data", dict, "data")
        prompt_id = str(read.get(data, "prompt_id", (str, int), "data.prompt_id"))
        for annotation, result in _label_studio_results(read, task):
            if not result:
                counts["skipped"] += 1
                continue
            annotator = _annotator(annotation.get("completed_by"))
            where = result["where"]
            value = read.get(result, "value", dict, f"{where}.value")
            if result["type"] == "ranker":
                ids, texts, ranks = _ranker(read, data, value, where)
            else:
                ids, texts, ranks = _pairwise(read, data, value, where)
            meta = {
                "tool": "label_studio",
                "annotator": annotator,
                "file": str(path),
                "task_index": index,
                "task_id": task.get("id"),
                "annotation_id": annotation.get("id"),
                "type": result["type"],
            }
            rows.append(
                _ranking_row(prompt_id, f"label_studio:{annotator}", ids, texts, ranks, meta)
            )
            counts["annotations"] += 1
    return rankings_frame(rows), counts


def _ranker(read: _Reader, data: dict, value: dict, where: str) -> tuple[list, list, list]:
    items = read.get(data, "candidates", list, "data.candidates")
    texts = {}
    for i, item in enumerate(items):
        item_id = read.get(item, "id", str, f"data.candidates[{i}].id")
        texts[item_id] = read.get(item, "body", str, f"data.candidates[{i}].body")
    ranked = read.get(value, "ranker", dict, f"{where}.value.ranker")
    if len(ranked) != 1:
        raise read.fail(f"{where}.value.ranker", f"expected one ordered list, got {sorted(ranked)}")
    order = next(iter(ranked.values()))
    field = f"{where}.value.ranker.{next(iter(ranked))}"
    if not isinstance(order, list):
        raise read.fail(field, f"expected a list of answer ids, got {type(order).__name__}")
    unknown = [item for item in order if item not in texts]
    if unknown:
        raise read.fail(field, f"unknown answer id {unknown[0]!r}")
    if sorted(order) != sorted(texts):
        missing = sorted(set(texts) - set(order))
        raise read.fail(field, f"every answer must be ranked once; missing {missing}")
    return order, [texts[i] for i in order], list(range(1, len(order) + 1))


def _pairwise(read: _Reader, data: dict, value: dict, where: str) -> tuple[list, list, list]:
    selected = read.get(value, "selected", str, f"{where}.value.selected")
    if selected not in ("left", "right"):
        raise read.fail(f"{where}.value.selected", f"expected 'left' or 'right', got {selected!r}")
    ids = [read.get(data, f"{side}_id", str, f"data.{side}_id") for side in ("left", "right")]
    texts = [read.get(data, side, str, f"data.{side}") for side in ("left", "right")]
    return ids, texts, [1, 2] if selected == "left" else [2, 1]


# --- Argilla -------------------------------------------------------------------------------------


def response_field(index: int) -> str:
    return f"response_{index}"


def argilla_settings(max_candidates: int) -> dict[str, Any]:
    """Fields, question and metadata to create the Argilla v2 dataset with (``rg.Settings``):
    the prompt, one text field per answer slot, and one ranking question over the slots. Sets
    with fewer answers leave the later slots out; their options are ignored on import."""
    slots = [response_field(i) for i in range(1, max_candidates + 1)]
    return {
        "guidelines": "Rank the responses from best (1) to worst; equal ranks are allowed.",
        "fields": [{"name": "prompt", "type": "text", "required": True}]
        + [
            {"name": name, "type": "text", "required": i < 2, "use_markdown": True}
            for i, name in enumerate(slots)
        ],
        "questions": [
            {"name": ARGILLA_QUESTION, "type": "ranking", "values": slots, "required": True}
        ],
        "metadata": [
            {"name": "source", "type": "terms"},
            {"name": "prompt_id", "type": "terms"},
        ],
    }


def argilla_records(candidates: pl.DataFrame) -> list[dict]:
    records = []
    for row in candidates.iter_rows(named=True):
        found = row["candidates"]
        fields = {"prompt": render_prompt(row["prompt"])}
        fields.update({response_field(i): c["text"] for i, c in enumerate(found, start=1)})
        records.append(
            {
                "id": row["id"],
                "fields": fields,
                "metadata": {
                    "prompt_id": row["id"],
                    "source": row["source"],
                    "candidate_ids": [c["candidate_id"] for c in found],
                },
                "suggestions": {},
                "responses": {},
                "vectors": {},
            }
        )
    return records


def export_argilla(candidates: pl.DataFrame, out_dir: str | Path) -> dict[str, Any]:
    """Write ``argilla_records.json`` and ``argilla_settings.json`` into ``out_dir``."""
    out = Path(out_dir)
    records = argilla_records(candidates)
    widest = max((len(r["metadata"]["candidate_ids"]) for r in records), default=2)
    path = _write_json(out / "argilla_records.json", records)
    settings = _write_json(out / "argilla_settings.json", argilla_settings(max(widest, 2)))
    return {"records": len(records), "path": str(path), "settings": str(settings)}


def _argilla_ranks(read: _Reader, value: Any, field: str) -> list[tuple[str, int]]:
    """(slot, rank) from a ranking response: the SDK's ordered list of option values, or the
    server's [{value, rank}] (which allows ties)."""
    if not isinstance(value, list) or not value:
        raise read.fail(field, f"expected a non-empty list, got {value!r:.80}")
    if all(isinstance(v, str) for v in value):
        return [(slot, rank) for rank, slot in enumerate(value, start=1)]
    out = []
    for i, item in enumerate(value):
        slot = read.get(item, "value", str, f"{field}[{i}].value")
        rank = read.get(item, "rank", int, f"{field}[{i}].rank")
        out.append((slot, rank))
    return out


def import_argilla(path: str | Path) -> tuple[pl.DataFrame, dict[str, int]]:
    """Rankings (origin "human", judge ``argilla:<user_id>``) from Argilla v2 records JSON
    (``dataset.records.to_json``) of a dataset made by ``export_argilla``."""
    path = Path(path)
    rows, counts = [], {"records": 0, "annotations": 0, "skipped": 0}
    for index, record in enumerate(_load(path)):
        read = _Reader(path, index)
        counts["records"] += 1
        fields = read.get(record, "fields", dict, "fields")
        metadata = read.get(record, "metadata", dict, "metadata")
        ids = metadata.get("candidate_ids")
        if isinstance(ids, str):
            try:
                ids = json.loads(ids)
            except json.JSONDecodeError:
                raise read.fail("metadata.candidate_ids", "not a JSON list") from None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise read.fail("metadata.candidate_ids", f"expected a list of ids, got {ids!r:.80}")
        prompt_id = str(metadata.get("prompt_id") or read.get(record, "id", str, "id"))
        slots = {response_field(i): cid for i, cid in enumerate(ids, start=1)}
        responses = record.get("responses") or {}
        if not isinstance(responses, dict):
            raise read.fail("responses", f"expected an object, got {type(responses).__name__}")
        answers = responses.get(ARGILLA_QUESTION, [])
        if not isinstance(answers, list):
            raise read.fail(f"responses.{ARGILLA_QUESTION}", "expected a list of responses")
        if not answers:
            counts["skipped"] += 1
        for r_index, response in enumerate(answers):
            where = f"responses.{ARGILLA_QUESTION}[{r_index}]"
            if not isinstance(response, dict):
                raise read.fail(where, f"expected an object, got {type(response).__name__}")
            if response.get("status") in ("discarded", "draft"):
                counts["skipped"] += 1
                continue
            user = str(read.get(response, "user_id", (str, int), f"{where}.user_id"))
            ranked = _argilla_ranks(read, response.get("value"), f"{where}.value")
            unknown = [slot for slot, _ in ranked if not slot.startswith("response_")]
            if unknown:
                raise read.fail(f"{where}.value", f"unknown option {unknown[0]!r}")
            ranked = [(slot, rank) for slot, rank in ranked if slot in slots]
            missing = sorted(set(slots) - {slot for slot, _ in ranked})
            if missing:
                raise read.fail(
                    f"{where}.value", f"every response must be ranked; missing {missing}"
                )
            texts = []
            for slot, _ in ranked:
                texts.append(read.get(fields, slot, str, f"fields.{slot}"))
            meta = {
                "tool": "argilla",
                "annotator": user,
                "file": str(path),
                "task_index": index,
                "record_id": record.get("id"),
            }
            rows.append(
                _ranking_row(
                    prompt_id,
                    f"argilla:{user}",
                    [slots[slot] for slot, _ in ranked],
                    texts,
                    _dense([rank for _, rank in ranked]),
                    meta,
                )
            )
            counts["annotations"] += 1
    return rankings_frame(rows), counts


def _dense(ranks: list[int]) -> list[int]:
    """Ranks renumbered 1, 2, ... (a tool may skip numbers after a tie)."""
    levels = {rank: i for i, rank in enumerate(sorted(set(ranks)), start=1)}
    return [levels[rank] for rank in ranks]
