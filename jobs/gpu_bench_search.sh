#!/usr/bin/env bash
# The GPU run of bench_search (device tool): install the wheels .whl/ brings (../shared/tools/gpu-kit.sh plus
# optuna and its dependencies), then latency runtimes and evaluation throughput with 1, 2 (and 4 sharing) GPUs.
#   run: bash jobs/gpu_bench_search.sh    (writes $OUT/bench_search_gpu.json and the log)
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD TORCH_CUDA_ARCH_LIST=9.0 NCCL_NVLS_ENABLE=0 RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpus.txt"
python3 jobs/bench_search.py --config jobs/configs/bench_search_gpu.yaml --parts "${PARTS:-runtimes,scaling}" \
  --workers "${WORKERS:-1,2,4}" --skip-runtimes "${SKIP_RUNTIMES:-compiled}" --scaling-evals "${EVALS:-24}" --work /tmp/bench \
  --out "$OUT/bench_search_gpu.json" > "$OUT/bench_search_gpu.log" 2>&1
rc=$?
grep -v "│\|╭\|╰\|├" "$OUT/bench_search_gpu.log" | tail -60
exit $rc
