"""FineWeb10B in GPT-2 tokens, from the Hugging Face hub: resumable, verified, with a hidden val.

Source: the dataset ``kjj0/fineweb10B-gpt2`` (``fineweb_val_000000.bin`` and
``fineweb_train_000001.bin`` ... ``000103``, 100M tokens each), fetched through
huggingface_hub (its URLs, session, headers and ``HF_ENDPOINT`` for a mirror) into ``.part``
files that a later fetch resumes with Range requests, across processes. Every file is checked against the sha256 the hub publishes for it (its LFS oid)
and against the shard format; a file that fails is fetched once more, then reported.

The hidden val set is the first 10,485,760 tokens of ``fineweb_train_000103.bin``: runs read
train shards in order from 000001, and no run of these tracks reaches the last one.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nanoenv.data.manifest import Manifest, ShardInfo, Split, write_manifest
from nanoenv.data.shards import read_header, read_shard, sha256_file, write_shard
from nanoenv.data.text import GPT2_VOCAB
from nanoenv.errors import DataError

log = logging.getLogger(__name__)

DATASET = "fineweb10B"
REPO_ID = "kjj0/fineweb10B-gpt2"
VAL_FILE = "fineweb_val_000000.bin"
MAX_TRAIN_SHARDS = 103
HIDDEN_SOURCE = f"fineweb_train_{MAX_TRAIN_SHARDS:06d}.bin"
HIDDEN_TOKENS = 10_485_760
ATTEMPTS = 3
# The fetch streams through get_session().stream(), the httpx client of huggingface_hub 1.0 and
# later; before 1.0 the session is requests', whose `stream` is a bool ("'bool' object is not
# callable" on 0.36). pyproject's fineweb extra states the same floor.
MIN_HUB_VERSION = (1, 0)


def train_file(i: int) -> str:
    """The hub's name of train shard ``i`` (1-based)."""
    return f"fineweb_train_{i:06d}.bin"


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise DataError(
            "fetching FineWeb needs huggingface_hub: pip install 'nanoenv[fineweb]'"
        ) from None
    if _version_tuple(huggingface_hub.__version__) < MIN_HUB_VERSION:
        floor = ".".join(map(str, MIN_HUB_VERSION))
        raise DataError(
            f"fetching FineWeb needs huggingface_hub>={floor}, found {huggingface_hub.__version__}: "
            f"pip install -U 'huggingface_hub>={floor}'"
        )
    return huggingface_hub


def _version_tuple(version: str) -> tuple[int, ...]:
    """(1, 0, 0) of "1.0.0rc1": the leading numbers of each dotted part."""
    parts = []
    for part in version.split(".")[:3]:
        digits = "".join(itertools.takewhile(str.isdigit, part))
        parts.append(int(digits or 0))
    return tuple(parts)


def expected_sha256(files: list[str], revision: str = "main") -> dict[str, str]:
    """The sha256 the hub publishes for each file (its LFS object id)."""
    hub = _hub()
    try:
        infos = hub.HfApi().get_paths_info(REPO_ID, files, repo_type="dataset", revision=revision)
    except Exception as e:  # no network, a proxy, a mirror that is down
        from huggingface_hub import constants

        raise DataError(
            f"cannot list {REPO_ID} on the hub at {constants.ENDPOINT}: {e}. "
            "Check the network, or set HF_ENDPOINT to a mirror"
        ) from None
    found = {i.path: i.lfs.sha256 for i in infos if getattr(i, "lfs", None) is not None}
    missing = [f for f in files if f not in found]
    if missing:
        raise DataError(f"the hub lists no LFS file {missing[0]} in {REPO_ID}@{revision}")
    return found


