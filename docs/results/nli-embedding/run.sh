#!/bin/bash
# The NLI-recipe experiment behind docs/results/nli-embedding/README.md (bounded subsets for a 2-core CPU).
# Usage: GLOTPOOL_DATA=data bash docs/results/nli-embedding/run.sh BACKBONE [OUT] [extra embed-train flags...]
# Every pooler of $POOLERS: lr picked on dev MRR@10 with seed 0 (--grid), seeds 1 and 2 trained at the chosen lr;
# then one zero-shot evaluation of all of them next to the untrained baselines (3 seeds -> mean ± std + paired tests).
set -e
BB=${1:-minilm}; OUT=${2:-/tmp/nli-exp}; shift $(( $# < 2 ? $# : 2 ))
POOLERS=${POOLERS:-"glot mean_linear adapool pma"}
common="--backbone $BB --cache-dir $OUT/cache-$BB --max-train 4000 --max-dev 1000 --max-test 0 --quiet --no-st $*"
for p in $POOLERS; do
  /usr/bin/time -f "%e s $BB $p seed 0 (grid)" \
    glotpool embed-train $common --pooler $p --seed 0 --grid lr=${GRID:-3e-5,1e-4,3e-4,1e-3,3e-3} --out $OUT/$BB-$p-s0
  lr=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['lr'])" $OUT/$BB-$p-s0/recipe.json)
  for s in 1 2; do
    /usr/bin/time -f "%e s $BB $p seed $s" glotpool embed-train $common --pooler $p --seed $s --lr $lr --out $OUT/$BB-$p-s$s
  done
done
models=$(for p in $POOLERS; do for s in 0 1 2; do echo --model $OUT/$BB-$p-s$s; done; done)
/usr/bin/time -f "%e s evaluate" glotpool evaluate $models --n-retrieval 1000 --n-graded 2000 --n-probe 2000 \
  --cache-dir $OUT/eval-cache --out $OUT/eval-$BB
