# Sourced by experiments/compare/{tatoeba,e2e}_cpu.sh: the settings of one scale of the comparison tables.
# SCALE=cpu (default): compare.steps 500, the judge at JUDGE_STEPS = 2 x STEPS, the CPU presets' sizes: a table,
# preparation and K sweep included, in under an hour on 2 cores (experiments/README.md § Cross-family comparison).
# SCALE=gpu: 20,000 steps, batch 128 on one GPU for the preparation runs too, the judge at its preset's 2,000 steps,
# and a bart-base-shaped stage-0 BART for LD4LG. Sets STEPS, WARMUP, JUDGE_STEPS, SCALE, KS, JOBS, the
# arrays `common` (every preparation run), `bart` (LD4LG stage 0) and `launcher` (the table's multirun), and the
# functions `spawn` / `wait_all` (at most $JOBS commands at once) and `k_sweep`.
SCALE=${SCALE:-cpu}
# the cores (GNU nproc reports OMP_NUM_THREADS instead when it is set: not what JOBS should follow)
CORES=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
KS=${KS:-10,50,200}
TS=${TS:-0.5,0.8,1.2}   # sampling temperatures of the frontier's AR LM and unigram-reference curves
SWEEP_SAMPLES=${SWEEP_SAMPLES:-200}   # samples of each K / temperature point: the table's eval.num_samples (a
                                      # frontier compares corpus entropies, which grow with the number of samples)
if [ "$SCALE" = gpu ]; then
  STEPS=${STEPS:-20000}
  JUDGE_STEPS=${JUDGE_STEPS:-2000}
  JOBS=${JOBS:-1}   # one GPU: one run at a time
  common=(trainer.enable_progress_bar=false trainer=gpu data.batch_size=128)
  bart=(model.bart.d_model=768 model.bart.encoder_layers=6 model.bart.decoder_layers=6 model.bart.encoder_attention_heads=12
        model.bart.decoder_attention_heads=12 model.bart.encoder_ffn_dim=3072 model.bart.decoder_ffn_dim=3072)
elif [ "$SCALE" = cpu ]; then
  STEPS=${STEPS:-500}
  JUDGE_STEPS=${JUDGE_STEPS:-$((2 * STEPS))}
  JOBS=${JOBS:-$CORES}   # one-thread runs side by side, one per core
  common=(trainer.enable_progress_bar=false)
  bart=()
else
  echo "SCALE=$SCALE: expected cpu or gpu" >&2
  exit 2
fi
WARMUP=$(( STEPS / 5 ))   # LD4LG stages 0-1 (the table follows compare.steps: conf/compare/*.yaml, td.div)
# every process of the script (preparation runs, the table's jobs, the K sweep) gets its share of the cores
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( CORES / JOBS > 0 ? CORES / JOBS : 1 ))}
launcher=()
[ "$JOBS" -le 1 ] || launcher=(hydra/launcher=parallel hydra.launcher.n_jobs="$JOBS")
# spawn CMD...: run CMD in the background once fewer than $JOBS are running; wait_all: wait for them (and stop the
# script, under set -e, if one failed)
pids=()
spawn() { while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done; "$@" & pids+=($!); }
wait_all() { local p; for p in "${pids[@]}"; do wait "$p"; done; pids=(); }
# k_sweep RUN: sample RUN's last checkpoint at each K of $KS ($SWEEP_SAMPLES samples, metrics_k<K>.json) through spawn
k_sweep() {
  local k
  for k in ${KS//,/ }; do
    spawn "$BIN/textdiff-sample" run_dir="$1" ckpt=last num_samples="$SWEEP_SAMPLES" nll_batches=0 sampler.num_steps="$k" \
      suffix="_k$k"
  done
}
# t_sweep RUN: sample RUN (an AR LM or the unigram reference) at each temperature of $TS ($SWEEP_SAMPLES samples,
# metrics_t<T>.json): its curve on the frontier (textdiff-report --frontier)
t_sweep() {
  local t
  for t in ${TS//,/ }; do
    spawn "$BIN/textdiff-sample" run_dir="$1" ckpt=last num_samples="$SWEEP_SAMPLES" nll_batches=0 \
      generate.temperature="$t" suffix="_t$t"
  done
}
# sweep RUN: the K sweep of a diffusion entrant, the temperature sweep of an AR LM or the unigram reference
sweep() {
  if grep -q "AbsorbingProcess\|GaussianProcess" "$1/config.yaml"; then k_sweep "$1"
  elif grep -q "^task_name: compare_.*\(ar_lm\|reference_unigram\)" "$1/config.yaml"; then t_sweep "$1"; fi
}