def download(filename: str, sha256: str, dest: Path, revision: str = "main") -> Path:
    """Fetch one file into ``dest``, checked by sha256.

    Bytes go to ``<file>.part`` first; a fetch that was interrupted (a dropped connection, a
    killed process) resumes from the end of that file with an HTTP Range request.
    """
    hub = _hub()
    from huggingface_hub.utils import build_hf_headers

    final, part = dest / filename, dest / f"{filename}.part"
    if final.is_file() and sha256_file(final) == sha256:
        return final
    url = hub.hf_hub_url(REPO_ID, filename, repo_type="dataset", revision=revision)
    last: Exception | None = None
    for attempt in range(1, ATTEMPTS + 1):
        have = part.stat().st_size if part.exists() else 0
        headers = build_hf_headers()
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            with hub.get_session().stream("GET", url, headers=headers, follow_redirects=True) as r:
                if r.status_code == 416:  # the part is already whole
                    pass
                elif r.status_code not in (200, 206):
                    r.raise_for_status()
                else:
                    # 200 to a Range request: the server starts over, so must we.
                    with open(part, "ab" if r.status_code == 206 else "wb") as f:
                        for chunk in r.iter_bytes(1 << 16):
                            f.write(chunk)
        except Exception as e:  # a dropped connection: the next attempt resumes the part
            last = e
            log.warning("download of %s interrupted (attempt %d): %s", filename, attempt, e)
            continue
        if (digest := sha256_file(part)) == sha256:
            os.replace(part, final)
            read_header(final)  # the format too: magic, version, size
            return final
        last = DataError(f"{filename} has sha256 {digest}, the hub says {sha256}")
        log.warning("%s is corrupt (attempt %d); fetching it again", filename, attempt)
        part.unlink()
    raise DataError(f"could not fetch {filename} from {REPO_ID} after {ATTEMPTS} attempts: {last}")


def build_fineweb(
    root: Path, train_shards: int, *, progress: Callable[[str], None] | None = None
) -> str:
    """Fetch val, ``train_shards`` train shards and the hidden source into ``root``; return the
    manifest hash. Downloads are kept in ``<root>/../.fineweb-downloads`` so an interrupted
    fetch resumes."""
    if not 1 <= train_shards < MAX_TRAIN_SHARDS:
        raise DataError(f"--train-shards must be 1..{MAX_TRAIN_SHARDS - 1}, got {train_shards}")
    say = progress or (lambda msg: log.info(msg))
    wanted = [VAL_FILE, *(train_file(i) for i in range(1, train_shards + 1)), HIDDEN_SOURCE]
    sha = expected_sha256(wanted)
    downloads = root.parent / f".{DATASET}-downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    (root / "public").mkdir(parents=True, exist_ok=True)
    (root / "hidden").mkdir(parents=True, exist_ok=True)
    files: dict[str, ShardInfo] = {}

    def keep(src: Path, rel: str, split: Split) -> None:
        # A hard link when the file system allows: no second copy of 200 MB shards.
        target = root / rel
        try:
            os.link(src, target)
        except OSError:
            shutil.copyfile(src, target)
        files[rel] = ShardInfo(split=split, tokens=read_header(target), sha256=sha[src.name])

    for k, name in enumerate(wanted, start=1):
        say(f"[{k}/{len(wanted)}] {name}")
        path = download(name, sha[name], downloads)
        if name == VAL_FILE:
            keep(path, "public/val_000000.bin", "val")
        elif name == HIDDEN_SOURCE:
            hidden = np.asarray(read_shard(path)[:HIDDEN_TOKENS])
            rel = "hidden/hidden_val_000000.bin"
            files[rel] = ShardInfo(
                split="hidden_val", tokens=int(hidden.size), sha256=write_shard(root / rel, hidden)
            )
        else:
            keep(path, f"public/train_{name.rsplit('_', 1)[1]}", "train")
    manifest = Manifest(dataset=DATASET, vocab_size=GPT2_VOCAB, files=files,
                        source={"repo": REPO_ID, "train_shards": str(train_shards), "hidden_from": HIDDEN_SOURCE})  # fmt: skip
    return write_manifest(root, manifest)
