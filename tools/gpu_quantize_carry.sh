#!/usr/bin/env bash
# Download the packages the quantize phase of tools/gpu_quantize_check.py needs on the GPU image
# (CPython 3.12, x86-64, torch 2.11 and transformers 5.17 already there) into .qwhl (about 4 MiB).
# Run from the repository root after making .qwhl ignored:  echo /.qwhl/ >> .git/info/exclude
# On the device, before the quantize phase:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/qsite .qwhl/*.whl
# auto-round (an llm-compressor requirement) is left out: nothing on the GPTQ path imports it.
set -euo pipefail
OUT=${1:-.qwhl}
[ -e .git ] || { echo "run from the repository root" >&2; exit 1; }
mkdir -p "$OUT"
git check-ignore -q "$OUT" || { echo "$OUT is not ignored by git: echo /$OUT/ >> .git/info/exclude" >&2; exit 1; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --abi cp312 --abi abi3 --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d "$OUT" \
  llmcompressor==0.14.0.1 compressed-tensors==0.19.0 loguru==0.7.3 datasets==5.2.0 dill==0.4.1 \
  multiprocess==0.70.19 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
ls -1 "$OUT"
du -sh "$OUT"
