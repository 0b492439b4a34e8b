#!/usr/bin/env bash
# Evaluation benchmark, tokenizers' threads off / on / off, one after another on this machine.
set -uo pipefail
NODE=/root/avss-node
rm -rf $NODE/site/transformers $NODE/site/transformers-5.24.0.dist-info
dev=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -o 'H[0-9][0-9]*' | head -1 | tr A-Z a-z)
export PYTHONPATH=$NODE/site:$PWD AVSS_DATA_DIR=$NODE/data AVSS_CACHE_DIR=$NODE/cache AVSS_GGUF_DIR=$NODE/gguf \
  HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -c "import transformers, torch, lm_eval; print('transformers', transformers.__version__, 'torch', torch.__version__, 'lm_eval', lm_eval.__version__)" | tee $OUT/node.txt
i=0
for t in ${RUNS:-off on off}; do
  i=$((i+1)); date -u
  if [ "$t" = off ]; then export TOKENIZERS_PARALLELISM=false; else unset TOKENIZERS_PARALLELISM; fi
  timeout ${BENCH_LIMIT:-180} python3 benchmarks/bench_eval.py --device cuda --batch-size 32 --n 1000 \
    --json $OUT/bench_eval_smollm2-135m_${dev}_full_tokenizer-threads-$t-$i.json > $OUT/bench_threads-$t-$i.log 2>&1
  grep -E "^(truthfulqa|sst2|sciq|triviaqa|study|  )" $OUT/bench_threads-$t-$i.log
done
date -u
