#!/usr/bin/env bash
# Quality against speed of every family's decoding (issue 20): train the CPU presets (or reuse runs), then
# benchmarks/curves.py on each trained run with its AR baseline, and the AR baseline's cache benchmark.
# Usage: experiments/sampling/curves_cpu.sh [OUT_DIR]     (run from the repository root; hours on 2 CPU cores:
#        the runs of 2026-12-04 were trained on a GPU with the same presets, see experiments/README.md)
# DiffusionBERT decodes with the closed-form filtered posterior (its default since 2026-12-04) also when DBERT names
# a run saved before, whose config says closed_form_posterior: false.
# Reuse trained runs with DLM=<dir> DBERT=<dir> DIFFORMER=<dir> AR=<dir> AR_LM_E2E=<dir> AR_LM_TATOEBA=<dir>.
set -euo pipefail
OUT=${1:-outputs/experiments/sampling_curves}
BIN=${BIN:-.venv/bin}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
train() {  # train <var> <experiment> [overrides...]: the run directory, trained unless the variable names one
  local var=$1 exp=$2; shift 2
  if [ -z "${!var:-}" ]; then "$BIN/textdiff-train" experiment="$exp" hydra.run.dir="$OUT/$exp" "$@" >&2; fi
  echo "${!var:-$OUT/$exp}"
}
DLM=$(train DLM diffusion_lm_e2e_cpu)
DBERT=$(train DBERT diffusion_bert_tatoeba_cpu)
DIFFORMER=$(train DIFFORMER difformer_multi30k_cpu)
AR=$(train AR ar_multi30k_cpu data.tokenizer_path="$DIFFORMER/tokenizer")
AR_LM_E2E=$(train AR_LM_E2E ar_lm_e2e_cpu)
AR_LM_TATOEBA=$(train AR_LM_TATOEBA ar_lm_tatoeba_cpu)
"$BIN/python" -m benchmarks.curves --run-dir "$DLM" --name diffusion_lm --ar-run "$AR_LM_E2E" --latency 20
"$BIN/python" -m benchmarks.curves --run-dir "$DBERT" --name diffusion_bert --ar-run "$AR_LM_TATOEBA" --latency 20 \
  --sampler closed_form_posterior=true \
  --taus 0.1,0.2,0.3,0.5,0.9
"$BIN/python" -m benchmarks.curves --run-dir "$DIFFORMER" --name difformer --ar-run "$AR" --latency 20
# LD4LG needs its stages 0-1 first: LD4LG=<stage-2 run> (e.g. the Tatoeba table's entrant, experiments/compare/
# tatoeba_cpu.sh) with LD4LG_AR=<an AR LM run on the same data> adds its curves
if [ -n "${LD4LG:-}" ]; then
  "$BIN/python" -m benchmarks.curves --run-dir "$LD4LG" --name ld4lg ${LD4LG_AR:+--ar-run "$LD4LG_AR"} --latency 20
fi
"$BIN/python" -m benchmarks.ar_decoding --run-dir "$AR" --ckpt last
