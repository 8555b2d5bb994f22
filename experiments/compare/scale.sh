# Sourced by experiments/compare/{tatoeba,e2e}_cpu.sh: the settings of one scale of the comparison tables.
# SCALE=cpu (default): compare.steps 1,000 and the CPU presets' sizes. SCALE=gpu: 20,000 steps, batch 128 on one
# GPU for the preparation runs too, and a bart-base-shaped stage-0 BART for LD4LG. Sets STEPS, SCALE, KS and the
# arrays `common` (every preparation run) and `bart` (LD4LG stage 0).
SCALE=${SCALE:-cpu}
KS=${KS:-10,50,200}
if [ "$SCALE" = gpu ]; then
  STEPS=${STEPS:-20000}
  common=(trainer.enable_progress_bar=false trainer=gpu data.batch_size=128)
  bart=(model.bart.d_model=768 model.bart.encoder_layers=6 model.bart.decoder_layers=6 model.bart.encoder_attention_heads=12
        model.bart.decoder_attention_heads=12 model.bart.encoder_ffn_dim=3072 model.bart.decoder_ffn_dim=3072)
elif [ "$SCALE" = cpu ]; then
  STEPS=${STEPS:-1000}
  common=(trainer.enable_progress_bar=false)
  bart=()
else
  echo "SCALE=$SCALE: expected cpu or gpu" >&2
  exit 2
fi
