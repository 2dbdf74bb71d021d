"""A real multi-node Ray cluster on this machine, for tests and benchmarks.

`ray.cluster_utils.Cluster`: a head node (the driver's; no CPUs for work, so every task and actor
runs on a worker node) and worker nodes, each its own raylet with its own CPUs, object store and a
custom resource `worker_<n>`, all bound to 127.0.0.1. `kill()` removes a worker node the hard way
(SIGKILL of its raylet and workers, as a machine loss); `add_worker()` adds a fresh one (as an
autoscaler replacing it).
"""
from __future__ import annotations

import os
import sys
import time

OBJECT_STORE = 200 * 1024 * 1024  # bytes per node: small, the machine is shared


_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _loopback(on: bool, saved: tuple = (None, True)) -> tuple:
    """Make Ray resolve "this node" to 127.0.0.1 (not the first routable address) in this process
    and its children: ray.init(address=127.0.0.1:port) otherwise rewrites the address to eth0's.
    Returns what it replaced; `_loopback(False, that)` restores it."""
    import ray._private.ray_constants as rc

    old = (os.environ.get(_ENV), rc.ENABLE_RAY_CLUSTER)
    env, flag = ("0", False) if on else saved
    if env is None:
        os.environ.pop(_ENV, None)
    else:
        os.environ[_ENV] = env  # read by the Ray processes started from here
    rc.ENABLE_RAY_CLUSTER = flag  # Ray's own switch for "use the loopback address as the node IP"
    return old


def _forget_address(address: str) -> None:
    """Remove the "latest cluster" file Cluster writes for this head (/tmp/ray/ray_current_cluster):
    while it exists, every plain ray.init() on the machine (other test runs) joins this cluster."""
    from ray._common.utils import get_ray_address_file

    path = get_ray_address_file(None)
    try:
        with open(path) as f:
            mine = f.read().strip() == address
        if mine:
            os.remove(path)
    except OSError:
        pass


def _retrying(start, attempts: int = 5, backoff_s: float = 5.0):
    """Start a node; on a startup timeout kill the processes that attempt left and try again after a
    growing pause (backoff_s, then doubled each time), saying so on stderr.

    Ray waits a fixed 30 s for a new raylet to register, which a machine shared by many test runs
    can exceed; the processes of the failed attempt are this process's new children. After the last
    attempt the error says how many were made and the load average."""
    import psutil

    me = psutil.Process()
    for i in range(attempts):
        before = {p.pid for p in me.children(recursive=True)}
        try:
            return start()
        except Exception as e:
            if "timed out during startup" not in str(e):
                raise
            for p in me.children(recursive=True):
                if p.pid not in before:
                    try:
                        p.kill()
                    except psutil.NoSuchProcess:
                        pass
            load = os.getloadavg()[0]
            if i == attempts - 1:
                raise RuntimeError(f"local Ray cluster: a node did not register within Ray's 30 s in {attempts} "
                                   f"attempts (load average {load:.1f}); the machine is too busy, try again later") from e
            pause = backoff_s * 2 ** i
            print(f"local Ray cluster: node start timed out at load average {load:.1f} (attempt {i + 1}/{attempts}); "
                  f"retrying in {pause:.0f} s", file=sys.stderr, flush=True)
            time.sleep(pause)


class LocalCluster:
    """Head + `workers` worker nodes of `cpus` CPUs each; `connect()` makes this process the driver."""

    def __init__(self, workers: int = 2, cpus: float = 1) -> None:
        from ray.cluster_utils import Cluster

        self._saved = _loopback(True)
        self.cpus = cpus
        self.c = Cluster()
        _retrying(lambda: self.c.add_node(num_cpus=0, node_ip_address="127.0.0.1", include_dashboard=False,
                                          object_store_memory=OBJECT_STORE))
        _forget_address(self.c.address)
        self.workers: list = []  # worker nodes, oldest first
        for _ in range(workers):
            self.add_worker()

    @property
    def address(self) -> str:
        return self.c.address

    def add_worker(self) -> None:
        n = len(self.workers) + 1
        self.workers.append(_retrying(lambda: self.c.add_node(
            num_cpus=self.cpus, node_ip_address="127.0.0.1", object_store_memory=OBJECT_STORE,
            resources={f"worker_{n}": 1})))

    def kill(self) -> None:
        """Kill the oldest live worker node (raylet, object store and its workers) without warning."""
        node = next(n for n in self.workers if n in self.c.worker_nodes)
        self.c.remove_node(node, allow_graceful=False)

    def connect(self, pythonpath: str) -> None:
        import ray

        ray.init(address=self.address, runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, log_to_driver=False)

    def shutdown(self) -> None:
        import ray

        ray.shutdown()
        self.c.shutdown()
        _loopback(False, self._saved)
