"""Candidate sets from what the data already has, merged with model samples by prompt.

- UltraFeedback completions and OpenAssistant siblings come back out of the ingested preference
  table: pairs that share a source and a prompt are one ranked set, and the source's own ranking
  is recovered from the pairs (``source_sets``). That ranking is the human (OpenAssistant) or
  GPT-4 (UltraFeedback) reference a judge is measured against.
- The human reference answer and a synthetic task's checkable answer come from the curated
  conversations (``references``).
- ``merge_candidates`` joins all of it with the candidates stage's samples on the prompt.
"""

from __future__ import annotations

import json
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from curation.feedback.schema import (
    CANDIDATES,
    candidate_id,
    candidates_frame,
    prompt_id,
    prompt_key,
    rankings_frame,
    same_text,
)

# Sources whose conversations end in a model's answer, not a person's: their "reference" is not
# a human reference answer (UltraFeedback keeps the best-rated completion, HH the chosen reply).
MODEL_WRITTEN_SOURCES: tuple[str, ...] = ("ultrafeedback", "hh")

SOURCE_SETS = pl.Schema(
    {
        "source": pl.String,
        "prompt": CANDIDATES["prompt"],
        "texts": pl.List(pl.String),
        "ranks": pl.List(pl.Int64),
        "origin": pl.String,
        "judge": pl.String,
        "meta": pl.String,
    }
)


def _scores(size: int, edges: list[tuple[int, int, float | None]]) -> tuple[list[float], str]:
    """A score per text from (better, worse, margin) pairs.

    With every margin known and the pairs connecting all texts, scores are potentials
    (score[better] - score[worse] = margin), which recovers the source's ranking with its ties
    (OpenAssistant ranks, UltraFeedback ratings up to a constant). Otherwise (unknown margins,
    pairs lost to curation, contradictions) each text scores its wins minus losses.
    """
    if all(margin is not None for _, _, margin in edges):
        neighbours: dict[int, list[tuple[int, float]]] = defaultdict(list)
        for better, worse, margin in edges:
            neighbours[better].append((worse, -float(margin)))
            neighbours[worse].append((better, float(margin)))
        potential: dict[int, float] = {0: 0.0}
        queue = deque([0])
        while queue:
            node = queue.popleft()
            for other, step in neighbours[node]:
                if other not in potential:
                    potential[other] = potential[node] + step
                    queue.append(other)
        consistent = all(
            abs(potential[b] - potential[w] - float(m)) < 1e-6
            for b, w, m in edges
            if b in potential and w in potential
        )
        if len(potential) == size and consistent:
            return [potential[i] for i in range(size)], "margins"
    wins = [0.0] * size
    for better, worse, _ in edges:
        wins[better] += 1
        wins[worse] -= 1
    return wins, "wins"


def dense_ranks(scores: list[float]) -> list[int]:
    """1 for the highest score; equal scores share a rank."""
    levels = sorted({round(s, 9) for s in scores}, reverse=True)
    position = {level: rank for rank, level in enumerate(levels, start=1)}
    return [position[round(s, 9)] for s in scores]


def _judge_name(source: str, origin: str, judge: str | None) -> str:
    if origin == "human" or not judge:
        return f"{source}:{origin}"
    try:
        model = json.loads(judge).get("model")
    except (json.JSONDecodeError, AttributeError):
        model = None
    return f"{source}:{model or origin}"


