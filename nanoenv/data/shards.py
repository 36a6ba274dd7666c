"""The shard format of the speedrun: a 256 x int32 header, then uint16 tokens.

Header: ``[0] = 20240520`` (magic), ``[1] = 1`` (version), ``[2] = token count``; the rest
is zero. The same format serves GPT-2 BPE tokens (FineWeb) and bytes (the tiny track).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from nanoenv.errors import DataError

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")


def write_shard(path: str | os.PathLike[str], tokens: np.ndarray) -> str:
    """Write ``tokens`` as a shard (atomically) and return its sha256."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
        raise ValueError("tokens must fit in uint16 (0..65535)")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, VERSION, tokens.size)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    data = header.tobytes() + tokens.astype(TOKEN_DTYPE).tobytes()
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def read_header(path: str | os.PathLike[str]) -> int:
    """Check a shard's header and size; return its token count.

    Raises:
        DataError: the file is missing, too short, has a wrong magic or version, or is
            truncated (fewer tokens on disk than the header says).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except FileNotFoundError:
        raise DataError(f"shard {path} is missing") from None
    if len(raw) < HEADER_BYTES:
        raise DataError(
            f"shard {path} is {size} bytes, shorter than its {HEADER_BYTES}-byte header"
        )
    header = np.frombuffer(raw, dtype="<i4")
    if header[0] != MAGIC:
        raise DataError(f"shard {path} has magic {header[0]}, expected {MAGIC}")
    if header[1] != VERSION:
        raise DataError(f"shard {path} has version {header[1]}, expected {VERSION}")
    count = int(header[2])
    expected = HEADER_BYTES + count * TOKEN_DTYPE.itemsize
    if size != expected:
        what = "truncated" if size < expected else "longer than its header says"
        raise DataError(
            f"shard {path} is {what}: {size} bytes on disk, header promises {count} tokens "
            f"({expected} bytes)"
        )
    return count


def read_shard(path: str | os.PathLike[str]) -> np.ndarray:
    """Return a shard's tokens as a read-only uint16 memory map, after checking its header."""
    count = read_header(path)
    if count == 0:
        return np.zeros(0, dtype=TOKEN_DTYPE)
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(count,))


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """The sha256 of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
