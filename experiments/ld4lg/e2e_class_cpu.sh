#!/usr/bin/env bash
# LD4LG class-conditional on E2E (eatType: coffee shop / pub / restaurant) at CPU scale: stage 0 and 1 on the
# E2E references, stage 2 with a class embedding (classes dropped 10% of the time), the judge classifier
# (classifier_e2e_cpu) and a sweep of the classifier-free guidance weight w: class accuracy vs diversity.
# Usage: experiments/ld4lg/e2e_class_cpu.sh [OUT_DIR]      (run from the repository root)
set -euo pipefail
OUT=${1:-outputs/experiments/ld4lg_e2e_class_cpu}
BIN=${BIN:-.venv/bin}
# the presets' own budgets, as in experiments/README.md (set these for longer runs)
STEPS0=${STEPS0:-1500}; STEPS1=${STEPS1:-1500}; STEPS2=${STEPS2:-2000}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

"$BIN/textdiff-train" experiment=classifier_e2e_cpu hydra.run.dir="$OUT/classifier"
"$BIN/textdiff-train" experiment=ld4lg_bart_e2e_cpu trainer.max_steps="$STEPS0" hydra.run.dir="$OUT/bart"
"$BIN/textdiff-train" experiment=ld4lg_ae_e2e_cpu trainer.max_steps="$STEPS1" model.bart_path="$OUT/bart/bart" \
  trainer.val_check_interval=500 hydra.run.dir="$OUT/ae"
"$BIN/textdiff-train" experiment=ld4lg_e2e_class_cpu trainer.max_steps="$STEPS2" \
  model.autoencoder_path="$OUT/ae/checkpoints/last.ckpt" eval.classifier="$OUT/classifier" hydra.run.dir="$OUT/diffusion"
for W in 0 3; do   # w = 1 is the training run's own evaluation
  "$BIN/textdiff-sample" run_dir="$OUT/diffusion" ckpt=last generate.guidance_weight=$W num_samples=300 suffix=_w$W
done
