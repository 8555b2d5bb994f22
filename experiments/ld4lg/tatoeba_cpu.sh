#!/usr/bin/env bash
# LD4LG on Tatoeba English at CPU scale (2 cores): stage 0 (a small BART, text infilling), stage 1 (the
# latent autoencoder on the frozen BART), stage 2 (latent diffusion) with and without self-conditioning,
# then the number of DDPM steps K, all judged by the library's AR LM (ar_lm_tatoeba_cpu) for lm_ppl.
# Usage: experiments/ld4lg/tatoeba_cpu.sh [OUT_DIR]      (run from the repository root)
set -euo pipefail
OUT=${1:-outputs/experiments/ld4lg_tatoeba_cpu}
BIN=${BIN:-.venv/bin}
# the presets' own budgets, as in experiments/README.md (set these for longer runs)
STEPS0=${STEPS0:-1500}; STEPS1=${STEPS1:-1500}; STEPS2=${STEPS2:-2000}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # one thread per job: small models gain little from two

"$BIN/textdiff-train" experiment=ar_lm_tatoeba_cpu hydra.run.dir="$OUT/lm"
"$BIN/textdiff-train" experiment=ld4lg_bart_tatoeba_cpu trainer.max_steps="$STEPS0" hydra.run.dir="$OUT/bart"
"$BIN/textdiff-train" experiment=ld4lg_ae_tatoeba_cpu trainer.max_steps="$STEPS1" model.bart_path="$OUT/bart/bart" \
  hydra.run.dir="$OUT/ae"
AE="$OUT/ae/checkpoints/last.ckpt"
"$BIN/textdiff-train" experiment=ld4lg_tatoeba_cpu trainer.max_steps="$STEPS2" model.autoencoder_path="$AE" eval.lm="$OUT/lm" \
  hydra.run.dir="$OUT/diffusion"
"$BIN/textdiff-train" experiment=ld4lg_tatoeba_cpu trainer.max_steps="$STEPS2" model.autoencoder_path="$AE" eval.lm="$OUT/lm" \
  model.network.self_condition=false hydra.run.dir="$OUT/diffusion_no_selfcond"
for K in 25 100 250; do
  "$BIN/textdiff-sample" run_dir="$OUT/diffusion" ckpt=last sampler.num_steps=$K suffix=_k$K
done
"$BIN/python" experiments/ld4lg/noise_levels.py "$OUT/diffusion"     # denoising BLEU by noise level
