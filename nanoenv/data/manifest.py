"""Dataset manifests: every shard's split, token count and sha256, and one hash over them.

A dataset lives in one folder::

    <root>/manifest.json
    <root>/public/    train_*.bin, val_*.bin   (mounted read-only into every run)
    <root>/hidden/    hidden_val_*.bin         (never mounted while a run trains)

The manifest hash covers the dataset name, vocabulary size and the files table, not the
provenance notes, so the same data prepared twice on two machines has the same hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nanoenv.data.shards import read_header, sha256_file, write_shard
from nanoenv.errors import DataError

MANIFEST = "manifest.json"
Split = Literal["train", "val", "hidden_val"]


class ShardInfo(BaseModel):
    """One shard of a dataset."""

    model_config = ConfigDict(extra="forbid")

    split: Split
    tokens: int
    sha256: str


class Manifest(BaseModel):
    """The table of a dataset's shards; ``files`` keys are paths relative to the dataset root."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    vocab_size: int
    files: dict[str, ShardInfo]
    source: dict[str, str] = Field(default_factory=dict)

    def content_hash(self) -> str:
        """sha256 over the name, vocabulary and files table (not the provenance)."""
        body = {
            "dataset": self.dataset,
            "vocab_size": self.vocab_size,
            "files": {k: v.model_dump() for k, v in sorted(self.files.items())},
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    def split_files(self, split: Split) -> list[str]:
        """Relative paths of the shards of one split, in name order."""
        return sorted(k for k, v in self.files.items() if v.split == split)

    def tokens(self, split: Split) -> int:
        """Total tokens of one split."""
        return sum(v.tokens for v in self.files.values() if v.split == split)


def write_manifest(root: Path, manifest: Manifest) -> str:
    """Write ``manifest.json`` atomically; return the manifest hash."""
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest.model_dump(), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, root / MANIFEST)
    return manifest.content_hash()


def split_bucket(doc: str, chunk: int) -> int:
    """A fixed bucket 0-99 for a document's chunk: splits by hash never change between builds."""
    digest = hashlib.sha256(f"{doc}:{chunk}".encode()).digest()
    return int.from_bytes(digest[:4], "little") % 100


def write_splits(
    root: Path,
    splits: dict[Split, np.ndarray],
    *,
    dataset: str,
    vocab_size: int,
    train_shard_tokens: int,
    source: dict[str, str],
) -> str:
    """Write train shards, one public val and one hidden val shard, and the manifest; return its hash."""
    (root / "public").mkdir(parents=True, exist_ok=True)
    (root / "hidden").mkdir(parents=True, exist_ok=True)
    files: dict[str, ShardInfo] = {}

    def put(rel: str, split: Split, tokens: np.ndarray) -> None:
        files[rel] = ShardInfo(
            split=split, tokens=int(tokens.size), sha256=write_shard(root / rel, tokens)
        )

    train = splits["train"]
    for i, start in enumerate(range(0, train.size, train_shard_tokens)):
        put(f"public/train_{i:06d}.bin", "train", train[start : start + train_shard_tokens])
    put("public/val_000000.bin", "val", splits["val"])
    put("hidden/hidden_val_000000.bin", "hidden_val", splits["hidden_val"])
    manifest = Manifest(dataset=dataset, vocab_size=vocab_size, files=files, source=source)
    return write_manifest(root, manifest)


def load_manifest(root: Path) -> Manifest:
    """Read a dataset's manifest, with a clear error if it is missing or malformed."""
    path = root / MANIFEST
    try:
        return Manifest.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise DataError(f"no dataset at {root}: {path} is missing") from None
    except (ValidationError, ValueError) as e:
        raise DataError(f"manifest {path} is malformed: {e}") from None


def verify_dataset(root: Path, expected_hash: str | None = None, *, full: bool = True) -> Manifest:
    """Check a dataset against its manifest (and the manifest against ``expected_hash``).

    Args:
        root: The dataset folder.
        expected_hash: The manifest hash a task names; ``None`` skips that comparison.
        full: Also recompute every shard's sha256 (headers and sizes are always checked).

    Raises:
        DataError: naming the first file that is missing, truncated, or does not match.
    """
    manifest = load_manifest(root)
    actual = manifest.content_hash()
    if expected_hash is not None and actual != expected_hash:
        raise DataError(
            f"dataset {manifest.dataset!r} at {root} has manifest hash {actual}, but the task "
            f"expects {expected_hash}; prepare it again (nanoenv data prepare) or check the "
            "task's data.manifest_sha256"
        )
    for rel, info in sorted(manifest.files.items()):
        path = root / rel
        count = read_header(path)
        if count != info.tokens:
            raise DataError(f"shard {path} holds {count} tokens, the manifest says {info.tokens}")
        if full and (digest := sha256_file(path)) != info.sha256:
            raise DataError(
                f"shard {path} has sha256 {digest}, the manifest says {info.sha256}: "
                "the file was changed or corrupted"
            )
    return manifest
