#!/usr/bin/env bash
# Difformer on Multi30k de->en at CPU scale (2 cores): the preset (about 30 minutes of training), then
# the decoding sweeps on its checkpoint over the whole test split (1,000 sentences):
#   steps K in {2, 5, 10, 20, 200} without early stopping and K = 20 stopped at 5 (paper Fig. 3, with
#   sentences/s), and length beam x noise beam in {1x1, 3x1, 1x3, 3x3, 7x3} by mean log-prob and by
#   BLEU-MBR (paper Table 4).
# Usage: experiments/difformer/multi30k_cpu.sh [OUT_DIR]      (run from the repository root)
set -euo pipefail
OUT=${1:-outputs/experiments/difformer_multi30k_cpu}
BIN=${BIN:-.venv/bin}
RUN="$OUT/trained"

"$BIN/textdiff-train" experiment=difformer_multi30k_cpu hydra.run.dir="$RUN"
experiments/difformer/decode_sweeps.sh "$RUN"
