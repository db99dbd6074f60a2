# Sourced by the GPU scripts (jobs/gpu_pipeline.sh, jobs/gpu_robust.sh): what the device image lacks, brought
# over calls made back to back while the machine is warm (it keeps /tmp between them): the wheel kit .whl/
# (`bash jobs/gpu_prepare.sh` here) installed once into /tmp/site; SmolLM2's GGUF in two parts (.gpu/smollm2.part00,
# .part01, one per call), joined and converted once into the model cache. Then the environment the jobs run in.
export PYTHONPATH=/tmp/site:$PWD LONAS_RAY_CACHE=/tmp/lonas-cache HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0 NCCL_NVLS_ENABLE=0 RAY_USAGE_STATS_ENABLED=0
if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1 && [ ! -f /tmp/site/.lonas-kit ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  touch /tmp/site/.lonas-kit
fi
mkdir -p /tmp/gguf-parts "$LONAS_RAY_CACHE"
for part in .gpu/smollm2.part*; do
  [ -f "$part" ] && cp "$part" /tmp/gguf-parts/
done
if [ ! -f "$LONAS_RAY_CACHE/.smollm2-done" ] && [ -f /tmp/gguf-parts/smollm2.part00 ] \
    && [ -f /tmp/gguf-parts/smollm2.part01 ]; then
  cat /tmp/gguf-parts/smollm2.part00 /tmp/gguf-parts/smollm2.part01 > /tmp/smollm2.gguf
  python3 -c "from pathlib import Path; from lonas_ray.model_source import convert_gguf, smollm2_cache_dir
convert_gguf(Path('/tmp/smollm2.gguf'), smollm2_cache_dir())" || exit 1
  touch "$LONAS_RAY_CACHE/.smollm2-done"
fi
