#!/usr/bin/env bash
# start the Qwen2.5-Coder-0.5B runs (study, scale-aware scores, healing after the study)
set -euo pipefail
G="bash tools/gpu_node.sh"
M=qwen2.5-coder-0.5b
$G start study 0 -m avsslib reproduce --models $M --scale full --stages study --device cuda --quiet \
  --study-args "--batch-size 32 --sweep-fractions 0.25,0.5"
$G start scale 0 -m avsslib study --model $M --out results/$M/scale_scores --device cuda --dtype float32 \
  --seed 42 --quiet --calib wikitext2 --calib-split validation --n 64 --seq-len 128 --batch-size 32 \
  --calib-seed 0 --tasks sciq_mc,wikitext2_ppl --n-eval 1000 --fraction 0.25 \
  --scores avss,block_influence,angular,random,tail,var_ratio,update_variance,avss_rel_0.001,avss_rel_0.01,avss_rel_0.1,scalefree_avss_0.001,scalefree_avss_0.01,scalefree_avss_0.1,update_avss_0.001,update_avss_0.01,update_avss_0.1 \
  --sweep-fractions 0.25 --sweep-scores block_influence --agreement-calibs wikitext2:validation \
  --agreement-seeds 0 --no-faithful-eval --eps 1e-05 --max-length 2048 --ppl-window 512 --n-boot 1000
$G start-after results/$M/avss/record.json heal 0 -m avsslib heal --model $M --out results/$M/healing \
  --device cuda --dtype float32 --seed 0 --quiet --study results/$M/avss \
  --configs avss-count,block_influence-count,angular-count,random-count,tail-count \
  --tasks sciq_mc,wikitext2_ppl --n-eval 1000 --steps 200 --heal-batch-size 8 --seq-len 256 --lr 0.0002 \
  --rank 8 --alpha 16 --warmup 10 --text wikitext2:validation --batch-size 32 --ppl-window 512 --n-boot 1000
