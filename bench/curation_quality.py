"""Precision and recall of the curation filters on an independent, hand-labelled set.

The set (bench/curation_quality/labelled.jsonl, see its README) was written without looking
at the filters, so these numbers measure the filters rather than echo them. Each row is one
prompt/answer pair labelled clean, reference, pii, options or safety. The script runs the real
pipeline (``curate`` with every filter except duplicates) and, per category, counts a row as
detected when any ledger row for it has a rule named after that category (``pii.email``),
whatever the verdict: the question here is "did the filter notice", not what policy did next.

    .venv/bin/python bench/curation_quality.py               # evaluate, append a result line
    .venv/bin/python bench/curation_quality.py --no-append   # evaluate only
    .venv/bin/python bench/curation_quality.py --self-test   # check the bench itself, no filters

Results are appended to bench/results/curation_quality.jsonl.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run as a plain script from any directory, installed or not
    sys.path.insert(0, str(ROOT))

LABELLED = HERE / "curation_quality" / "labelled.jsonl"
RESULTS = HERE / "results" / "curation_quality.jsonl"
SOURCE = "labelled"

CATEGORIES = ("reference", "pii", "options", "safety")
LABELS = ("clean", *CATEGORIES)
# Safety gets a lower bar: abuse and harmful compliance come in far more surface forms than
# e-mail addresses or "OPTIONS:" headers, so a lexical filter cannot be expected to match them.
TARGET_RECALL = {"reference": 0.9, "pii": 0.9, "options": 0.9, "safety": 0.8}
TARGET_CLEAN_DROPPED = 0.03
# What the set must hold for the numbers to mean anything; --self-test checks it.
MIN_ROWS = {"clean": 120, "reference": 30, "pii": 30, "options": 30, "safety": 30}
MIN_HARD_NEGATIVES = 60
HARD_PREFIX = "hard negative/"  # notes of clean hard negatives: "hard negative/pii+reference: ..."
# Duplicates are off: the set is small and hand-written, and a near-duplicate drop would hide
# whether the content filters noticed the row.
CONFIG: dict[str, Any] = {"duplicates": {"enabled": False}}
REQUIRED = ("id", "label", "prompt", "answer", "note")


@dataclass(frozen=True)
class Row:
    id: str
    label: str
    prompt: str
    answer: str
    note: str
    lang: str
    line: int

    @property
    def hard_families(self) -> frozenset[str]:
        """Categories a clean hard negative imitates, parsed from its note."""
        if self.label != "clean" or not self.note.startswith(HARD_PREFIX):
            return frozenset()
        head = self.note[len(HARD_PREFIX) :].split(":", 1)[0]
        return frozenset(part.strip() for part in head.split("+") if part.strip())


def load(path: Path = LABELLED) -> list[Row]:
    """Read and validate the labelled set; a malformed line fails here, naming its line."""
    rows: list[Row] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_no}: not JSON ({error})") from None
            missing = [key for key in REQUIRED if not isinstance(record.get(key), str)]
            if missing:
                raise ValueError(f"{path}:{line_no}: missing or non-string {missing}")
            if record["label"] not in LABELS:
                raise ValueError(f"{path}:{line_no}: label {record['label']!r} not in {LABELS}")
            if record["id"] in seen:
                raise ValueError(f"{path}:{line_no}: id {record['id']!r} used twice")
            if not record["prompt"].strip() or not record["answer"].strip():
                raise ValueError(f"{path}:{line_no}: empty prompt or answer")
            seen.add(record["id"])
            rows.append(
                Row(
                    id=record["id"],
                    label=record["label"],
                    prompt=record["prompt"],
                    answer=record["answer"],
                    note=record["note"],
                    lang=record.get("lang", "en"),  # only non-English rows carry it
                    line=line_no,
                )
            )
    return rows


def conversations(
    rows: Sequence[Row], file: str = "bench/curation_quality/labelled.jsonl"
) -> pl.DataFrame:
    """Canonical conversations, as a reader would produce them. The row id is used as the
    conversation id so ledger rows map straight back to labels."""
    from curation.schema import CONVERSATIONS, frame

    return frame(
        (
            {
                "id": row.id,
                "source": SOURCE,
                "source_id": row.id,
                "lang": row.lang,
                "messages": [
                    {"role": "user", "content": row.prompt},
                    {"role": "assistant", "content": row.answer},
                ],
                "meta": "{}",
                "provenance": {"file": file, "line": row.line, "ids": []},
            }
            for row in rows
        ),
        CONVERSATIONS,
    )


def missing_filters() -> list[str]:
    """Filter modules the pipeline needs that do not exist yet (duplicates is disabled)."""
    from curation.curate import FILTERS

    modules = {target.split(":")[0] for name, target in FILTERS.items() if name != "duplicates"}
    return sorted(module for module in modules if importlib.util.find_spec(module) is None)


# --- metrics ----------------------------------------------------------------------------------


@dataclass
class CategoryScore:
    positives: int
    detected: int
    true_positives: int

    @property
    def precision(self) -> float | None:
        return self.true_positives / self.detected if self.detected else None

    @property
    def recall(self) -> float | None:
        return self.true_positives / self.positives if self.positives else None

    @property
    def f1(self) -> float | None:
        p, r = self.precision, self.recall
        if p is None or r is None:
            return None
        return 2 * p * r / (p + r) if p + r else 0.0


@dataclass
class Issue:
    """One miss or false positive, with what a developer needs to look at it."""

    id: str
    label: str
    rules: list[str]  # for a false positive: the category's rules; for a miss: all rules
    state: str
    note: str


@dataclass
class Report:
    counts: dict[str, int]
    scores: dict[str, CategoryScore]
    clean_dropped: int
    clean_touched: int
    hard_negatives: dict[str, dict[str, int]]  # family -> rows, flagged by that family, dropped
    misses: dict[str, list[Issue]] = field(default_factory=dict)
    false_positives: dict[str, list[Issue]] = field(default_factory=dict)

    @property
    def clean_dropped_share(self) -> float:
        return self.clean_dropped / self.counts["clean"] if self.counts.get("clean") else 0.0

    @property
    def clean_touched_share(self) -> float:
        return self.clean_touched / self.counts["clean"] if self.counts.get("clean") else 0.0

    def passed(self) -> dict[str, bool]:
        checks = {
            f"{category} recall": (self.scores[category].recall or 0.0) >= target
            for category, target in TARGET_RECALL.items()
        }
        checks["clean dropped"] = self.clean_dropped_share <= TARGET_CLEAN_DROPPED
        return checks


def rules_by_row(ledger: pl.DataFrame) -> dict[str, list[str]]:
    """Every distinct rule that fired on each row, in ledger order."""
    out: dict[str, list[str]] = {}
    for row_id, rule in ledger.select("row_id", "rule").iter_rows():
        rules = out.setdefault(row_id, [])
        if rule not in rules:
            rules.append(rule)
    return out


def evaluate(rows: Sequence[Row], ledger: pl.DataFrame, states: pl.DataFrame) -> Report:
    """Score a pipeline run. ``ledger`` needs row_id and rule (every verdict counts: drop,
    rewrite, flag or keep all mean the filter noticed); ``states`` needs row_id and state."""
    fired = rules_by_row(ledger)
    state_of = dict(states.select("row_id", "state").iter_rows())
    counts = {label: 0 for label in LABELS} | dict(Counter(row.label for row in rows))

    def category_rules(row: Row, category: str) -> list[str]:
        # startswith, not a split on ".", so "references.x" still counts for "reference".
        return [rule for rule in fired.get(row.id, []) if rule.startswith(category)]

    scores: dict[str, CategoryScore] = {}
    misses: dict[str, list[Issue]] = {}
    false_positives: dict[str, list[Issue]] = {}
    for category in CATEGORIES:
        positives = detected = hits = 0
        misses[category], false_positives[category] = [], []
        for row in rows:
            mine = category_rules(row, category)
            is_positive = row.label == category
            positives += is_positive
            detected += bool(mine)
            hits += bool(mine) and is_positive
            state = state_of.get(row.id, "missing")
            if is_positive and not mine:
                # All rules that did fire explain many misses: a row dropped by an earlier
                # filter never reaches the later ones.
                misses[category].append(
                    Issue(row.id, row.label, fired.get(row.id, []), state, row.note)
                )
            elif mine and not is_positive:
                false_positives[category].append(Issue(row.id, row.label, mine, state, row.note))
        scores[category] = CategoryScore(positives, detected, hits)

    clean = [row for row in rows if row.label == "clean"]
    hard: dict[str, dict[str, int]] = {}
    for row in clean:
        for family in sorted(row.hard_families):
            entry = hard.setdefault(family, {"rows": 0, "flagged": 0, "dropped": 0})
            entry["rows"] += 1
            entry["flagged"] += bool(category_rules(row, family))
            entry["dropped"] += state_of.get(row.id) == "dropped"
    return Report(
        counts=counts,
        scores=scores,
        clean_dropped=sum(state_of.get(row.id) == "dropped" for row in clean),
        clean_touched=sum(bool(fired.get(row.id)) for row in clean),
        hard_negatives=hard,
        misses=misses,
        false_positives=false_positives,
    )


# --- output -----------------------------------------------------------------------------------


def fmt(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:5.3f}"


def render(report: Report, limit: int | None = None) -> str:
    lines = [
        "rows: " + ", ".join(f"{label} {report.counts.get(label, 0)}" for label in LABELS),
        "",
        f"{'category':<10} {'pos':>4} {'det':>4} {'tp':>4} {'prec':>6} {'recall':>6} "
        f"{'f1':>6}  target",
    ]
    for category in CATEGORIES:
        score = report.scores[category]
        target = TARGET_RECALL[category]
        ok = "ok" if (score.recall or 0.0) >= target else "BELOW"
        lines.append(
            f"{category:<10} {score.positives:>4} {score.detected:>4} {score.true_positives:>4} "
            f"{fmt(score.precision):>6} {fmt(score.recall):>6} {fmt(score.f1):>6}  "
            f"recall >= {target} {ok}"
        )
    dropped_ok = "ok" if report.clean_dropped_share <= TARGET_CLEAN_DROPPED else "ABOVE"
    lines += [
        "",
        f"clean dropped: {report.clean_dropped}/{report.counts['clean']} "
        f"= {report.clean_dropped_share:.1%}  (target <= {TARGET_CLEAN_DROPPED:.0%}) {dropped_ok}",
        f"clean touched by any rule: {report.clean_touched}/{report.counts['clean']} "
        f"= {report.clean_touched_share:.1%}",
        "",
        "hard negatives by family: rows, flagged by that family's filter, dropped by any rule",
    ]
    for family, entry in sorted(report.hard_negatives.items()):
        lines.append(
            f"  {family:<10} {entry['rows']:>4} rows  {entry['flagged']:>3} flagged  "
            f"{entry['dropped']:>3} dropped"
        )
    for title, issues in (("misses", report.misses), ("false positives", report.false_positives)):
        for category in CATEGORIES:
            found = issues.get(category, [])
            if not found:
                continue
            lines += ["", f"{title} - {category} ({len(found)})"]
            for issue in found[:limit]:
                rules = ", ".join(issue.rules) or "no rule fired"
                lines.append(f"  {issue.id} [{issue.label}, {issue.state}] {rules} :: {issue.note}")
            if limit is not None and len(found) > limit:
                lines.append(f"  ... {len(found) - limit} more")
    return "\n".join(lines)


def machine() -> str:
    return (
        f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, python {platform.python_version()}"
    )


def git_commit() -> str | None:
    """The commit the filters were measured at, with '+dirty' for uncommitted changes: the
    numbers are only comparable between runs when the filter code is known."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "curation"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def record(report: Report, seconds: float, labelled: Path) -> dict[str, Any]:
    def score_dict(score: CategoryScore) -> dict[str, Any]:
        return {
            "positives": score.positives,
            "detected": score.detected,
            "true_positives": score.true_positives,
            "precision": score.precision,
            "recall": score.recall,
            "f1": score.f1,
        }

    def ids(issues: Mapping[str, Iterable[Issue]]) -> dict[str, list[str]]:
        return {category: [issue.id for issue in found] for category, found in issues.items()}

    return {
        "date": date.today().isoformat(),
        "machine": machine(),
        "commit": git_commit(),
        "labelled": str(labelled.relative_to(ROOT) if labelled.is_relative_to(ROOT) else labelled),
        "counts": report.counts,
        "metrics": {category: score_dict(score) for category, score in report.scores.items()},
        "clean_dropped": report.clean_dropped,
        "clean_dropped_share": report.clean_dropped_share,
        "clean_touched": report.clean_touched,
        "clean_touched_share": report.clean_touched_share,
        "hard_negatives": report.hard_negatives,
        "targets": {"recall": TARGET_RECALL, "clean_dropped_share": TARGET_CLEAN_DROPPED},
        "passed": report.passed(),
        "misses": ids(report.misses),
        "false_positives": ids(report.false_positives),
        "seconds": seconds,
    }


