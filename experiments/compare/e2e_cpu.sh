#!/usr/bin/env bash
# Cross-family comparison on E2E at CPU scale (experiments/README.md § Cross-family comparison):
#   0. the shared tokenizer, built over MRs and references by the first entrant's data config -> $OUT/tokenizer
#   1. the judge: a decoder-only AR LM of the references (ar_lm_e2e_cpu, seed 1, JUDGE_STEPS: 2 x STEPS)
#                                                                         -> $OUT/judge
#   2. LD4LG's stages 0 (BART) and 1 (autoencoder) on the references, each at the comparison budget
#                                                                         -> $OUT/bart, $OUT/ae
#   3. the table: ONE multirun over every conf/experiment/compare_e2e_*_cpu.yaml: references alone (AR LM,
#      Diffusion-LM, DiffusionBERT, LD4LG, MDLM, the degenerate references) and data-to-text MR -> reference
#      (AR encoder-decoder, Difformer, LD4LG seq2seq); every entrant's learning curve  -> $OUT/table/<n>
#   4. sampling speed and quality against the number of steps K (textdiff-sample, diffusion entrants), and against
#      the temperature (the AR LM and the unigram reference): the frontier's curves
#   5. textdiff-report: $OUT/report_text (references alone, with the frontier and learning curves), $OUT/report_d2t
#      (data-to-text, with learning curves), $OUT/report_steps
# Usage: experiments/compare/e2e_cpu.sh [OUT] ; JUDGE=<AR LM run> uses that judge instead of step 1 (any
# tokenizer: a judge scores text with its own); SKIP_PREP=1 reuses steps 0-2; STEPS= overrides compare.steps
# (CPU: 500); JUDGE_STEPS= the judge's steps (CPU: 2 x STEPS); JOBS=N runs N jobs at once, each on nproc/N threads
# (default: one per core at SCALE=cpu, 1 at SCALE=gpu): the judge beside LD4LG's stages, the table's entrants
# (hydra/launcher=parallel), the K sweep. RESUME=1 (with SKIP_PREP=1) continues a killed table: every entrant
# that had started from its last.ckpt (resume=auto), its learning curve included.
# SCALE=gpu runs the GPU-scale table (conf/compare/e2e_gpu.yaml: 20,000 steps of 128, bart-base-sized stage 0).
set -euo pipefail
OUT=${1:-outputs/experiments/compare_e2e_cpu}
BIN=${BIN:-.venv/bin}
source "$(dirname "$0")/scale.sh"   # SCALE, STEPS, WARMUP, JUDGE_STEPS, KS, JOBS, common, bart, launcher, spawn, ...
judge() {
  "$BIN/textdiff-train" experiment=ar_lm_e2e_cpu seed=1 trainer.max_steps="$JUDGE_STEPS" data.max_len=48 \
    data.tokenizer_path="$OUT/tokenizer" hydra.run.dir="$OUT/judge" "${common[@]}" > "$OUT/judge.log" 2>&1
}
ld4lg_stages() {
  local stage=(data=e2e data.padding=pad data.max_len=48 trainer.max_steps="$STEPS"
               model.lr_scheduler.warmup_steps="$WARMUP" eval.num_samples=200)
  "$BIN/textdiff-train" experiment=ld4lg_bart_e2e_cpu "${stage[@]}" data.tokenizer_path="$OUT/tokenizer" \
    hydra.run.dir="$OUT/bart" "${common[@]}" "${bart[@]}"
  "$BIN/textdiff-train" experiment=ld4lg_ae_e2e_cpu "${stage[@]}" model.bart_path="$OUT/bart/bart" \
    hydra.run.dir="$OUT/ae" "${common[@]}"
}
if [ -z "${SKIP_PREP:-}" ]; then
  mkdir -p "$OUT"
  # the tokenizer first (every later run reads it), then the judge beside LD4LG's stages 0-1
  "$BIN/textdiff-train" experiment=compare_e2e_ar_cpu compare=e2e_cpu compare.tokenizer="$OUT/tokenizer" compare.ld4lg_autoencoder=null \
    trainer.max_steps=0 evaluate=false logger=csv hydra.run.dir="$OUT/tokenizer_run" "${common[@]}"
  [ -n "${JUDGE:-}" ] || spawn judge
  spawn ld4lg_stages
  wait_all
fi
cmp "$OUT/tokenizer/vocab.json" "$OUT/ae/tokenizer/vocab.json"  # the BART was trained on the shared vocabulary
"$BIN/textdiff-train" -m ablation="compare_e2e_$SCALE" compare.steps="$STEPS" \
  compare.judge="${JUDGE:-$OUT/judge}" compare.tokenizer="$OUT/tokenizer" \
  compare.ld4lg_autoencoder="$OUT/ae/checkpoints/last.ckpt" hydra.sweep.dir="$OUT/table" \
  trainer.enable_progress_bar=false ${RESUME:+resume=auto} "${launcher[@]}"
text=() d2t=()
for run in "$OUT"/table/*/; do
  if grep -q Seq2SeqDataModule "$run/config.yaml"; then d2t+=("$run"); else text+=("$run"); fi
  sweep "$run"
done
wait_all
cost=fit_seconds,train_examples,trainable_params,global_step
"$BIN/textdiff-report" "${text[@]}" --columns task_name --out "$OUT/report_text" \
  --frontier --frontier corpus_entropy,lm_ppl --learning-curves \
  --metrics "lm_ppl,entropy,corpus_entropy,dist-*,self_bleu,memorization,mean_length,sequences_per_second,nll,bpt,$cost"
"$BIN/textdiff-report" "${d2t[@]}" --columns task_name --out "$OUT/report_d2t" --learning-curves \
  --metrics "bleu,rouge*,chrf,lm_ppl,sentences_per_second,$cost"
"$BIN/textdiff-report" "$OUT/table" --metrics-file 'metrics_k*.json' --columns task_name,metrics_file \
  --metrics 'sampler.num_steps,sequences_per_second,sentences_per_second,lm_ppl,bleu,dist-2' --out "$OUT/report_steps"
