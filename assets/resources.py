"""Resources the assets share: where files live, and the project root for default inputs."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SAMPLES = PROJECT_ROOT / "data" / "samples"


def resolve(path: str) -> Path:
    """Relative paths in configs are relative to the project, not to the process's cwd, so the
    UI, the CLI and tests agree on what ``data/samples/flan.jsonl`` means."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else PROJECT_ROOT / candidate


class StorageResource(dg.ConfigurableResource):
    """Files that are not frames (tokenizers, plots, checkpoints) live under ``base_dir``, beside
    what the IO manager writes, so one setting moves all outputs."""

    base_dir: str

    def path(self, *parts: str) -> Path:
        return resolve(self.base_dir).joinpath(*parts)