# --- self-test --------------------------------------------------------------------------------


def self_test(path: Path = LABELLED) -> None:
    """Checks the bench without any filter: the set loads and is big enough, the frame has the
    canonical schema, and the metrics are right on a hand-made fake run."""
    from curation.schema import CONVERSATIONS, LEDGER

    rows = load(path)
    counts = Counter(row.label for row in rows)
    for label, minimum in MIN_ROWS.items():
        assert counts[label] >= minimum, f"{label}: {counts[label]} rows < {minimum}"
    hard = [row for row in rows if row.hard_families]
    assert len(hard) >= MIN_HARD_NEGATIVES, f"{len(hard)} hard negatives < {MIN_HARD_NEGATIVES}"
    unknown = {family for row in hard for family in row.hard_families} - set(CATEGORIES)
    assert not unknown, f"unknown hard-negative families {unknown}"
    assert all(not row.note.startswith(HARD_PREFIX) for row in rows if row.label != "clean")

    frame = conversations(rows)
    assert frame.schema == CONVERSATIONS, frame.schema
    assert frame.height == len(rows) and frame["id"].n_unique() == len(rows)
    first = frame.row(0, named=True)
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]
    assert first["messages"][0]["content"] == rows[0].prompt
    assert first["provenance"]["line"] == rows[0].line and first["source_id"] == rows[0].id

    # A fake run over six rows: one hit per category, one miss, one false positive that was
    # dropped, and one clean row flagged by a rule outside the four categories.
    fake = [
        Row("r1", "reference", "p", "a", "n", "en", 1),
        Row("r2", "pii", "p", "a", "n", "en", 2),
        Row("r3", "pii", "p", "a", "n", "en", 3),
        Row("r4", "options", "p", "a", "n", "en", 4),
        Row("r5", "clean", "p", "a", "hard negative/pii+reference: x", "en", 5),
        Row("r6", "clean", "p", "a", "plain", "en", 6),
    ]
    ledger = pl.DataFrame(
        {
            "row_id": ["r1", "r2", "r2", "r4", "r5", "r6"],
            "stage": ["curate"] * 6,
            "rule": [
                "references.et_al",  # plural prefix still counts for "reference"
                "pii.email",
                "pii.phone",  # two rules on one row: one detection
                "options.flan",
                "pii.ipv4",
                "quality.too_short",
            ],
            "verdict": ["rewrite", "rewrite", "rewrite", "flag", "drop", "flag"],
            "reason": [""] * 6,
            "score": [None] * 6,
        },
        schema=LEDGER,
    )
    states = pl.DataFrame(
        {
            "row_id": [f"r{i}" for i in range(1, 7)],
            "state": ["rewritten", "rewritten", "kept", "kept", "dropped", "kept"],
        }
    )
    report = evaluate(fake, ledger, states)
    pii = report.scores["pii"]
    assert (pii.positives, pii.detected, pii.true_positives) == (2, 2, 1), pii
    assert pii.precision == 0.5 and pii.recall == 0.5 and pii.f1 == 0.5
    assert report.scores["reference"].recall == 1.0 and report.scores["reference"].precision == 1
    assert report.scores["options"].f1 == 1.0
    assert report.scores["safety"].precision is None and report.scores["safety"].recall is None
    assert [issue.id for issue in report.misses["pii"]] == ["r3"]
    assert [issue.id for issue in report.false_positives["pii"]] == ["r5"]
    assert report.false_positives["pii"][0].rules == ["pii.ipv4"]
    assert report.clean_dropped == 1 and report.clean_touched == 2
    assert report.clean_dropped_share == 0.5
    assert report.hard_negatives == {
        "pii": {"rows": 1, "flagged": 1, "dropped": 1},
        "reference": {"rows": 1, "flagged": 0, "dropped": 1},
    }
    assert report.passed()["clean dropped"] is False
    assert "r3" in render(report) and json.dumps(record(report, 0.0, path))
    print(
        f"self-test ok: {len(rows)} rows ("
        + ", ".join(f"{label} {counts[label]}" for label in LABELS)
        + f"), {len(hard)} hard negatives"
    )


