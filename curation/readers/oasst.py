"""OpenAssistant oasst1/oasst2: flat messages or nested trees export, auto-detected per file.

Both shapes are flattened into one pool of messages linked by parent id, so trees may span files
and every later step (exclusions, SFT threads, preference pairs) is written once. Every message
read ends in exactly one place: a conversation thread or a preference pair (or valid but unused,
e.g. a lower-ranked branch that only appears in pairs or nowhere), the ledger (read fine but
excluded: deleted, failed review, spam tree), or the rejected table (bad input: wrong types,
missing parent, cycle, duplicate id, roles out of order).

Roles must alternate from a prompter root: a tree whose root is an assistant message, or a reply
with its parent's role, would give threads such as [assistant, assistant] or [user, user,
assistant] that no chat template accepts. Such a message is rejected (field ``role``) with
everything below it, as a message below a missing parent is.

All tree walks use explicit stacks: OpenAssistant threads are shallow, but parent links in a flat
file can chain arbitrarily deep and must not hit Python's recursion limit.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

import msgspec
import polars as pl
import pyarrow as pa

from curation.errors import SourceError
from curation.ingest import IngestResult, ReadOptions, meta_json
from curation.records import UTF8_BOM, Records, read_records
from curation.schema import (
    CONVERSATIONS,
    PREFERENCES,
    empty,
    ledger_row,
    rejected_row,
    stable_id,
)

Role = Literal["prompter", "assistant"]
ROLES = {"prompter": "user", "assistant": "assistant"}
OASST_ROLES = {canonical: name for name, canonical in ROLES.items()}  # for reasons

# Tree states that mean moderators or the grading step threw the tree away. Other unfinished
# states ("growing", "ready_for_scoring", ...) hold fine messages, so they are kept.
EXCLUDED_TREE_STATES = frozenset({"aborted_low_grade", "halted_by_moderator"})
SPAM_THRESHOLD = 0.5
# Lines looked at to tell the two shapes apart (bad lines at the top are skipped).
DETECT_LINES = 1000


# --- Input records -------------------------------------------------------------------------------


class FlatLabels(msgspec.Struct):
    """Flat export labels: parallel lists."""

    name: list[str]
    value: list[float]
    count: list[int] | None = None


class TreeLabel(msgspec.Struct):
    """Trees export labels: {name: {value, count}}."""

    value: float
    count: int | None = None


class FlatMessage(msgspec.Struct):
    message_id: str
    # Required (though null for roots): a flat file without it cannot be linked into trees.
    parent_id: str | None
    message_tree_id: str
    role: Role
    text: str
    lang: str | None = None
    # HF's Parquet stores rank as float64 (NaN when absent), the JSONL export as an int.
    rank: int | float | None = None
    review_result: bool | None = None
    deleted: bool | None = False
    synthetic: bool | None = False
    labels: FlatLabels | None = None
    detoxify: dict[str, Any] | None = None
    tree_state: str | None = None


class Node(msgspec.Struct):
    message_id: str
    role: Role
    text: str
    lang: str | None = None
    rank: int | float | None = None
    review_result: bool | None = None
    deleted: bool | None = False
    synthetic: bool | None = False
    # A null entry appears when Parquet stores the label map as a struct of every label name.
    labels: dict[str, TreeLabel | None] | None = None
    detoxify: dict[str, Any] | None = None
    replies: list[Node] = []


class Tree(msgspec.Struct):
    message_tree_id: str
    prompt: Node
    tree_state: str | None = None


class _Probe(msgspec.Struct):
    message_id: Any = None
    message_tree_id: Any = None
    prompt: msgspec.Raw = msgspec.Raw(b"")


# --- The message pool ----------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class Message:
    id: str
    parent: str | None
    tree: str
    role: str  # canonical: user | assistant
    text: str
    lang: str | None
    rank: float | None
    review_result: bool | None
    deleted: bool
    synthetic: bool
    labels: FlatLabels | dict[str, TreeLabel | None] | None
    detoxify: dict[str, Any] | None
    tree_state: str | None
    file: str
    line: int
    order: int  # read order: breaks rank ties and orders unranked siblings
    visited: bool = False


def _rank(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _message(
    item: FlatMessage | Node,
    parent: str | None,
    tree: str,
    tree_state: str | None,
    file: str,
    line: int,
) -> Message:
    return Message(
        id=item.message_id,
        parent=parent,
        tree=tree,
        role=ROLES[item.role],
        text=item.text,
        lang=item.lang,
        rank=_rank(item.rank),
        review_result=item.review_result,
        deleted=bool(item.deleted),
        synthetic=bool(item.synthetic),
        labels=item.labels,
        detoxify=item.detoxify,
        tree_state=tree_state,
        file=file,
        line=line,
        order=0,
    )


def _preview(message: Message) -> str:
    """A compact raw preview for rejected rows built after decoding (the line itself is gone)."""
    return msgspec.json.encode(
        {
            "message_id": message.id,
            "parent_id": message.parent,
            "message_tree_id": message.tree,
            "role": message.role,
            "text": message.text,
        }
    ).decode()


@dataclass
class _Pool:
    source: str
    messages: dict[str, Message] = field(default_factory=dict)
    rejected: list[dict] = field(default_factory=list)

    def add(self, message: Message) -> bool:
        first = self.messages.get(message.id)
        if first is not None:
            reason = f"duplicate message_id {message.id} (first read at {first.file}:{first.line})"
            self.reject(message, reason, "message_id")
            return False
        message.order = len(self.messages)
        self.messages[message.id] = message
        return True

    def reject(self, message: Message, reason: str, field_name: str) -> None:
        self.rejected.append(
            rejected_row(
                self.source, message.file, message.line, reason, _preview(message), field_name
            )
        )

    def add_flat(self, records: Records, file: str) -> None:
        for item, line in zip(records.items, records.lines, strict=True):
            message = _message(
                item, item.parent_id, item.message_tree_id, item.tree_state, file, line
            )
            labels = item.labels
            if labels is not None and len(labels.name) != len(labels.value):
                self.reject(
                    message, "field 'labels': name and value lists differ in length", "labels"
                )
                continue
            self.add(message)

    def add_trees(self, records: Records, file: str) -> None:
        for tree, line in zip(records.items, records.lines, strict=True):
            self.add_tree(tree, file, line)

    def add_tree(self, tree: Tree, file: str, line: int) -> None:
        # The nesting is authoritative for parent links; a node's own parent_id is ignored.
        stack: list[tuple[Node, str | None, str | None]] = [(tree.prompt, None, None)]
        while stack:
            node, parent, broken = stack.pop()
            message = _message(node, parent, tree.message_tree_id, tree.tree_state, file, line)
            if broken is not None:
                self.reject(message, f"ancestor {broken} has a duplicate message_id", "message_id")
            elif not self.add(message):
                # Its replies would link to the first message with that id: reject them too.
                broken = node.message_id
            stack.extend((reply, node.message_id, broken) for reply in reversed(node.replies))


# --- Reading -------------------------------------------------------------------------------------


def detect_shape(path: Path) -> Literal["flat", "trees"]:
    """'trees' for the nested export, 'flat' otherwise (also when the file is missing or empty,
    so that ``read_records`` raises its usual SourceError)."""
    if path.suffix.lower() in {".parquet", ".pq"}:
        try:
            columns = pl.read_parquet_schema(path)
        except Exception:  # not readable: read_records reports why
            return "flat"
        return "trees" if "prompt" in columns and "message_tree_id" in columns else "flat"
    try:
        handle = path.open("rb")
    except OSError:
        return "flat"
    with handle:
        for number, raw in enumerate(handle):
            if number >= DETECT_LINES:
                break
            try:
                probe = msgspec.json.decode(raw.removeprefix(UTF8_BOM), type=_Probe)
            except (msgspec.DecodeError, RecursionError):
                continue
            if probe.message_tree_id is not None and bytes(probe.prompt).startswith(b"{"):
                return "trees"
            if probe.message_id is not None:
                return "flat"
    return "flat"


def _read_file(path: Path, pool: _Pool) -> None:
    shape = detect_shape(path)
    record_type = Tree if shape == "trees" else FlatMessage
    try:
        records = read_records(path, record_type, pool.source)
    except RecursionError:
        # msgspec recurses per nesting level (~500 tree levels at the default limit) and
        # records.py does not yet turn that into a rejected row; fail clearly, not with a trace.
        raise SourceError(
            path, "a line nests deeper than the JSON decoder allows (~500 levels)"
        ) from None
    pool.rejected.extend(records.rejected)
    file = str(path)
    if shape == "trees":
        pool.add_trees(records, file)
    else:
        pool.add_flat(records, file)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a million small acyclic objects are built: its
    generation scans otherwise take about a third of the read time. Restored on exit."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def read_oasst(paths: Sequence[Path], options: ReadOptions) -> IngestResult:
    """Read OpenAssistant flat messages and/or trees exports into conversations (best-ranked
    thread per tree) and human preference pairs (ranked sibling replies)."""
    pool = _Pool(options.source or "oasst")
    with _gc_paused():
        for path in paths:
            _read_file(Path(path), pool)
        out = _Builder(pool.source, pool.messages)
        out.run()
        turns = _Turns(pool.messages)
        conversations = _conversations_frame(pool.source, out.threads, turns)
        preferences = _preferences_frame(pool.source, out.pairs, turns)
    return IngestResult.build(
        conversations=conversations,
        preferences=preferences,
        rejected=pool.rejected + out.rejected,
        ledger=out.ledger,
    )


# --- Trees: exclusions, threads, pairs -----------------------------------------------------------


def label_values(labels: FlatLabels | dict[str, TreeLabel | None] | None) -> dict[str, float]:
    if labels is None:
        return {}
    if isinstance(labels, FlatLabels):
        return dict(zip(labels.name, labels.value, strict=True))
    return {name: label.value for name, label in labels.items() if label is not None}


def _exclusion(message: Message) -> tuple[str, str, str] | None:
    """(rule, reason for the message, reason for its descendants) when it must be excluded."""
    if message.deleted:
        return "ingest.deleted", "message deleted", f"ancestor {message.id} deleted"
    if message.review_result is False:
        return "ingest.review_failed", "failed review", f"ancestor {message.id} failed review"
    return None


def _tree_exclusion(root: Message) -> tuple[str, float | None] | None:
    """(reason, score) when the whole tree is spam or was aborted."""
    if root.tree_state in EXCLUDED_TREE_STATES:
        return f"tree {root.tree} state {root.tree_state}", None
    spam = label_values(root.labels).get("spam")
    if spam is not None and spam >= SPAM_THRESHOLD:
        return f"tree {root.tree} spam label {spam:.2f} on the root (>= {SPAM_THRESHOLD})", spam
    return None


def best_reply(replies: list[Message]) -> Message | None:
    """Rank 0 (lowest rank) wins; unranked replies only when none is ranked, first read first."""
    ranked = [reply for reply in replies if reply.rank is not None]
    if ranked:
        return min(ranked, key=lambda reply: (reply.rank, reply.order))
    return replies[0] if replies else None


class _Builder:
    """Walks every tree of a linked pool once and collects the output rows."""

    def __init__(self, source: str, messages: dict[str, Message]) -> None:
        self.source = source
        self.messages = messages
        self.children: dict[str, list[Message]] = {}
        self.threads: list[list[Message]] = []  # best-ranked thread of each tree
        self.pairs: list[tuple[list[Message], Message, Message]] = []  # prompt, chosen, rejected
        self.ledger: list[dict] = []
        self.rejected: list[dict] = []

    def run(self) -> None:
        roots, broken = self._link()
        for root in roots:
            self._tree(root)
        self._reject_unreached(broken)

    def _link(self) -> tuple[list[Message], set[str]]:
        """Children lists in read order; roots; ids whose parent is missing or in another tree."""
        roots: list[Message] = []
        broken: set[str] = set()
        for message in self.messages.values():
            if message.parent is None:
                roots.append(message)
                continue
            parent = self.messages.get(message.parent)
            if parent is None or parent.tree != message.tree:
                broken.add(message.id)
            else:
                self.children.setdefault(parent.id, []).append(message)
        return roots, broken

    def _drop(self, message: Message, rule: str, reason: str, score: float | None = None) -> None:
        message.visited = True
        self.ledger.append(
            ledger_row(stable_id(self.source, message.id), "ingest", rule, "drop", reason, score)
        )

    def _drop_subtree(
        self, top: Message, rule: str, reason: str, below: str, score: float | None = None
    ) -> None:
        self._drop(top, rule, reason, score)
        stack = list(self.children.get(top.id, ()))
        while stack:
            message = stack.pop()
            self._drop(message, rule, below, score)
            stack.extend(self.children.get(message.id, ()))

    def _tree(self, root: Message) -> None:
        spam = _tree_exclusion(root)
        if spam is not None:
            reason, score = spam
            self._drop_subtree(root, "ingest.spam_tree", reason, reason, score)
            return
        excluded = _exclusion(root)
        if excluded is not None:
            self._drop_subtree(root, *excluded)
            return
        if root.role != "user":
            role = OASST_ROLES[root.role]
            self._reject_subtree(
                root, f"tree {root.tree} starts with an {role} message; a tree's root is a prompt"
            )
            return
        kept: dict[str, list[Message]] = {}
        path: list[Message] = []
        stack: list[tuple[Message, int]] = [(root, 0)]
        while stack:
            message, depth = stack.pop()
            message.visited = True
            path[depth:] = [message]  # path is now root .. message
            replies = self._kept_replies(message)
            kept[message.id] = replies
            if message.role == "user":
                self._pairs(path, replies)
            stack.extend((reply, depth + 1) for reply in reversed(replies))
        self._conversation(root, kept)

    def _kept_replies(self, message: Message) -> list[Message]:
        replies = []
        for reply in self.children.get(message.id, ()):
            excluded = _exclusion(reply)
            if excluded is not None:
                self._drop_subtree(reply, *excluded)
            elif reply.role == message.role:
                role = OASST_ROLES[reply.role]
                self._reject_subtree(
                    reply,
                    f"{role} message replies to {role} message {message.id}; "
                    "prompter and assistant turns alternate",
                )
            else:
                replies.append(reply)
        return replies

    def _reject_subtree(self, top: Message, reason: str) -> None:
        """Reject ``top``, whose role breaks the alternation, and everything below it: every
        thread through it would carry the broken order."""
        top.visited = True
        self._reject(top, reason, "role")
        inherited = f"ancestor {top.id}: {reason}"
        stack = list(self.children.get(top.id, ()))
        while stack:
            message = stack.pop()
            message.visited = True
            self._reject(message, inherited, "role")
            stack.extend(self.children.get(message.id, ()))

    def _conversation(self, root: Message, kept: dict[str, list[Message]]) -> None:
        thread = [root]
        reply = best_reply(kept[root.id])
        while reply is not None:
            thread.append(reply)
            reply = best_reply(kept[reply.id])
        while thread and thread[-1].role != "assistant":  # SFT threads end on the assistant
            thread.pop()
        if thread:
            self.threads.append(thread)

    def _pairs(self, path: list[Message], replies: list[Message]) -> None:
        """Every pair of ranked assistant replies; the lower rank is always the chosen one."""
        ranked = sorted(
            (r for r in replies if r.role == "assistant" and r.rank is not None),
            key=lambda r: (r.rank, r.order),
        )
        if len(ranked) < 2:
            return
        prompt = list(path)  # one copy shared by this prompt's pairs; ``path`` keeps changing
        for chosen, rejected in combinations(ranked, 2):
            if chosen.rank != rejected.rank:  # a tie states no preference
                self.pairs.append((prompt, chosen, rejected))

    def _reject_unreached(self, broken: set[str]) -> None:
        """Messages no root reaches hang below a missing parent or a cycle of parent links."""
        causes: dict[str, str] = {}  # id -> reason, for every unreached message classified
        for message in self.messages.values():
            if message.visited or message.id in causes:
                continue
            for member, reason in self._classify(message, broken, causes):
                causes[member.id] = reason
                self._reject(member, reason)

    def _classify(
        self, start: Message, broken: set[str], causes: dict[str, str]
    ) -> Iterator[tuple[Message, str]]:
        """Walk up from ``start`` until a known cause, a missing parent or a loop; yield a
        reason for each message on the way (nearest the cause first)."""
        chain: list[Message] = []
        position: dict[str, int] = {}
        current = start
        while True:
            if current.id in causes:
                cause_id, cause = current.id, causes[current.id]
                break
            if current.id in position:  # looped: chain[loop start:] is the cycle
                cycle = chain[position[current.id] :]
                names = " -> ".join(m.id for m in [*cycle, cycle[0]])
                cause_id, cause = cycle[0].id, f"parent links form a cycle: {names}"
                for member in cycle:
                    yield member, cause
                chain = chain[: position[current.id]]
                break
            position[current.id] = len(chain)
            chain.append(current)
            if current.id in broken:
                cause_id = current.id
                cause = f"parent {current.parent} not found in tree {current.tree}"
                yield current, cause
                chain.pop()
                break
            current = self.messages[current.parent]
        # Name the root cause once, not a chain of "ancestor ... ancestor ...".
        inherited = cause if cause.startswith("ancestor ") else f"ancestor {cause_id}: {cause}"
        for member in reversed(chain):
            yield member, inherited

    def _reject(self, message: Message, reason: str, field_name: str = "parent_id") -> None:
        self.rejected.append(
            rejected_row(
                self.source, message.file, message.line, reason, _preview(message), field_name
            )
        )


# --- Output frames -------------------------------------------------------------------------------
# Built column by column through Arrow: polars' row-wise construction of nested list-of-struct
# columns from Python dicts costs tens of seconds per million rows, Arrow arrays take a second.


class _Turns:
    """Every pooled message's role and text as Arrow arrays, indexed by ``Message.order``.

    A column of threads is then one ``take`` of indices: a prompt repeats in each of its pairs,
    and copying its text in C is far cheaper than converting the Python string again.
    """

    def __init__(self, messages: dict[str, Message]) -> None:
        self.roles = pa.array([m.role for m in messages.values()], pa.large_string())
        self.texts = pa.array([m.text for m in messages.values()], pa.large_string())

    def column(self, threads: Iterable[Sequence[Message]]) -> pa.Array:
        """list<struct<role, content>>, one list per thread."""
        indices: list[int] = []
        offsets = [0]
        for thread in threads:
            indices.extend([m.order for m in thread])
            offsets.append(len(indices))
        taken = pa.array(indices, pa.int64())
        turns = pa.StructArray.from_arrays(
            [self.roles.take(taken), self.texts.take(taken)], names=["role", "content"]
        )
        return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), turns)


def _provenance_array(files: list[str], lines: list[int], ids: list[list[str]]) -> pa.Array:
    return pa.StructArray.from_arrays(
        [
            pa.array(files, pa.large_string()),
            pa.array(lines, pa.int64()),
            pa.array(ids, pa.large_list(pa.large_string())),
        ],
        names=["file", "line", "ids"],
    )


def _conversation_meta(thread: list[Message]) -> str:
    root, last = thread[0], thread[-1]
    detoxify = [m.detoxify for m in thread if m.role == "assistant"]
    return meta_json(
        {
            "tree_id": root.tree,
            "tree_state": root.tree_state,
            "prompt_labels": label_values(root.labels) or None,
            "labels": label_values(last.labels) or None,
            "detoxify": detoxify if any(d is not None for d in detoxify) else None,
            "synthetic": any(m.synthetic for m in thread),
        }
    )


def _conversations_frame(source: str, threads: list[list[Message]], turns: _Turns) -> pl.DataFrame:
    """One conversation per thread; provenance points at the tree's root message."""
    if not threads:
        return empty(CONVERSATIONS)
    last_ids = [thread[-1].id for thread in threads]
    columns = {
        "id": pa.array([stable_id(source, i) for i in last_ids], pa.large_string()),
        "source": pa.array([source] * len(threads), pa.large_string()),
        "source_id": pa.array(last_ids, pa.large_string()),
        "lang": pa.array([thread[0].lang for thread in threads], pa.large_string()),
        "messages": turns.column(threads),
        "meta": pa.array([_conversation_meta(thread) for thread in threads], pa.large_string()),
        "provenance": _provenance_array(
            [thread[0].file for thread in threads],
            [thread[0].line for thread in threads],
            [[m.id for m in thread] for thread in threads],
        ),
    }
    return pl.from_arrow(pa.table(columns))


