#!/usr/bin/env bash
# jobs/bench_scale.py on a GPU machine (device tool), carrying .gpu/whl and .gpu/whl_extra (jobs/gpu_env.sh):
# the 7B-shaped latency table of the bf16, INT4 (tinygemm kernel) and 2:4 (semi-structured kernel) bases, then
# the compressed-tensors INT4 export as transformers loads it (fewer sub-networks: each is written and re-read).
#   SHAPES=llama7b bash jobs/gpu_bench_scale.sh        writes $OUT/bench_scale_formats_gpu.json, ..._int4_hf_gpu.json
set -euo pipefail
. jobs/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpus.txt"
SUBNETS=${SUBNETS:-full,mlp_0.5,depth_-1/4,mlp_0.5+heads_0.5+depth_-1/4}
python3 jobs/bench_scale.py --shapes "${SHAPES:-llama7b}" --formats bf16,int4_tinygemm,sparse24 --subnets "$SUBNETS" \
  --out "$OUT/bench_scale_formats_gpu.json" 2>&1 | grep -v "it/s]" | tee "$OUT/bench_scale_formats_gpu.log"
python3 jobs/bench_scale.py --shapes "${SHAPES:-llama7b}" --formats bf16,int4_hf \
  --subnets "${HF_SUBNETS:-full,mlp_0.5+heads_0.5+depth_-1/4}" \
  --out "$OUT/bench_scale_int4_hf_gpu.json" 2>&1 | grep -v "it/s]" | tee "$OUT/bench_scale_int4_hf_gpu.log"