# --- main -------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labelled", type=Path, default=LABELLED, help="the labelled JSONL")
    parser.add_argument("--self-test", action="store_true", help="check the bench, no filters")
    parser.add_argument("--no-append", action="store_true", help=f"do not append to {RESULTS}")
    parser.add_argument("--limit", type=int, default=None, help="list at most N issues each")
    args = parser.parse_args(argv)
    labelled = args.labelled.resolve()

    if args.self_test:
        self_test(labelled)
        return 0

    missing = missing_filters()
    if missing:
        print(
            "curation filters not available yet: missing module(s) "
            + ", ".join(missing)
            + ". Run again once they exist (--self-test works without them).",
            file=sys.stderr,
        )
        return 1
    from curation.curate import build_filters, curate

    rows = load(labelled)
    file = str(labelled.relative_to(ROOT) if labelled.is_relative_to(ROOT) else labelled)
    try:
        filters = build_filters(CONFIG)
    except (ImportError, AttributeError) as error:  # module there, class not (yet)
        print(f"curation filters could not be built: {error}", file=sys.stderr)
        return 1
    start = time.perf_counter()
    result = curate(conversations(rows, file), filters)
    seconds = time.perf_counter() - start

    report = evaluate(rows, result.ledger, result.states)
    print(render(report, args.limit))
    print(f"\ncurate: {seconds:.2f} s for {len(rows)} rows")
    if not args.no_append:
        RESULTS.parent.mkdir(exist_ok=True)
        with RESULTS.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record(report, seconds, labelled)) + "\n")
        print(f"appended to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
