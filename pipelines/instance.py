"""One Dagster instance for every entry point: make demo, the CLI, the UI and tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from assets.resources import PROJECT_ROOT

INSTANCE_CONFIG = PROJECT_ROOT / "dagster.yaml"


def ensure_dagster_home(home: str | Path | None = None) -> Path:
    """Point DAGSTER_HOME at the project-local, git-ignored instance (unless set), and keep its
    dagster.yaml in step with the one at the project root."""
    path = Path(home or os.environ.get("DAGSTER_HOME") or PROJECT_ROOT / ".dagster_home")
    path.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(path.resolve())
    target = path / "dagster.yaml"
    if not target.exists() or target.read_bytes() != INSTANCE_CONFIG.read_bytes():
        shutil.copyfile(INSTANCE_CONFIG, target)
    return path
