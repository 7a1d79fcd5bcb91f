"""Resources the assets share: where files live, and the project root for default inputs."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from training.datafiles import content_digest
from training.runs import lineage_sha256

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SAMPLES = PROJECT_ROOT / "data" / "samples"


def resolve(path: str) -> Path:
    """Relative paths in configs are relative to the project, not to the process's cwd, so the
    UI, the CLI and tests agree on what ``data/samples/flan.jsonl`` means."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else PROJECT_ROOT / candidate


def dataset_version(path: str | Path) -> dg.DataVersion:
    """An exported dataset's version: the digest of the files training reads, the same one a
    run's fingerprint and its lineage (``data_sha256``) hold."""
    return dg.DataVersion(content_digest(path))


def checkpoint_version(checkpoint: str | Path) -> dg.DataVersion | None:
    """A checkpoint's version: the digest of its lineage.json, which names one training run and
    is what a child checkpoint pins its parent by. A re-run that reuses the checkpoint keeps
    it, so nothing downstream turns stale."""
    digest = lineage_sha256(checkpoint)
    return dg.DataVersion(digest) if digest else None


class StorageResource(dg.ConfigurableResource):
    """Files that are not frames (tokenizers, plots, checkpoints) live under ``base_dir``, beside
    what the IO manager writes, so one setting moves all outputs."""

    base_dir: str

    def path(self, *parts: str) -> Path:
        return resolve(self.base_dir).joinpath(*parts)