def _preferences_frame(
    source: str, pairs: list[tuple[list[Message], Message, Message]], turns: _Turns
) -> pl.DataFrame:
    """One human pair per (prompt, better reply, worse reply); provenance is the prompt message."""
    if not pairs:
        return empty(PREFERENCES)
    source_ids = [f"{chosen.id}>{rejected.id}" for _, chosen, rejected in pairs]
    prompts = [prompt[-1] for prompt, _, _ in pairs]
    columns = {
        "id": pa.array([stable_id(source, i) for i in source_ids], pa.large_string()),
        "source": pa.array([source] * len(pairs), pa.large_string()),
        "source_id": pa.array(source_ids, pa.large_string()),
        "lang": pa.array(
            [prompt[-1].lang or prompt[0].lang for prompt, _, _ in pairs], pa.large_string()
        ),
        "prompt": turns.column(prompt for prompt, _, _ in pairs),
        "chosen": turns.column((chosen,) for _, chosen, _ in pairs),
        "rejected": turns.column((rejected,) for _, _, rejected in pairs),
        "origin": pa.array(["human"] * len(pairs), pa.large_string()),
        "margin": pa.array(
            [float(rejected.rank - chosen.rank) for _, chosen, rejected in pairs], pa.float64()
        ),
        "judge": pa.nulls(len(pairs), pa.large_string()),
        "source_ids": pa.array(
            [[prompt[-1].id, chosen.id, rejected.id] for prompt, chosen, rejected in pairs],
            pa.large_list(pa.large_string()),
        ),
        "provenance": _provenance_array(
            [m.file for m in prompts],
            [m.line for m in prompts],
            [
                [*(m.id for m in prompt), chosen.id, rejected.id]
                for prompt, chosen, rejected in pairs
            ],
        ),
    }
    return pl.from_arrow(pa.table(columns))
