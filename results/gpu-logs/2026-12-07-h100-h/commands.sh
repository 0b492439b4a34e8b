#!/usr/bin/env bash
# Assemble the bundle (wheels, data, SmolLM2 GGUF), set up; then the evaluation benchmark twice
# in one sitting: our greedy steps as a CUDA graph, then on the growing (dynamic) cache.
set -uo pipefail
S=/root/stage B=/root/bundle NODE=/root/avss-node
cat $S/p.* > /root/bundle.tgz && echo "d811eb377e1971175b0a69796426452e14ac04bfae57ca1f8843cacc5774eefd  /root/bundle.tgz" | sha256sum -c - || exit 3
rm -f $S/p.*; mkdir -p $B && tar xzf /root/bundle.tgz -C $B && rm -f /root/bundle.tgz
rm -f $B/whl/transformers-5.24.0-*.whl
cp .device/devcarry/*.whl $B/whl/
tools/gpu_node.sh setup $B/whl $B/data > /dev/null || exit 5
mv $B/gguf/*.gguf $NODE/gguf/
export PYTHONPATH=$NODE/site:$PWD AVSS_DATA_DIR=$NODE/data AVSS_CACHE_DIR=$NODE/cache AVSS_GGUF_DIR=$NODE/gguf \
  HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/node.txt
python3 -c "import transformers, torch, lm_eval; print('transformers', transformers.__version__, 'torch', torch.__version__, 'lm_eval', lm_eval.__version__)" | tee -a $OUT/node.txt
dev=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -o 'H[0-9][0-9]*' | head -1 | tr A-Z a-z)
for way in graph dynamic; do
  date -u
  timeout 170 python3 benchmarks/bench_eval.py --device cuda --batch-size 32 --n 1000 --decode $way \
    --json $OUT/bench_eval_smollm2-135m_${dev}_full_decode-${way}.json > $OUT/bench_eval_${dev}_${way}.log 2>&1
  echo rc=$?; grep -oE "^(truthfulqa|sst2|sciq|triviaqa).*|study task set.*" $OUT/bench_eval_${dev}_${way}.log
done
date -u
