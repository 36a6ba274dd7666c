"""Datasets: the shard format, manifests, and where prepared data lives.

Prepared datasets live under ``$NANOENV_CACHE_DIR`` (default ``~/.cache/nanoenv``), in
``datasets/<name>/``. Preparing is idempotent and atomic: a dataset is built in a temporary
folder beside its final place and renamed into it, under a file lock, so two processes that
ask for it at once (say, two vector envs) build it once and neither sees half of it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from nanoenv.data.manifest import Manifest, ShardInfo, load_manifest, verify_dataset
from nanoenv.data.shards import read_header, read_shard, sha256_file, write_shard
from nanoenv.errors import DataError
from nanoenv.types import DataSpec

log = logging.getLogger(__name__)

__all__ = [
    "Manifest",
    "ShardInfo",
    "cache_dir",
    "dataset_root",
    "ensure_dataset",
    "load_manifest",
    "prepare",
    "read_header",
    "read_shard",
    "sha256_file",
    "verify_dataset",
    "write_shard",
]


def cache_dir() -> Path:
    """Where nanoenv keeps prepared data: ``$NANOENV_CACHE_DIR`` or the XDG cache folder."""
    if env := os.environ.get("NANOENV_CACHE_DIR"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nanoenv"


def dataset_root(name: str) -> Path:
    """The folder of a prepared dataset (it may not exist yet)."""
    return cache_dir() / "datasets" / name


def _builders() -> dict[str, Callable[[Path, Path | None], str]]:
    from nanoenv.data import tiny

    return {"tiny": tiny.build_tiny, tiny.DATASET: tiny.build_tiny}


def _canonical(name: str) -> str:
    from nanoenv.data import tiny

    return tiny.DATASET if name == "tiny" else name


def prepare(name: str, *, source: Path | None = None, force: bool = False) -> Path:
    """Prepare a dataset by name (``tiny``); return its root. Does nothing if it is already good.

    Args:
        name: The dataset (``tiny`` or its full name ``tiny-shakespeare-bytes``).
        source: A local copy of the raw source, for machines without network.
        force: Rebuild even if a good copy exists.
    """
    builders = _builders()
    if name not in builders:
        raise DataError(f"unknown dataset {name!r}; preparable here: {sorted(builders)}")
    root = dataset_root(_canonical(name))
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and root.exists():
            try:
                verify_dataset(root)
                return root
            except DataError as e:
                log.warning("rebuilding %s: %s", root, e)
        build = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
        try:
            builders[name](build, source)
            old = root.with_name(f".{root.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            if root.exists():
                os.replace(root, old)
            os.replace(build, root)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    return root


def ensure_dataset(spec: DataSpec, *, full: bool = True) -> tuple[Path, Manifest]:
    """Return a task's dataset root and manifest, preparing it first when the task allows.

    Raises:
        DataError: the dataset is missing (and cannot be prepared automatically), or does not
            match the manifest hash the task expects.
    """
    root = dataset_root(_canonical(spec.dataset))
    if not (root / "manifest.json").exists():
        if not spec.auto_prepare:
            raise DataError(
                f"dataset {spec.dataset!r} is not prepared (looked in {root}); "
                f"run: nanoenv data prepare {spec.dataset}"
            )
        log.info("preparing dataset %s in %s (first use)", spec.dataset, root)
        prepare(spec.dataset)
    return root, verify_dataset(root, spec.manifest_sha256, full=full)
