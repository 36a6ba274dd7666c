"""The v1 tiny track's BPE data: the committed tokenizer is the train split's, the dataset is
the byte dataset's text token for token, and it has the manifest hash the task names."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nanoenv.data import DataError, prepare, read_shard, tiny, tiny_bpe, verify_dataset
from nanoenv.data.manifest import load_manifest
from nanoenv.tasks import load_task


@pytest.fixture(scope="module")
def bpe_data(tiny_data):
    return prepare("tiny-bpe")


def _split_bytes(root, manifest, split: str, *, dtype) -> np.ndarray:
    return np.concatenate([read_shard(root / f) for f in manifest.split_files(split)]).astype(dtype)


@pytest.mark.slow
def test_committed_tokenizer_is_trained_on_train_alone():
    """Retraining on the train split's chunks gives the committed file: no val text chose a merge,
    and the file is reproducible from the plays."""
    chunks = tiny.split_chunks(tiny.load_texts())
    retrained = tiny_bpe.train_tokenizer(chunks["train"])
    assert json.loads(retrained.to_str()) == json.loads(tiny_bpe.TOKENIZER_FILE.read_text())
    assert tiny_bpe.load_tokenizer().get_vocab_size() == tiny_bpe.VOCAB_SIZE


def test_dataset_is_the_byte_text_in_bpe(bpe_data, tiny_data):
    """Each split decodes to exactly the byte dataset's split (the same chunks, the same plays),
    with the separator where a play starts; and the manifest is the one the task pins."""
    task = load_task("Speedrun-Tiny-v1")
    manifest = verify_dataset(bpe_data, task.data.manifest_sha256)
    assert manifest.vocab_size == 1024
    byte_manifest = load_manifest(tiny_data)
    tok = tiny_bpe.load_tokenizer()
    for split in ("train", "val", "hidden_val"):
        ids = _split_bytes(bpe_data, manifest, split, dtype=np.int64)
        raw = bytes(_split_bytes(tiny_data, byte_manifest, split, dtype=np.uint8))
        assert int((ids == tiny_bpe.SEPARATOR).sum()) == raw.count(bytes([tiny.SEPARATOR]))
        text = tok.decode([int(i) for i in ids if i != tiny_bpe.SEPARATOR])
        assert text.encode() == raw.replace(bytes([tiny.SEPARATOR]), b"")
        assert 2.2 < len(raw) / len(ids) < 2.5  # bytes per token


def test_a_changed_tokenizer_file_is_refused(monkeypatch, tmp_path):
    bad = tmp_path / "tok.json"
    bad.write_text(tiny_bpe.TOKENIZER_FILE.read_text().replace('"the"', '"teh"', 1))
    monkeypatch.setattr(tiny_bpe, "TOKENIZER_FILE", bad)
    with pytest.raises(DataError, match="expected"):
        tiny_bpe.load_tokenizer()


@pytest.mark.slow
def test_a_vocabulary_of_another_size_for_experiments(tmp_path, tiny_data, monkeypatch):
    """benchmarks/fidelity_suite/bpe_vocab.py: the same plays and splits in a BPE of another
    size, trained on train alone, in the dataset's layout (what run_direct.sh and
    ngram_floor.py read); it refuses a folder that is not empty, and a size with nothing to
    merge (it wrote a manifest of 10 tokens over data of 257)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "fidelity_suite" / "bpe_vocab.py"
    out = tmp_path / "bpe512"
    done = subprocess.run([sys.executable, str(script), "--vocab", "512", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = verify_dataset(out)
    assert manifest.vocab_size == 512
    byte_manifest = load_manifest(tiny_data)
    for split in ("train", "val", "hidden_val"):
        ids = _split_bytes(out, manifest, split, dtype=np.int64)
        raw = _split_bytes(tiny_data, byte_manifest, split, dtype=np.uint8)
        assert ids.min() >= 0 and ids.max() < 512
        assert int((ids == tiny_bpe.SEPARATOR).sum()) == int((raw == tiny.SEPARATOR).sum())
    again = subprocess.run([sys.executable, str(script), "--vocab", "512", "--out", str(out)],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode != 0 and "not empty" in again.stderr
    tiny_vocab = subprocess.run([sys.executable, str(script), "--vocab", "10", "--out", str(tmp_path / "v10")],
                                capture_output=True, text=True, timeout=300)  # fmt: skip
    assert tiny_vocab.returncode != 0 and "257 to 65,536" in tiny_vocab.stderr
    assert not (tmp_path / "v10").exists()  # refused before anything was written
