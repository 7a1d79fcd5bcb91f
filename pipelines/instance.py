"""One Dagster instance for every entry point: make demo, the CLI, the UI and tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from assets.resources import PROJECT_ROOT

INSTANCE_CONFIG = PROJECT_ROOT / "dagster.yaml"


PROJECT_HOME = PROJECT_ROOT / ".dagster_home"


def ensure_dagster_home(home: str | Path | None = None) -> Path:
    """Point DAGSTER_HOME at ``home``, by default the project-local, git-ignored instance that
    the Makefile (``make demo``, ``make ui``) uses too, whatever DAGSTER_HOME held: the demo's
    runs must be in the instance ``make ui`` shows. The project's own instance keeps its
    dagster.yaml in step with the one at the project root; any other folder gets it only when
    it has none, so a user's own instance config is never replaced."""
    path = Path(home) if home else PROJECT_HOME
    path.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(path.resolve())
    target = path / "dagster.yaml"
    ours = path.resolve() == PROJECT_HOME.resolve()
    if not target.exists() or (ours and target.read_bytes() != INSTANCE_CONFIG.read_bytes()):
        shutil.copyfile(INSTANCE_CONFIG, target)
    return path
