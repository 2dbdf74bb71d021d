"""The Ray cluster a run works on: starting or joining it, where its files may go, how many workers a
step gets."""
from __future__ import annotations

import logging
import os
import tempfile

from curation.console import Console
from curation.stage import StageResources
from curation.storage import Storage

log = logging.getLogger(__name__)


def init_ray(address: str | None = None, num_cpus: int | None = None, console: Console | None = None) -> None:
    """Connect to the cluster (`ray job submit` sets RAY_ADDRESS) or start an embedded local Ray."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # Workers must import this project: ship the checkout when we start Ray ourselves; under
    # `ray job submit --working-dir .` the job's working dir is already on every worker's path.
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {"env_vars": {"PYTHONPATH": here + os.pathsep + os.environ.get("PYTHONPATH", "")}}
    if address:
        ray.init(address=address, log_to_driver=True, runtime_env=None if os.environ.get("RAY_JOB_ID") else env)
    else:
        # A session folder of its own: concurrent embedded Rays sharing /tmp/ray can pick up each other's
        # session files (a driver then waits on another node's GCS).
        for attempt in range(3):  # Ray gives its node 30 s to start: a busy machine can need a second try
            try:
                ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True, runtime_env=env,
                         _node_ip_address="127.0.0.1", _temp_dir=tempfile.mkdtemp(prefix="ray-"))
                break
            except Exception as e:
                if "timed out during startup" not in str(e) or attempt == 2:
                    raise
                log.warning("the local Ray node did not start in time (%s); starting it again", e)
                ray.shutdown()
    if console is not None and not console.verbose:
        console.route_worker_output()  # ray.init installs its printer of worker output: send it to the log file
        console.to_log_file()


def check_root_placement(storage: Storage, shared: bool = False) -> None:
    """Refuse a local-folder root when the Ray cluster has several nodes (unless declared shared).

    Workers write clip and shard files themselves: with a per-node folder each node would keep its
    own piece of the dataset and the tables would point at files other nodes cannot read.
    """
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if storage.is_local and len(nodes) > 1 and not shared:
        raise ValueError(f"root {storage.root!r} is a local folder but the Ray cluster has {len(nodes)} nodes: "
                         "each node would write its files to its own disk. Use an object-store root "
                         "(s3://..., gs://...), or set ray.shared_root: true if the folder is a shared "
                         "filesystem mounted at the same path on every node")


def pool_size(r: StageResources, stateful: bool) -> int | tuple[int, int] | None:
    """Ray Data concurrency of a step: a fixed pool (`workers`), or an autoscaling pool between
    `min_workers` and `max_workers` that Ray Data grows while the step's input queue builds up (tasks:
    at most `max_workers` at once). An unset max is what the cluster's CPUs (GPUs) can hold."""
    lo, hi = getattr(r, "min_workers", None), getattr(r, "max_workers", None)
    if lo is None and hi is None:
        return (r.workers or 1) if stateful else r.workers
    lo = lo or 1
    hi = hi or max(lo, _fits(r))
    return (lo, hi) if stateful else hi


def _fits(r: StageResources) -> int:
    """Workers of `r`'s size the cluster holds (its scarcest resource decides)."""
    import ray

    res = ray.cluster_resources()
    n = int(res.get("CPU", 0) // r.num_cpus) if r.num_cpus else 1 << 16
    if r.num_gpus:
        n = min(n, int(res.get("GPU", 0) // r.num_gpus))
    return max(n, 1)
