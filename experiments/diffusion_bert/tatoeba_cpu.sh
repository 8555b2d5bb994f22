#!/usr/bin/env bash
# DiffusionBERT on Tatoeba English at CPU scale (2 cores): the untrained model (step 0), the preset,
# the steps sweep K in {2, 8, 16, 64, 128} (samples; the bound does not depend on the sampler's K: the trained
# run's metrics.json has it at the official K = T/4 = 512), and sampling speed with and without the
# unchanged-input cache at K = 128, 512 and 2048.
# Usage: experiments/diffusion_bert/tatoeba_cpu.sh [OUT_DIR]      (run from the repository root)
set -euo pipefail
OUT=${1:-outputs/experiments/diffusion_bert_tatoeba_cpu}
BIN=${BIN:-.venv/bin}
RUN="$OUT/trained"

"$BIN/textdiff-train" experiment=diffusion_bert_tatoeba_cpu trainer.max_steps=0 hydra.run.dir="$OUT/step0"
"$BIN/textdiff-train" experiment=diffusion_bert_tatoeba_cpu hydra.run.dir="$RUN"
for K in 2 8 16 64 128; do
  "$BIN/textdiff-sample" run_dir="$RUN" ckpt=last sampler.num_steps=$K nll_batches=0 suffix=_k$K
done
for K in 128 512 2048; do
  "$BIN/textdiff-sample" run_dir="$RUN" ckpt=last sampler.num_steps=$K num_samples=100 nll_batches=0 \
    sampler.reuse_unchanged=true suffix=_k${K}_cache
  "$BIN/textdiff-sample" run_dir="$RUN" ckpt=last sampler.num_steps=$K num_samples=100 nll_batches=0 \
    sampler.reuse_unchanged=false suffix=_k${K}_nocache
done
