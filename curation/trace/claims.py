"""Which checkpoints may have learnt from a set of row ids, and how far their lineage proves it:
a claim passes through a parent or reward model only while its pin holds, and a claim that
cannot be verified is listed as such with the reason rather than dropped."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation.trace.datasets import content_check, dataset_ids, hf_dataset_ids, ids_sha256
from curation.trace.lineage import (
    left_out_ids,
    lineage_inputs,
    model_inputs,
    parent_pin,
    read_lineage,
)
from curation.trace.locate import all_checkpoints, relocate

# What a checkpoint's lineage says about a row, best first: trained on it (the dataset's row-id
# hash and content digest are the ones recorded at training); optimised against a reward model
# that was trained on it (PPO, GRPO, RLOO); not verified (the dataset changed since, or a
# parent or the reward model was retrained since); left out by the stage (``row_ids_left_out``).
TRAINED, REWARD, UNVERIFIED, LEFT_OUT = (
    "trained",
    "reward model trained on it",
    "unverified",
    ("left out"),
)
HIT_RANK = {TRAINED: 0, REWARD: 1, UNVERIFIED: 2, LEFT_OUT: 3}
TrainForms = list[tuple[str, set[str]]]
CHANGED = "dataset changed since training"
CONTENT_CHANGED = "dataset content changed since training (rows rewritten under the same ids)"
GONE = (
    "dataset changed since training and does not hold the row now: whether it did then cannot "
    "be checked"
)


@dataclass
class _Datasets:
    """Each dataset folder's train-split forms and content digest, read once per trace however
    many checkpoints name it; the digest only when a claim depends on it."""

    outputs: Path
    forms: dict[Path, TrainForms] = field(default_factory=dict)
    digests: dict[Path, str] = field(default_factory=dict)

    def train_forms(self, folder: Path) -> TrainForms:
        """Each form of a dataset's train split (parquet, and the hf copy training loads when
        there is one) as (ids_sha256, ids)."""
        key = folder.resolve()
        if key not in self.forms:
            forms = (dataset_ids(folder, "train"), hf_dataset_ids(folder, "train"))
            self.forms[key] = [(ids_sha256(ids), set(ids)) for ids in forms if ids is not None]
        return self.forms[key]


def _entry_hit(entry: dict[str, Any], ids: set[str], datasets: _Datasets) -> dict[str, Any] | None:
    """What one dataset a lineage names says about ``ids``: None when it says nothing, else the
    status (TRAINED, UNVERIFIED, LEFT_OUT), why, the dataset's name and whether it holds one of
    ``ids`` now (``in_dataset_now``)."""
    data = relocate(entry.get("data"), datasets.outputs)
    if data is None:
        return None
    forms = datasets.train_forms(data)
    recorded = entry.get("row_ids_sha256")
    left_out = left_out_ids(entry)
    name = entry.get("asset") or data.name
    # The form whose hash the lineage recorded is the split the stage read; when none matches,
    # the current ids only say the row is there now, not that it was there at training.
    trained = next((held for digest, held in forms if recorded and digest == recorded), None)
    present = ids & (trained if trained is not None else set().union(*(f[1] for f in forms)))

    def hit(status: str, why: str | None) -> dict[str, Any]:
        return {"status": status, "why": why, "dataset": name, "in_dataset_now": bool(present)}

    if present and present <= left_out or not present and ids & left_out:
        # row_ids_left_out names rows of the split as the stage read it, wherever it is now
        return hit(LEFT_OUT, "left out by the stage")
    if trained is not None:
        if not present:
            return None  # the split the stage read, and the row is not in it
        content = content_check(entry, data, datasets.outputs, datasets.digests)
        if content is not None and not content["ok"]:
            return hit(UNVERIFIED, CONTENT_CHANGED)
        return hit(TRAINED, None)
    if present:
        return hit(UNVERIFIED, CHANGED if recorded else "lineage records no row-id hash")
    # A row removed from the dataset since training: it may have been trained on, and no
    # record can say; listed as unverified rather than dropped from the trace.
    return hit(UNVERIFIED, GONE) if recorded and forms else None


@dataclass
class _Node:
    """One published checkpoint as the forward trace sees it."""

    folder: str
    stage: str | None
    parent: Path | None = None
    parent_ok: bool = True  # the parent there now is the one this checkpoint was trained from
    reward: Path | None = None
    reward_ok: bool = True
    own: dict[str, Any] | None = None  # best claim of the datasets its lineage names


def _walk(key: Path, nodes: dict[Path, _Node]) -> Iterable[tuple[Path, int, Path | None]]:
    """``key`` and its ancestors among ``nodes``, nearest first, each with its depth and the
    first parent on the way that is not the one its child was trained from (None if none)."""
    yield key, 0, None
    node, depth, seen, retrained = key, 0, {key}, None
    while (parent := nodes[node].parent) is not None and parent not in seen:
        if parent not in nodes:  # outside the checkpoints folder: nothing of ours beyond
            return
        if retrained is None and not nodes[node].parent_ok:
            retrained = parent
        seen.add(parent)
        depth += 1
        yield parent, depth, retrained
        node = parent


def _inherited(key: Path, nodes: dict[Path, _Node]) -> list[tuple[int, dict[str, Any]]]:
    """Claims on ``key`` from its own datasets and its ancestors' (a trained claim past a parent
    retrained since is only unverified; an ancestor that left the row out passes nothing on)."""
    claims = []
    for node, depth, retrained in _walk(key, nodes):
        hit = nodes[node].own
        if hit is None:
            continue
        if node == key:
            claims.append((0, {**hit, "via": "dataset", "ancestor": None}))
            continue
        if hit["status"] == LEFT_OUT:
            continue
        claim = {**hit, "via": "parent", "ancestor": nodes[node].folder}
        if retrained is not None:
            claim.update(status=UNVERIFIED, why=_retrained("parent", nodes[retrained].folder))
        claims.append((depth, claim))
    return claims


def _retrained(what: str, folder: str) -> str:
    return f"{what} retrained since: {folder}"


def _best(claims: list[tuple[int, dict[str, Any]]]) -> dict[str, Any] | None:
    if not claims:
        return None
    return min(claims, key=lambda c: (HIT_RANK[c[1]["status"]], c[0]))[1]


def checkpoint_hits(outputs: Path, ids: set[str]) -> list[dict[str, Any]]:
    """Every checkpoint whose lineage reaches one of ``ids``: through a dataset it names
    (``via: dataset``), an ancestor that did (``via: parent``), or a reward model (its own or an
    ancestor's) that did (``via: reward model``), each with ``status`` and ``why``. A checkpoint
    is listed once, by its best claim (trained, reward model trained on it, unverified, left
    out; a nearer one first). An ancestor's or reward model's claim reaches it only as far as
    each pin holds (``parent_lineage_sha256``, ``reward_model_lineage_sha256``); past one
    retrained since, the claim is only unverified."""
    datasets = _Datasets(outputs)
    nodes: dict[Path, _Node] = {}
    for folder in all_checkpoints(outputs):
        lineage = read_lineage(folder)
        node = _Node(str(folder), lineage.get("stage"))
        parent = relocate(lineage.get("parent_checkpoint"), outputs)
        if parent is not None:
            pin = parent_pin(lineage, parent)
            node.parent, node.parent_ok = parent.resolve(), pin is None or pin["ok"]
        for model in model_inputs(lineage, outputs):
            if model["input"] == "reward_model" and model["checkpoint"] is not None:
                node.reward = Path(model["checkpoint"]).resolve()
                node.reward_ok = model["pin"] is None or model["pin"]["ok"]
        hits = [h for e in lineage_inputs(lineage) if (h := _entry_hit(e, ids, datasets))]
        node.own = min(hits, key=lambda h: HIT_RANK[h["status"]]) if hits else None
        nodes[folder.resolve()] = node
    base = {key: _best(_inherited(key, nodes)) for key in nodes}
    found = []
    for key, node in nodes.items():
        claims = _inherited(key, nodes)
        for at, depth, retrained in _walk(key, nodes):
            reward = nodes[at].reward
            hit = base.get(reward) if reward is not None else None
            if hit is None or hit["status"] not in (TRAINED, UNVERIFIED):
                continue
            claim = {
                **hit,
                "status": REWARD if hit["status"] == TRAINED else UNVERIFIED,
                "why": f"reward model's claim: {hit['why']}" if hit["why"] else None,
                "via": "reward model" if at == key else "parent's reward model",
                "ancestor": nodes[reward].folder,
            }
            if not nodes[at].reward_ok:
                claim.update(status=UNVERIFIED, why=_retrained("reward model", claim["ancestor"]))
            elif retrained is not None:
                claim.update(status=UNVERIFIED, why=_retrained("parent", nodes[retrained].folder))
            claims.append((depth, claim))
        if (best := _best(claims)) is not None:
            found.append({"checkpoint": node.folder, "stage": node.stage, **best})
    return sorted(found, key=lambda h: h["via"] != "dataset")
