"""A persistent cache of judge answers in one sqlite file (WAL mode).

The key is a hash of everything that determines an answer: the endpoint's model, the template
and its version, the exact messages sent (which hold the prompt and the candidate texts in the
order presented) and the sampling settings. Not the base URL, so the same model moved to another
host keeps its answers; never the API key, which is not part of any of these.

Each answer is committed as soon as it arrives. A run that is killed half way leaves every
finished answer on disk, and the next run pays only for the rest.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    template TEXT NOT NULL,
    content TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    created REAL NOT NULL
)
"""


def cache_key(model: str, template: str, messages: list[dict[str, str]], sampling: dict) -> str:
    payload = json.dumps(
        {"model": model, "template": template, "messages": messages, "sampling": sampling},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedAnswer:
    content: str
    input_tokens: int
    output_tokens: int


class AnswerCache:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a committed answer survives the process dying; only a power cut
        # may lose the last few, which the next run simply asks again.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)

    def get(self, key: str) -> CachedAnswer | None:
        row = self._db.execute(
            "SELECT content, input_tokens, output_tokens FROM answers WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else CachedAnswer(*row)

    def put(self, key: str, model: str, template: str, answer: CachedAnswer) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                model,
                template,
                answer.content,
                answer.input_tokens,
                answer.output_tokens,
                time.time(),
            ),
        )

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def stats(self) -> dict[str, Any]:
        return {"path": str(self.path), "entries": len(self)}

    def close(self) -> None:
        self._db.close()
