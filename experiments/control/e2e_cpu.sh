#!/usr/bin/env bash
# Plug-and-play control on E2E at CPU scale (Diffusion-LM §5.2, semantic content = the MR's food slot):
#   1. Diffusion-LM (experiment=diffusion_lm_e2e_cpu)             -> $OUT/dlm
#   2. its noisy-latent food classifier (diffusion_lm_e2e_control_cpu) -> $OUT/noisy
#   3. judges trained on clean text: a food TextClassifier (classifier_e2e_cpu data.label_slot=food) and
#      an AR LM (ar_lm_e2e_cpu)                                     -> $OUT/judge, $OUT/lm
#   4. samples for each food with guidance (a lambda sweep at 3 steps; a steps sweep at lambda 0.01) and
#      without (control.steps=0: the same seeds, unguided), scored by the judges: control success =
#      class_accuracy, fluency = lm_ppl;
#   5. length control: a length NoisyClassifier (diffusion_lm_e2e_length_cpu) -> $OUT/length, samples of
#      10 and 16 tokens with and without guidance: length_match (exact), length_mae.
# Usage: experiments/control/e2e_cpu.sh [OUT] ; SKIP_TRAIN=1 reuses trained runs; N= samples per setting.
set -euo pipefail
OUT=${1:-outputs/experiments/control_e2e_cpu}
BIN=${BIN:-.venv/bin}
N=${N:-100}
LABELS=${LABELS:-"Italian Japanese"}
if [ -z "${SKIP_TRAIN:-}" ]; then
  "$BIN/textdiff-train" experiment=diffusion_lm_e2e_cpu trainer.enable_progress_bar=false hydra.run.dir="$OUT/dlm"
  "$BIN/textdiff-train" experiment=diffusion_lm_e2e_control_cpu model.diffusion.checkpoint="$OUT/dlm/checkpoints/last.ckpt" \
    trainer.enable_progress_bar=false hydra.run.dir="$OUT/noisy"
  "$BIN/textdiff-train" experiment=classifier_e2e_cpu data.label_slot=food trainer.enable_progress_bar=false \
    hydra.run.dir="$OUT/judge"
  "$BIN/textdiff-train" experiment=ar_lm_e2e_cpu trainer.enable_progress_bar=false hydra.run.dir="$OUT/lm"
  "$BIN/textdiff-train" experiment=diffusion_lm_e2e_length_cpu model.diffusion.checkpoint="$OUT/dlm/checkpoints/last.ckpt" \
    trainer.enable_progress_bar=false hydra.run.dir="$OUT/length"
fi
for label in $LABELS; do
  common=(run_dir="$OUT/dlm" ckpt=last num_samples="$N" nll_batches=0 control.classifier="$OUT/noisy"
          control.label="$label" classifier="$OUT/judge" lm="$OUT/lm")
  "$BIN/textdiff-sample" "${common[@]}" control.steps=0 suffix="_ctl_${label}_unguided"
  for fluency in 0.0005 0.01 0.1; do
    "$BIN/textdiff-sample" "${common[@]}" control.steps=3 control.fluency="$fluency" suffix="_ctl_${label}_l${fluency}"
  done
done
common=(run_dir="$OUT/dlm" ckpt=last num_samples="$N" nll_batches=0 control.classifier="$OUT/noisy"
        control.label=Italian classifier="$OUT/judge" lm="$OUT/lm" control.fluency=0.01)
for k in 1 5; do
  "$BIN/textdiff-sample" "${common[@]}" control.steps="$k" suffix="_ctl_Italian_l0.01_k$k"
done
for n in 10 16; do
  common=(run_dir="$OUT/dlm" ckpt=last num_samples="$N" nll_batches=0 control.classifier="$OUT/length"
          control.label="$n" lm="$OUT/lm")
  "$BIN/textdiff-sample" "${common[@]}" control.steps=0 suffix="_len${n}_unguided"
  "$BIN/textdiff-sample" "${common[@]}" control.steps=3 control.fluency=0.01 suffix="_len${n}_l0.01"
done
