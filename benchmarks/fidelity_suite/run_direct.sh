#!/usr/bin/env bash
# One fidelity run outside the harness, as the README's budget experiments were measured:
#   benchmarks/fidelity_suite/run_direct.sh IDEA STEPS SEED [OUT_DIR] [OVERRIDES]
# (OVERRIDES: more hyperparameters as JSON, e.g. '{"muon_lr": 0.01}' for the Muon lr sweep)
# (IDEA: a suite idea's name, "baseline", or the path of a .diff on the candidate, e.g. one of
# fidelity_suite/stacks/, ideas combined by hand)
# copies the v1 candidate's train.py, applies the idea's patch (none for "baseline"), runs it
# for STEPS steps (val every STEPS/12) on one thread with NANOENV_SEED=SEED, and prints the
# final val line. `fidelity.py --set num_iterations=STEPS` is the same through the harness,
# with the harness's own seeds. DATA=DIR reads another dataset's public folder (with
# OVERRIDES '{"vocab_size": V}' for a BPE of V tokens that bpe_vocab.py wrote).
set -euo pipefail
IDEA=$1; STEPS=$2; SEED=$3
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${4:-$(mktemp -d)}
MORE=${5:-"{}"}
mkdir -p "$OUT" && cd "$OUT"
cp "$ROOT/envs/tiny-v1/train.py" .
case "$IDEA" in
    baseline) ;;
    *.diff) patch -s -p1 < "$(cd "$ROOT" && realpath "$IDEA")" ;;
    *) patch -s -p1 < "$ROOT/benchmarks/fidelity_suite/tiny-v1/$IDEA.diff" ;;
esac
DATA=${DATA:-$("$ROOT/.venv/bin/nanoenv" data path tiny-bpe)/public}
OMP_NUM_THREADS=1 NANOENV_DATA_DIR=$DATA NANOENV_OUT_DIR=$OUT/out NANOENV_SEED=$SEED \
NANOENV_OVERRIDES=$("$ROOT/.venv/bin/python" -c 'import json, sys; print(json.dumps({"num_iterations": int(sys.argv[1]), "val_every": int(sys.argv[1]) // 12, **json.loads(sys.argv[2])}))' "$STEPS" "$MORE") \
    "$ROOT/.venv/bin/python" train.py > log.txt 2>&1
echo "$IDEA $STEPS $SEED $(grep val_loss log.txt | tail -1)"
