#!/usr/bin/env bash
# Decoding sweeps on a trained Difformer run: steps (Fig. 3) and length x noise beams (Table 4).
# Each writes metrics_<suffix>.json and samples_<suffix>.jsonl into the run directory.
# Usage: experiments/difformer/decode_sweeps.sh RUN_DIR [NUM_SOURCES]   (default: the whole test split)
set -euo pipefail
RUN=$1
N=${2:-null}
BIN=${BIN:-.venv/bin}
sample() { "$BIN/textdiff-sample" run_dir="$RUN" num_samples="$N" "$@"; }

for K in 2 5 10 20 200; do
  sample sampler.num_steps=$K sampler.early_stop=0 generate.length_beam=1 generate.noise_beam=1 suffix=_k${K}
done
sample sampler.num_steps=20 sampler.early_stop=5 generate.length_beam=1 generate.noise_beam=1 suffix=_k20_stop5
for B in 1x1 3x1 1x3 3x3 7x3; do
  sample generate.length_beam=${B%x*} generate.noise_beam=${B#*x} generate.select=logprob suffix=_b${B}_logprob
  sample generate.length_beam=${B%x*} generate.noise_beam=${B#*x} generate.select=mbr suffix=_b${B}_mbr
done
