#!/usr/bin/env bash
# Diffusion-LM on E2E at CPU scale (2 cores): the untrained model (step 0), the ~10-minute preset,
# and the trained model sampled with 200/2000 steps, with and without clamping, and with DDIM.
# Usage: experiments/diffusion_lm/e2e_cpu.sh [OUT_DIR]      (run from the repository root)
set -euo pipefail
OUT=${1:-outputs/experiments/diffusion_lm_e2e_cpu}
BIN=${BIN:-.venv/bin}

"$BIN/textdiff-train" experiment=diffusion_lm_e2e_cpu trainer.max_steps=0 hydra.run.dir="$OUT/step0"
"$BIN/textdiff-train" experiment=diffusion_lm_e2e_cpu hydra.run.dir="$OUT/trained"
# the run itself wrote metrics.json: 200 ancestral steps with clamping (the paper's E2E setting)
"$BIN/textdiff-sample" run_dir="$OUT/trained" clamp=false suffix=_k200_noclamp
"$BIN/textdiff-sample" run_dir="$OUT/trained" sampler.num_steps=2000 suffix=_k2000
"$BIN/textdiff-sample" run_dir="$OUT/trained" sampler.num_steps=2000 clamp=false suffix=_k2000_noclamp
"$BIN/textdiff-sample" run_dir="$OUT/trained" sampler.eta=0 suffix=_k200_ddim
