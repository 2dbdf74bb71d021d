"""The quiet console of a run: C/C++ output of the driver (Ray's core worker) and transformers' "Writing model
shards" bar go to the run's log file, our own progress lines stay on the terminal. Real processes: the file
descriptors are the process's own, as in `python -m vidcurate run` (not a test runner's captured ones)."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_script(tmp_path, body: str) -> tuple[str, str]:
    """Run `body` with a run's Console open on <log> (not verbose); returns (console stderr, log file text)."""
    log = tmp_path / "run.log"
    script = ("import os, sys\nfrom curation import runner\nfrom curation.console import Console\nLOG = sys.argv[1]\n"
              "console = Console()\nconsole.open(LOG, False)\n"
              + body + "\nconsole.close()\nprint('after the run', file=sys.stderr, flush=True)\n")
    r = subprocess.run([sys.executable, "-c", script, str(log)], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": REPO}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stderr, log.read_text()


def test_c_level_output_goes_to_the_log(tmp_path):
    err, log = run_script(tmp_path, "os.write(2, b'Actor with class name: X has constructor arguments in the object "
                                    "store\\n')\nprint('[split] 3/3 done', file=sys.stderr, flush=True)")
    assert "constructor arguments" in log and "constructor arguments" not in err
    assert "[split] 3/3 done" in err and "after the run" in err  # ours stays; the console is back after the run


def test_writing_model_shards_bar_goes_to_the_log(tmp_path):
    pytest.importorskip("transformers")
    body = f"""
from transformers import GPT2Config, GPT2LMHeadModel
m = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=16))
with runner.output_to_log():
    m.save_pretrained({str(tmp_path / 'model')!r})
print('[caption] built', file=sys.stderr, flush=True)
"""
    err, log = run_script(tmp_path, body)
    assert "Writing model shards" in log and "Writing model shards" not in err
    assert "[caption] built" in err


@pytest.mark.heavy
def test_ray_actor_constructor_warning_goes_to_the_log(tmp_path):
    """A real Ray Data actor pool whose constructor argument is large (Ray keeps it in the object store and
    its core worker warns in C++): the warning is in the run log, not on the console."""
    body = """
import numpy as np, ray
runner.init_ray(None, 2, console)
class Big:
    def __init__(self, blob):
        self.n = len(blob)
    def __call__(self, batch):
        return batch
ds = ray.data.range(4, override_num_blocks=2).map_batches(Big, fn_constructor_args=(np.ones(400_000, np.uint8),),
                                                          concurrency=1, batch_size=2)
assert ds.count() == 4
ray.shutdown()
"""
    err, log = run_script(tmp_path, body)
    assert "has constructor arguments in the object store" in log, log[-2000:]
    assert "constructor arguments" not in err, err[-2000:]
