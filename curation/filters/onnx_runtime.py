"""What the ONNX-model scorers (text, nsfw) share: the package check and the execution providers.

The models ship inside installed wheels (rapidocr-onnxruntime, nudenet), so nothing is downloaded.
onnxruntime runs them on CUDA when the scorer runs in the model step, the onnxruntime build has the
CUDA provider (onnxruntime-gpu) and this worker was given a GPU; on the CPU otherwise.
"""
from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # an optional dependency: imported where a session is made
    import onnxruntime


def require(scorer: str, type_name: str, module: str, package: str) -> None:
    """Config-time check: `module` importable, else an error naming the scorer and what to install."""
    if importlib.util.find_spec(module) is None:
        raise ValueError(f"scorers.{scorer}: type {type_name} needs the package {package} "
                         f"(pip install {package}), which is not installed")


def providers(step: str) -> list[str]:
    """CUDA first when this worker may use a GPU in the model step, else the CPU provider only."""
    import onnxruntime as ort

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")  # Ray sets "" for an actor without a GPU
    if (step == "model" and "CUDAExecutionProvider" in ort.get_available_providers()
            and visible != ""):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session(path: str, step: str, threads: int) -> onnxruntime.InferenceSession:
    """An onnxruntime session on `providers(step)` with `threads` intra-op threads (0 = onnxruntime's choice)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, sess_options=opts, providers=providers(step))
