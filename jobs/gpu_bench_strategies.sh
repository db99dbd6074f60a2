#!/usr/bin/env bash
# GPU run of bench_search's strategies part on the real SmolLM2 weights. The GGUF (98 MB) is larger than one
# device run may carry, so it travels in two halves (.gguf1/, .gguf2/, made with `split`) over consecutive runs
# of a warm machine, with .whl/ (gpu-kit.sh + optuna + gguf) in the first:
#   STEP=install bash jobs/gpu_bench_strategies.sh   (carry .whl)
#   STEP=part1   bash jobs/gpu_bench_strategies.sh   (carry .gguf1: copied to /tmp, which a warm machine keeps)
#   STEP=bench   bash jobs/gpu_bench_strategies.sh   (carry .gguf2)
set -uo pipefail
if [ "${STEP:-bench}" = install ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  exit 0
fi
if [ "${STEP:-bench}" = part1 ]; then
  mkdir -p /tmp/gguf && cp .gguf1/gguf.part00 /tmp/gguf/ && ls -la /tmp/gguf; exit $?
fi
export PYTHONPATH=/tmp/site:$PWD TORCH_CUDA_ARCH_LIST=9.0 NCCL_NVLS_ENABLE=0 RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1
mkdir -p /tmp/gguf && cat /tmp/gguf/gguf.part00 .gguf2/gguf.part01 > /tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf || exit 1
python3 -c "
from pathlib import Path
from lonas_ray.model_source import convert_gguf
convert_gguf(Path('/tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf'), Path('/tmp/smollm2'))" > "$OUT/convert.log" 2>&1 || { tail -20 "$OUT/convert.log"; exit 1; }
python3 jobs/bench_search.py --config jobs/configs/bench_search_gpu_smollm2.yaml --parts strategies \
  --budget "${BUDGET:-24}" --population "${POP:-6}" --seeds "${SEEDS:-0,1,2}" --work /tmp/bench \
  --out "$OUT/bench_search_strategies_gpu.json" > "$OUT/bench_strategies.log" 2>&1
rc=$?
grep -v "│\|╭\|╰\|├" "$OUT/bench_strategies.log" | tail -30
exit $rc
