#!/usr/bin/env bash
# The schedule x time-conditioning ablation as one Hydra multirun (6 runs). STEPS shortens each run
# (the preset's 4,000 steps: 1,892 s of fit for one cell on one thread beside another training, 2026-12-03).
# Usage: STEPS=1500 experiments/diffusion_bert/ablation_cpu.sh [OUT_DIR]
set -euo pipefail
OUT=${1:-outputs/experiments/diffusion_bert_ablation_cpu}
BIN=${BIN:-.venv/bin}
STEPS=${STEPS:-4000}
"$BIN/textdiff-train" -m experiment=diffusion_bert_tatoeba_cpu ablation=diffusion_bert_schedule_time \
  trainer.max_steps="$STEPS" trainer.enable_progress_bar=false hydra.sweep.dir="$OUT"