def source_sets(preferences: pl.DataFrame) -> pl.DataFrame:
    """One ranked candidate set per prompt of the source (pairs sharing a source, the source's
    prompt id and the prompt) of a PREFERENCES table, in SOURCE_SETS."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    columns = ("source", "source_ids", "prompt", "chosen", "rejected", "origin", "margin", "judge")
    for source, source_ids, prompt, chosen, rejected, origin, margin, judge in preferences.select(
        columns
    ).iter_rows():
        if not chosen or not rejected:
            continue
        # The source's own prompt id (OpenAssistant's prompt message, an UltraFeedback row) comes
        # first in source_ids: equal prompt texts in two trees were ranked by different people.
        key = (source, (source_ids or [""])[0], prompt_key(prompt))
        group = groups.get(key)
        if group is None:
            group = groups[key] = {
                "source": source,
                "prompt": prompt,
                "index": {},
                "edges": [],
                "origin": origin,
                "judge": judge,
            }
        index = group["index"]
        better = index.setdefault(same_text(chosen[-1]["content"]), len(index))
        worse = index.setdefault(same_text(rejected[-1]["content"]), len(index))
        if better != worse:
            group["edges"].append((better, worse, margin))
    rows = []
    for group in groups.values():
        texts = list(group["index"])
        scores, method = _scores(len(texts), group["edges"])
        rows.append(
            {
                "source": group["source"],
                "prompt": group["prompt"],
                "texts": texts,
                "ranks": dense_ranks(scores),
                "origin": group["origin"],
                "judge": _judge_name(group["source"], group["origin"], group["judge"]),
                "meta": json.dumps(
                    {"pairs": len(group["edges"]), "ranked_by": method, "judge": group["judge"]}
                ),
            }
        )
    if not rows:
        return pl.DataFrame(schema=SOURCE_SETS)
    return pl.DataFrame(rows, schema=SOURCE_SETS)


def _answer(meta: dict[str, Any], reference: str | None) -> tuple[str | None, str | None]:
    """(checkable answer, task kind) as the synthetic sources record them: ``answer`` and
    ``task`` in chat meta; ``correct_answers`` on UltraFeedback rows whose ``source`` is
    "synthetic"; the target itself for FLAN rows of ``task_source`` "Synthetic"."""
    if isinstance(meta.get("answer"), str):
        return meta["answer"], meta.get("task")
    if meta.get("source") == "synthetic" and meta.get("correct_answers"):
        # These rows do not name their task kind; of the kinds, only "uppercase" has (and
        # needs, since its check keeps case) an all-capitals answer.
        answer = str(meta["correct_answers"][0])
        return answer, "uppercase" if answer.isupper() else None
    if meta.get("task_source") == "Synthetic" and reference is not None:
        task = str(meta.get("task_name") or "").removeprefix("synthetic_") or None
        return reference, task
    return None, None


def references(
    conversations: pl.DataFrame, model_written: Iterable[str] = MODEL_WRITTEN_SOURCES
) -> dict[str, dict[str, Any]]:
    """Prompt key → {id, source, prompt, reference, answer, task} from (curated) conversations:
    the prompt is everything up to the last user turn, the reference the assistant turn that
    answers it. The first conversation of a prompt gives the id; later ones fill what it lacks."""
    model_written = set(model_written)
    found: dict[str, dict[str, Any]] = {}
    for row_id, source, messages, meta in conversations.select(
        "id", "source", "messages", "meta"
    ).iter_rows():
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if not users:
            continue
        last = users[-1]
        prompt = messages[: last + 1]
        key = prompt_key(prompt)
        answer_turn = messages[last + 1] if last + 1 < len(messages) else None
        reference = None
        if answer_turn is not None and answer_turn["role"] == "assistant":
            reference = answer_turn["content"]
        parsed = json.loads(meta) if meta else {}
        answer, task = _answer(parsed if isinstance(parsed, dict) else {}, reference)
        values = {
            "id": row_id,
            "source": source,
            "prompt": prompt,
            "reference": None if source in model_written else reference,
            "answer": answer,
            "task": task,
        }
        if key not in found:
            found[key] = values
            continue
        # The same prompt in another source: fill what the first one lacked (a model-written
        # UltraFeedback answer gives no reference; the chat copy of the task does).
        for name, value in values.items():
            if found[key][name] is None:
                found[key][name] = value
    return found


@dataclass(frozen=True)
class MergeCandidatesConfig:
    """Attributes:
    max_candidates: a set is cut to this many (a judge ranks at most 9): the reference first,
        then the source's completions best first, then model samples.
    min_candidates: sets with fewer candidates are left out (nothing to compare) and counted.
    include_reference: add the human reference answer as a candidate, which is what the
        generation-versus-judgment gap compares model outputs against.
    model_written_sources: sources whose conversation answers are model outputs, so they give
        no human reference.
    """

    max_candidates: int = 9
    min_candidates: int = 2
    include_reference: bool = True
    model_written_sources: tuple[str, ...] = field(default=MODEL_WRITTEN_SOURCES)

    def __post_init__(self) -> None:
        if not 2 <= self.min_candidates <= self.max_candidates:
            raise ValueError(
                f"min_candidates/max_candidates: expected 2 <= min <= max, got "
                f"{self.min_candidates}/{self.max_candidates}"
            )


def merge_candidates(
    model_candidates: pl.DataFrame | None = None,
    sets: pl.DataFrame | None = None,
    conversations: pl.DataFrame | None = None,
    config: MergeCandidatesConfig = MergeCandidatesConfig(),
) -> tuple[pl.DataFrame, dict[str, int]]:
    """The candidates table: model samples (``training.candidates`` output) merged by prompt with
    the sources' completions (``source_sets``) and the reference answers and checkable answers
    of ``conversations``. Identical texts (up to surrounding whitespace) are kept once."""
    refs = (
        references(conversations, config.model_written_sources) if conversations is not None else {}
    )
    entries: dict[str, dict[str, Any]] = {}

    def entry(key: str, row_id: str | None, source: str, prompt: list[dict]) -> dict[str, Any]:
        if key not in entries:
            ref = refs.get(key, {})
            entries[key] = {
                "id": row_id or ref.get("id") or prompt_id(source, prompt),
                "source": source,
                "prompt": prompt,
                "reference": ref.get("reference"),
                "answer": ref.get("answer"),
                "task": ref.get("task"),
                "dataset": [],
                "model": [],
            }
        return entries[key]

    if model_candidates is not None:
        for row in model_candidates.iter_rows(named=True):
            found = entry(prompt_key(row["prompt"]), row["id"], row["source"], row["prompt"])
            found["model"].extend(row["candidates"])
            for name in ("reference", "answer", "task"):
                if row.get(name) is not None:
                    found[name] = row[name]
    if sets is not None:
        for row in sets.iter_rows(named=True):
            found = entry(prompt_key(row["prompt"]), None, row["source"], row["prompt"])
            ordered = sorted(zip(row["ranks"], row["texts"], strict=True), key=lambda x: x[0])
            found["dataset"].extend(
                {
                    "candidate_id": candidate_id("dataset", row["source"], "", text),
                    "text": text,
                    "origin": "dataset",
                    "model": row["source"],
                    "sampling": "",
                }
                for _, text in ordered
            )

    report = {"sets": 0, "duplicates_removed": 0, "cut_to_max": 0, "too_few_candidates": 0}
    rows = []
    for found in entries.values():
        pool = []
        if config.include_reference and found["reference"]:
            text = found["reference"]
            pool.append(
                {
                    "candidate_id": candidate_id("reference", found["source"], "", text),
                    "text": text,
                    "origin": "reference",
                    "model": found["source"],
                    "sampling": "",
                }
            )
        pool += found["dataset"] + found["model"]
        seen: set[str] = set()
        kept = []
        for candidate in pool:
            text = same_text(candidate["text"])
            if not text or text in seen:
                report["duplicates_removed"] += 1
                continue
            seen.add(text)
            kept.append(candidate)
        if len(kept) > config.max_candidates:
            report["cut_to_max"] += len(kept) - config.max_candidates
            kept = kept[: config.max_candidates]
        if len(kept) < config.min_candidates:
            report["too_few_candidates"] += 1
            continue
        rows.append({**{k: found[k] for k in CANDIDATES if k != "candidates"}, "candidates": kept})
    report["sets"] = len(rows)
    report["candidates"] = sum(len(r["candidates"]) for r in rows)
    return candidates_frame(rows), report


def source_rankings(sets: pl.DataFrame, candidates: pl.DataFrame) -> pl.DataFrame:
    """The sources' own rankings as a rankings table over the merged candidate ids, so a judge
    can be scored against them (``curation.feedback.quality``)."""
    by_key = {
        prompt_key(prompt): (row_id, {same_text(c["text"]): c["candidate_id"] for c in found})
        for row_id, prompt, found in candidates.select("id", "prompt", "candidates").iter_rows()
    }
    rows = []
    for row in sets.iter_rows(named=True):
        match = by_key.get(prompt_key(row["prompt"]))
        if match is None:
            continue
        row_id, ids = match
        kept = [(ids[t], t, r) for t, r in zip(row["texts"], row["ranks"], strict=True) if t in ids]
        if len(kept) < 2:
            continue
        rows.append(
            {
                "id": row_id,
                "judge": row["judge"],
                "origin": row["origin"],
                "candidate_ids": [k[0] for k in kept],
                "texts": [k[1] for k in kept],
                "ranks": dense_ranks([-float(k[2]) for k in kept]),
                "status": "ok",
                "consistent": None,
                "meta": json.dumps({"source": row["source"], **json.loads(row["meta"] or "{}")}),
            }
        )
    return rankings_frame(rows)
