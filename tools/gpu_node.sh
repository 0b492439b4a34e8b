#!/usr/bin/env bash
# Run avsslib on a GPU node that has PyTorch but no network (maintainers' tool; see README,
# "Running on an offline GPU node"). Model files and missing wheels reach such a node in pieces;
# this script assembles them and runs the pipeline in the background, detached from the shell.
# Which wheels: `.venv/bin/python tools/node_wheels.py --have NODE_PACKAGES` (then `pip download`).
#
#   tools/gpu_node.sh setup WHEELDIR DATADIR   install the wheels into $NODE/site, copy the data
#   tools/gpu_node.sh bundle STAGE SHA256 [SKIP]  join STAGE/p.* (carried one per call), check the
#                                              sum, unpack whl/ data/ gguf/, setup (wheels named by
#                                              the glob SKIP left out, e.g. 'transformers-*'), move
#                                              the GGUF files to $NODE/gguf
#   tools/gpu_node.sh piece FILE NAME          append FILE (a piece of a GGUF file) to NAME.part
#   tools/gpu_node.sh finish NAME SHA256       check the assembled file, then name it NAME
#   tools/gpu_node.sh start TAG GPU ARGS...    python3 ARGS on GPU (e.g. -m avsslib reproduce ...), detached,
#                                              run from $NODE (relative paths land there)
#   tools/gpu_node.sh start-after FILE TAG GPU ARGS...   the same, once FILE exists
#   tools/gpu_node.sh running                  exit 0 while a started job runs (for wait loops)
#   tools/gpu_node.sh stop TAG                 end job TAG by its recorded process id
#   tools/gpu_node.sh status                   tail the logs, GPU use
#   tools/gpu_node.sh pack OUTDIR              results (no weights) as OUTDIR/results.tgz
set -euo pipefail
# TOKENIZERS_PARALLELISM is left unset: the evaluation backend tokenizes a call's strings in one
# batch, which the tokenizers library spreads over the node's cores (single-threaded it took
# 1.3-1.7 s of SciQ's and TruthfulQA's 3-5 s on an H100 node, 2026-12-07).
NODE=${AVSS_NODE_DIR:-/root/avss-node}
export PYTHONPATH=$NODE/site:$NODE/src AVSS_DATA_DIR=$NODE/data AVSS_CACHE_DIR=$NODE/cache \
  AVSS_GGUF_DIR=$NODE/gguf HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
  PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
mkdir -p "$NODE"/{site,src,data,cache,gguf,logs,results}
cmd=${1:?usage: see the header of $0}; shift
case $cmd in
  setup)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$NODE/site" "$1"/*.whl
    cp -r "$2"/. "$NODE/data/"
    python3 -c "import lm_eval, datasets, gguf, torch; print('lm_eval', lm_eval.__version__, 'torch', torch.__version__, 'gpus', torch.cuda.device_count())" ;;
  bundle)    # bundle STAGE SHA256 [SKIP]: the pieces of one tar.gz of whl/, data/ and gguf/
    compgen -G "$1/p.*" > /dev/null || { echo "no pieces $1/p.*: carry them there first" >&2; exit 3; }
    cat "$1"/p.* > "$NODE/bundle.tgz"
    if ! echo "$2  $NODE/bundle.tgz" | sha256sum -c - ; then
      rm -f "$NODE/bundle.tgz"; echo "pieces in $1 do not add up to $2 (kept there)" >&2; exit 3
    fi
    rm -rf "$NODE/bundle"; mkdir -p "$NODE/bundle"
    tar xzf "$NODE/bundle.tgz" -C "$NODE/bundle" || { echo "unpacking $NODE/bundle.tgz failed (kept)" >&2; exit 3; }
    rm -f "$NODE/bundle.tgz"
    if [ -n "${3:-}" ]; then
      skipped=$(find "$NODE/bundle/whl" -name "$3" -print -delete)
      [ -n "$skipped" ] || { echo "no wheel in the bundle matches $3 (pieces kept)" >&2; exit 3; }
      echo "left out: $skipped"
    fi
    rm -f "$1"/p.*
    bash "$0" setup "$NODE/bundle/whl" "$NODE/bundle/data"
    if compgen -G "$NODE/bundle/gguf/*.gguf" > /dev/null; then mv "$NODE"/bundle/gguf/*.gguf "$NODE/gguf/"; fi
    rm -rf "$NODE/bundle"; ls -l "$NODE/gguf" ;;
  piece)
    cat "$1" >> "$NODE/gguf/$2.part"; rm -f "$1"; ls -l "$NODE/gguf/" ;;
  finish)
    echo "$2  $NODE/gguf/$1.part" | sha256sum -c - && mv "$NODE/gguf/$1.part" "$NODE/gguf/$1" ;;
  start|start-after)   # [start-after FILE] TAG GPU ARGS...: python3 ARGS, detached
    file=; if [ "$cmd" = start-after ]; then file=$(cd "$NODE" && realpath -m "$1"); shift; fi
    tag=$1 gpu=$2; shift 2
    pid=$(cat "$NODE/logs/$tag.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      echo "job $tag (pid $pid) is still running; wait for it or choose another tag" >&2; exit 2
    fi
    rm -rf "$NODE/src/$tag" && mkdir -p "$NODE/src/$tag" && cp -r avsslib benchmarks "$NODE/src/$tag/"
    # from $NODE, so relative --results/--out paths land beside results/ (what `pack` collects)
    (cd "$NODE" || exit; CUDA_VISIBLE_DEVICES=$gpu PYTHONPATH=$NODE/site:$NODE/src/$tag \
      setsid nohup bash -c 'echo $$ > "$1"; while [ -n "$2" ] && [ ! -e "$2" ]; do sleep 5; done; shift 2; exec python3 "$@"' \
      "avss-node-job=$tag" "$NODE/logs/$tag.pid" "$file" "$@" > "$NODE/logs/$tag.log" 2>&1 < /dev/null &)
    echo "started $tag on GPU $gpu${file:+ once $file exists}: python3 $*" ;;
  running)   # exit 0 while any started job still runs (the job writes its own id; python replaces it)
    for f in "$NODE"/logs/*.pid; do [ -e "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && exit 0; done; exit 1 ;;
  stop)      # stop TAG: end that job by its recorded process id (never by a name pattern)
    pid=$(cat "$NODE/logs/$1.pid") && kill -TERM "$pid" && echo "stopped $1 (pid $pid)" ;;
  status)
    for f in "$NODE"/logs/*.log; do [ -e "$f" ] || continue; echo "== $f"; tr '\r' '\n' < "$f" | { grep -v '^\s*$' || true; } | tail -n 4 | cut -c1-220; done
    nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader 2>/dev/null || true ;;
  pack)
    tar czf "$1/results.tgz" -C "$NODE" --exclude='*.safetensors' --exclude='*.pt' results logs
    ls -l "$1" ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
