#!/usr/bin/env bash
# Cross-family comparison on Tatoeba English at CPU scale (experiments/README.md § Cross-family comparison):
#   0. the shared tokenizer (word level, a [MASK] token added)          -> $OUT/tokenizer
#   1. the judge: a decoder-only AR LM (ar_lm_tatoeba_cpu, seed 1, JUDGE_STEPS: 2 x STEPS) on the shared
#      tokenizer                                                          -> $OUT/judge
#   2. LD4LG's stages 0 (BART) and 1 (autoencoder), each at the comparison budget (compare.steps)
#                                                                         -> $OUT/bart, $OUT/ae
#   3. the table: ONE multirun over every conf/experiment/compare_tatoeba_*_cpu.yaml (AR LM, Diffusion-LM,
#      DiffusionBERT, LD4LG, MDLM), same data, tokenizer, steps x batch and evaluation  -> $OUT/table/<n>
#      and the degenerate references (frequent training sentences, a low-temperature unigram sampler); every
#      entrant's learning curve (10 points, conf/compare/tatoeba_cpu.yaml) -> $OUT/table/<n>/learning_curve.jsonl
#   4. sampling speed and quality against the number of steps K (textdiff-sample, diffusion entrants), and against
#      the temperature (the AR LM and the unigram reference): the frontier's curves
#   5. textdiff-report: $OUT/report (quality and cost, the frontier judge PPL vs entropy, the learning curves
#      against training time and FLOPs) and $OUT/report_steps (K sweep)
# Usage: experiments/compare/tatoeba_cpu.sh [OUT] ; JUDGE=<AR LM run> uses that judge instead of step 1 (any
# tokenizer: a judge scores text with its own); SKIP_PREP=1 reuses steps 0-2; STEPS= overrides compare.steps
# (CPU: 500); JUDGE_STEPS= the judge's steps (CPU: 2 x STEPS); JOBS=N runs N jobs at once, each on nproc/N threads
# (default: one per core at SCALE=cpu, 1 at SCALE=gpu): the judge beside LD4LG's stages, the table's entrants
# (hydra/launcher=parallel), the K sweep. RESUME=1 (with SKIP_PREP=1) continues a killed table: every entrant
# that had started from its last.ckpt (resume=auto), its learning curve included.
# SCALE=gpu runs the GPU-scale table (conf/compare/tatoeba_gpu.yaml: 20,000 steps of 128, bart-base-sized stage 0).
set -euo pipefail
OUT=${1:-outputs/experiments/compare_tatoeba_cpu}
BIN=${BIN:-.venv/bin}
source "$(dirname "$0")/scale.sh"   # SCALE, STEPS, WARMUP, JUDGE_STEPS, KS, JOBS, common, bart, launcher, spawn, ...
judge() {
  "$BIN/textdiff-train" experiment=ar_lm_tatoeba_cpu seed=1 trainer.max_steps="$JUDGE_STEPS" \
    +data.tokenizer.add_mask_token=true data.tokenizer_path="$OUT/tokenizer" hydra.run.dir="$OUT/judge" "${common[@]}" \
    > "$OUT/judge.log" 2>&1
}
ld4lg_stages() {
  "$BIN/textdiff-train" experiment=ld4lg_bart_tatoeba_cpu trainer.max_steps="$STEPS" \
    model.lr_scheduler.warmup_steps="$WARMUP" eval.num_samples=200 data.tokenizer_path="$OUT/tokenizer" \
    hydra.run.dir="$OUT/bart" "${common[@]}" "${bart[@]}"
  "$BIN/textdiff-train" experiment=ld4lg_ae_tatoeba_cpu model.bart_path="$OUT/bart/bart" trainer.max_steps="$STEPS" \
    model.lr_scheduler.warmup_steps="$WARMUP" eval.num_samples=200 hydra.run.dir="$OUT/ae" "${common[@]}"
}
if [ -z "${SKIP_PREP:-}" ]; then
  mkdir -p "$OUT"
  # the tokenizer first (both preparation runs read it), then the judge beside LD4LG's stages 0-1
  "$BIN/textdiff-train" experiment=ar_lm_tatoeba_cpu +data.tokenizer.add_mask_token=true trainer.max_steps=0 \
    evaluate=false logger=csv data.tokenizer_path="$OUT/tokenizer" hydra.run.dir="$OUT/tokenizer_run" "${common[@]}"
  [ -n "${JUDGE:-}" ] || spawn judge
  spawn ld4lg_stages
  wait_all
fi
# LD4LG reads the shared tokenizer like every entrant: its BART must have been trained on it
cmp "$OUT/tokenizer/vocab.json" "$OUT/ae/tokenizer/vocab.json"
"$BIN/textdiff-train" -m ablation="compare_tatoeba_$SCALE" compare.steps="$STEPS" \
  compare.judge="${JUDGE:-$OUT/judge}" compare.tokenizer="$OUT/tokenizer" \
  compare.ld4lg_autoencoder="$OUT/ae/checkpoints/last.ckpt" hydra.sweep.dir="$OUT/table" \
  trainer.enable_progress_bar=false ${RESUME:+resume=auto} "${launcher[@]}"
for run in "$OUT"/table/*/; do sweep "$run"; done
wait_all
"$BIN/textdiff-report" "$OUT/table" --columns task_name --out "$OUT/report" \
  --frontier --frontier corpus_entropy,lm_ppl --learning-curves \
  --metrics 'lm_ppl,entropy,corpus_entropy,dist-*,self_bleu,memorization,mean_length,sequences_per_second,nll,bpt,fit_seconds,train_examples,trainable_params,global_step'
"$BIN/textdiff-report" "$OUT/table" --metrics-file 'metrics_k*.json' --columns task_name,metrics_file \
  --metrics 'sampler.num_steps,sequences_per_second,lm_ppl,dist-2,self_bleu' --out "$OUT/report_steps"
