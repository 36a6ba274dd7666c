"""FineWeb fetch through huggingface_hub, against a local stand-in for the hub."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hub_standin import HubStandIn

from nanoenv.data import load_manifest, read_shard, verify_dataset, write_shard
from nanoenv.data.fineweb import HIDDEN_SOURCE, REPO_ID, VAL_FILE, train_file

pytest.importorskip("huggingface_hub")


@pytest.fixture
def hub(tmp_path):
    """A stand-in hub holding small shards with FineWeb's names."""
    repo = tmp_path / "repo"
    repo.mkdir()
    rng = np.random.default_rng(0)
    for name in (VAL_FILE, train_file(1), train_file(2), train_file(3), HIDDEN_SOURCE):
        write_shard(repo / name, rng.integers(0, 50257, size=300_000))
    with HubStandIn(repo, REPO_ID) as server:
        yield server, repo


def fetch(tmp_path: Path, hub_url: str, shards: int | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_ENDPOINT": hub_url, "NANOENV_CACHE_DIR": str(tmp_path / "cache"),
           "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_ETAG_TIMEOUT": "5"}  # fmt: skip
    cmd = [
        sys.executable,
        "-m",
        "nanoenv.cli",
        "data",
        "fetch",
        "fineweb10B",
        *(["--train-shards", str(shards)] if shards is not None else []),
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_fetch_verifies_against_the_hubs_sha256(hub, tmp_path):
    """Val, train shards and the hidden val (from the last shard) arrive and match the manifest."""
    server, repo = hub
    out = fetch(tmp_path, server.url, 2)
    assert out.returncode == 0, out.stderr
    root = tmp_path / "cache" / "datasets" / "fineweb10B"
    manifest = verify_dataset(root)
    assert manifest.split_files("train") == ["public/train_000001.bin", "public/train_000002.bin"]
    assert manifest.vocab_size == 50257
    hidden = read_shard(root / "hidden" / "hidden_val_000000.bin")
    assert np.array_equal(hidden, read_shard(repo / HIDDEN_SOURCE))  # all of it: < 10,485,760
    assert not (root / "public" / "train_000003.bin").exists()


def test_interrupted_download_resumes(hub, tmp_path):
    """A download cut off halfway is resumed from where it stopped (a Range request)."""
    server, _ = hub
    server.cut_once.add(train_file(1))
    out = fetch(tmp_path, server.url, 1)
    assert out.returncode == 0, out.stderr
    ranges = [r for name, r in server.gets if name == train_file(1)]
    assert len(ranges) >= 2 and ranges[0] is None and any(r and r != "bytes=0-" for r in ranges[1:])
    verify_dataset(tmp_path / "cache" / "datasets" / "fineweb10B")


def test_corrupt_shard_is_fetched_again(hub, tmp_path):
    """Bytes that do not match the hub's sha256 are thrown away and fetched again."""
    server, _ = hub
    server.corrupt_once.add(VAL_FILE)
    out = fetch(tmp_path, server.url, 1)
    assert out.returncode == 0, out.stderr
    assert sum(name == VAL_FILE for name, _ in server.gets) >= 2
    verify_dataset(tmp_path / "cache" / "datasets" / "fineweb10B")


def test_asking_for_more_shards_fetches_only_the_new_ones(hub, tmp_path):
    """A second fetch with more shards downloads just what is missing."""
    server, _ = hub
    assert fetch(tmp_path, server.url, 1).returncode == 0
    before = len(server.gets)
    assert fetch(tmp_path, server.url, 3).returncode == 0
    fetched = [name for name, _ in server.gets[before:]]
    assert sorted(fetched) == [train_file(2), train_file(3)]
    manifest = load_manifest(tmp_path / "cache" / "datasets" / "fineweb10B")
    assert len(manifest.split_files("train")) == 3


def test_fetching_never_shrinks_a_dataset(hub, tmp_path):
    """Three shards there; a fetch of one, or with no count (whose default is 8 for a first
    fetch), keeps all three and downloads nothing: before, each rebuilt the dataset smaller."""
    server, _ = hub
    assert fetch(tmp_path, server.url, 3).returncode == 0
    root = tmp_path / "cache" / "datasets" / "fineweb10B"
    before = len(server.gets)
    for shards in (1, None):
        out = fetch(tmp_path, server.url, shards)
        assert out.returncode == 0, out.stderr
        assert "3 shard(s)" in out.stdout.split("train")[1].splitlines()[0]
        assert len(verify_dataset(root).split_files("train")) == 3
    assert server.gets[before:] == []


def test_an_old_huggingface_hub_is_named(monkeypatch):
    """huggingface_hub before 1.0 has a requests session whose `stream` is a bool: the fetch
    failed with "'bool' object is not callable". It is refused up front, with the fix."""
    import huggingface_hub

    from nanoenv.data import fineweb
    from nanoenv.errors import DataError

    monkeypatch.setattr(huggingface_hub, "__version__", "0.36.2")
    with pytest.raises(DataError, match=r"huggingface_hub>=1\.0, found 0\.36\.2"):
        fineweb.expected_sha256([VAL_FILE])
    assert fineweb._version_tuple("1.0.0rc1") >= fineweb.MIN_HUB_VERSION


def test_unreachable_hub_is_a_clear_error(tmp_path):
    """No hub: exit 2 and a one-line reason, no traceback."""
    out = fetch(tmp_path, "http://127.0.0.1:9", 1)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "nanoenv: error" in out.stderr
