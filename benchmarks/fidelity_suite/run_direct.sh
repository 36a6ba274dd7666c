#!/usr/bin/env bash
# One fidelity run outside the harness, as the README's budget experiments were measured:
#   benchmarks/fidelity_suite/run_direct.sh IDEA STEPS SEED [OUT_DIR]
# (IDEA: a suite idea's name, "baseline", or the path of a .diff on the candidate, e.g. one of
# fidelity_suite/stacks/, ideas combined by hand)
# copies the v1 candidate's train.py, applies the idea's patch (none for "baseline"), runs it
# for STEPS steps (val every STEPS/12) on one thread with NANOENV_SEED=SEED, and prints the
# final val line. `fidelity.py --set num_iterations=STEPS` is the same through the harness,
# with the harness's own seeds.
set -euo pipefail
IDEA=$1; STEPS=$2; SEED=$3
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${4:-$(mktemp -d)}
mkdir -p "$OUT" && cd "$OUT"
cp "$ROOT/benchmarks/fidelity_suite/candidates/tiny-v1/train.py" .
case "$IDEA" in
    baseline) ;;
    *.diff) patch -s -p1 < "$(cd "$ROOT" && realpath "$IDEA")" ;;
    *) patch -s -p1 < "$ROOT/benchmarks/fidelity_suite/tiny-v1/$IDEA.diff" ;;
esac
DATA=$("$ROOT/.venv/bin/nanoenv" data path tiny-bpe)/public
OMP_NUM_THREADS=1 NANOENV_DATA_DIR=$DATA NANOENV_OUT_DIR=$OUT/out NANOENV_SEED=$SEED \
NANOENV_OVERRIDES="{\"num_iterations\":$STEPS,\"val_every\":$((STEPS / 12))}" \
    "$ROOT/.venv/bin/python" train.py > log.txt 2>&1
echo "$IDEA $STEPS $SEED $(grep val_loss log.txt | tail -1)"
