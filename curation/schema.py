"""The config models every package's sections build on, one floor below them all: the strict base
(unknown keys fail, naming the key) and `Resources`, the one model of a step's Ray resources.

Plain pydantic, no project imports: curation/config.py, curation/filters/config.py, captioning,
shards and training configs all import it, and it imports none of them.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    """Base of every config model: an unknown key is an error, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def check_pool(workers: int | None, lo: int | None, hi: int | None) -> None:
    """The pool keys of a resources section agree (raised as a config error naming the section)."""
    if workers is not None and (lo is not None or hi is not None):
        raise ValueError("set either workers (a fixed pool) or min_workers/max_workers (autoscaling), not both")
    if lo is not None and hi is not None and hi < lo:
        raise ValueError(f"max_workers ({hi}) must be >= min_workers ({lo})")


class Resources(Strict):
    """How a stage or one of its steps runs on Ray: its worker pool and what each worker holds. The one
    model of every stage's `resources` (curation, captioning, shards)."""

    num_cpus: float = Field(1.0, gt=0)  # CPUs reserved per worker (task or actor)
    num_gpus: float = Field(0.0, ge=0)  # GPUs per worker; fractional shares allowed (0 = CPU only)
    workers: int | None = Field(None, ge=1)  # concurrency; None = as many as CPUs allow (actors: 1)
    batch_size: int = Field(1, ge=1)  # clips handed to one call
    # Autoscaling pool (instead of a fixed `workers`): Ray Data starts min_workers actors and adds more,
    # up to max_workers (null = what the cluster holds), while the stage's input queue grows; tasks run
    # at most max_workers at once. The run manifest's accounting shows how many each stage used.
    min_workers: int | None = Field(None, ge=1)
    max_workers: int | None = Field(None, ge=1)

    @classmethod
    def from_config(cls, r: "Resources") -> "Resources":
        """A step's own copy of a config section's resources (a step may change its copy: GPU fallback)."""
        return r.model_copy()

    @model_validator(mode="after")
    def _pool(self):
        check_pool(self.workers, self.min_workers, self.max_workers)
        return self
