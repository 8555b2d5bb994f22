#!/usr/bin/env bash
# Difformer's ablation (paper Table 3 analogue) as one Hydra multirun over conf/variant/difformer_*:
# full, w/o anchor loss, w/o anchor loss + fixed embeddings, w/o embedding LayerNorm, w/o noise factor,
# and the Diffusion-LM-style baseline (rounding loss, no LayerNorm, F = 1). STEPS shortens each run.
# Usage: STEPS=1500 experiments/difformer/ablation_cpu.sh [OUT_DIR]
set -euo pipefail
OUT=${1:-outputs/experiments/difformer_ablation_cpu}
BIN=${BIN:-.venv/bin}
STEPS=${STEPS:-2000}
"$BIN/textdiff-train" -m experiment=difformer_multi30k_cpu ablation=difformer_table3 \
  trainer.max_steps="$STEPS" trainer.enable_progress_bar=false hydra.sweep.dir="$OUT"
