#!/usr/bin/env bash
# Decoding sweeps on a trained Difformer run: steps K (paper Fig. 3, with sentences/s) and length x noise
# beams chosen by mean log-prob or BLEU-MBR (paper Table 4). Each call writes metrics_<suffix>.json and
# samples_<suffix>.jsonl into the run directory.
# Usage: [BEAMS="1x1 3x2 7x3"] experiments/difformer/decode_sweeps.sh RUN_DIR [NUM_SOURCES]
#        (NUM_SOURCES: the first N test sources; default the whole split)
set -euo pipefail
RUN=$1
N=${2:-null}
BIN=${BIN:-.venv/bin}
BEAMS=${BEAMS:-"1x1 3x1 1x3 3x3 7x3"}
TAG=$([ "$N" = null ] && echo "" || echo "_n$N")
sample() { "$BIN/textdiff-sample" run_dir="$RUN" num_samples="$N" "$@"; }

for K in 2 5 10 20 200; do
  sample sampler.num_steps=$K sampler.early_stop=0 generate.length_beam=1 generate.noise_beam=1 suffix=${TAG}_k${K}
done
sample sampler.num_steps=20 sampler.early_stop=5 generate.length_beam=1 generate.noise_beam=1 suffix=${TAG}_k20_stop5
for B in $BEAMS; do
  for S in logprob mbr; do
    sample generate.length_beam=${B%x*} generate.noise_beam=${B#*x} generate.select=$S suffix=${TAG}_b${B}_$S
  done
done
