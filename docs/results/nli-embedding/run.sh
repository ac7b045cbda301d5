#!/bin/bash
# The NLI-recipe experiment behind docs/results/nli-embedding/README.md (bounded subsets for a 2-core CPU).
# Usage: GLOTPOOL_DATA=/tmp/gp-data bash docs/results/nli-embedding/run.sh [minilm|smollm2] [OUT]
set -e
BB=${1:-minilm}; OUT=${2:-/tmp/nli-exp}
common="--backbone $BB --cache-dir $OUT/cache-$BB --max-train 4000 --max-dev 1000 --max-test 0 --quiet --no-st"
for s in 0 1 2; do glotpool embed-train $common --pooler glot --seed $s --out $OUT/$BB-glot-s$s; done
for p in adapool pma mean_linear; do glotpool embed-train $common --pooler $p --seed 0 --out $OUT/$BB-$p-s0; done
models=$(for d in $OUT/$BB-*-s*; do echo --model $d; done)
glotpool evaluate $models --n-retrieval 1000 --n-graded 2000 --n-probe 2000 --cache-dir $OUT/eval-cache \
  --out $OUT/eval-$BB
