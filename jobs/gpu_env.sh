# Sourced by the GPU job scripts (device tool): install the wheels the GPU image lacks, carried in .gpu/
# (git-ignored): .gpu/whl/ (datasets, dill, multiprocess, gguf, compressed-tensors, loguru for Python 3.12) and
# .gpu/whl_extra/ (pydantic and its parts, installed only when the image has no pydantic); then the environment.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
python3 -c "import pydantic" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile \
  --no-cache-dir --upgrade --target /tmp/site .gpu/whl_extra/*.whl
export PYTHONPATH=/tmp/site:$PWD LONAS_RAY_CACHE=/tmp/lonas-cache HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0
