"""What count models score on a dataset's val split: the n-gram floor a track should train past.

    python benchmarks/ngram_floor.py tiny-bpe [--tokens 32768]
    python benchmarks/ngram_floor.py DIR       (a dataset folder, e.g. one bpe_vocab.py wrote)

Fits unigram, interpolated bigram and interpolated trigram counts on the train split and prints
each one's loss (nats per token) on the first ``--tokens`` val tokens, the ones a track's
script reports on. A baseline that ends near the bigram's loss trains in the n-gram regime,
where ideas that hand the model neighbouring tokens win far more than they did in the speedrun.
"""

from __future__ import annotations

import argparse
import itertools
import math
from collections import Counter
from pathlib import Path

import numpy as np

from nanoenv.data import _canonical as canonical
from nanoenv.data import dataset_root, load_manifest, read_shard


def split_tokens(root, manifest, split: str) -> np.ndarray:
    return np.concatenate([read_shard(root / f) for f in manifest.split_files(split)]).astype(
        np.int64
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--tokens", type=int, default=32768)
    args = ap.parse_args()
    root = Path(args.dataset)
    if not (root / "manifest.json").is_file():
        root = dataset_root(canonical(args.dataset))
    manifest = load_manifest(root)
    train, val = split_tokens(root, manifest, "train"), split_tokens(root, manifest, "val")
    val = val[: args.tokens + 1]
    vocab = int(max(train.max(), val.max())) + 1
    unigram = np.bincount(train, minlength=vocab) + 0.5
    p_uni = unigram / unigram.sum()
    print(f"{args.dataset}: {len(train):,} train tokens, {len(val) - 1:,} val tokens scored")
    print(f"  unigram                       {-np.mean(np.log(p_uni[val[1:]])):.4f}")
    pairs = Counter(zip(train[:-1].tolist(), train[1:].tolist(), strict=True))
    firsts = Counter(train[:-1].tolist())
    triples = Counter(
        zip(train[:-2].tolist(), train[1:-1].tolist(), train[2:].tolist(), strict=True)
    )

    def p_bi(a: int, b: int, lam: float) -> float:
        n = firsts.get(a, 0)
        return lam * (pairs.get((a, b), 0) / n if n else 0.0) + (1 - lam) * p_uni[b]

    for lam in (0.8, 0.9, 0.95):
        loss = -np.mean([math.log(p_bi(a, b, lam)) for a, b in itertools.pairwise(val)])
        print(f"  bigram, weight {lam:<4}          {loss:.4f}")
    for lam3 in (0.5, 0.7):
        total = 0.0
        for a, b, c in zip(val[:-2].tolist(), val[1:-1].tolist(), val[2:].tolist(), strict=True):
            n = pairs.get((a, b), 0)
            pb = p_bi(b, c, 0.8)
            total -= math.log(lam3 * triples.get((a, b, c), 0) / n + (1 - lam3) * pb if n else pb)
        print(f"  trigram, weight {lam3:<4}         {total / (len(val) - 2):.4f}")


if __name__ == "__main__":
    main()
