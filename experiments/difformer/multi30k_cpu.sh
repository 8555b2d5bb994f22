#!/usr/bin/env bash
# Difformer on Multi30k de->en at CPU scale (2 cores), as reported in experiments/README.md:
# the preset (2,000 steps), the autoregressive baseline on the same budget and vocabulary, the embedding
# analyses, the decoding sweeps on the first 200 test sources (K in {2, 5, 10, 20, 200}, K = 20 stopped
# at 5; 1x1, 3x2, 7x3 candidates by log-prob and BLEU-MBR), and AR reranking over the whole test split.
# Usage: experiments/difformer/multi30k_cpu.sh [OUT_DIR]      (run from the repository root)
set -euo pipefail
OUT=${1:-outputs/experiments/difformer_multi30k_cpu}
BIN=${BIN:-.venv/bin}
RUN="$OUT/trained"

"$BIN/textdiff-train" experiment=difformer_multi30k_cpu hydra.run.dir="$RUN"
"$BIN/textdiff-train" experiment=ar_multi30k_cpu data.tokenizer_path="$RUN/tokenizer" hydra.run.dir="$OUT/ar"
"$BIN/python" experiments/difformer/analyze.py "$RUN"
BEAMS="1x1 3x2 7x3" experiments/difformer/decode_sweeps.sh "$RUN" 200
"$BIN/textdiff-sample" run_dir="$RUN" reranker="$OUT/ar" generate.select=rerank suffix=_rerank
