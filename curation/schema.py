"""The config models every package's sections build on, one floor below them all: the strict base
(unknown keys fail, naming the key), `Resources`, the one model of a step's Ray resources, at
`<stage>.resources` or, for a stage of several steps, `<stage>.<step>.resources` (`Step`), and the
helpers that accept a renamed key for one release with a warning naming the old and the new key.

Plain pydantic, no project imports: curation/config.py, curation/filters/config.py, captioning,
shards and training configs all import it, and it imports none of them.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

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


class Step(Strict):
    """One step of a stage that has several (filter.decode, filter.model, dedup.hash, caption.frames ...):
    its Ray resources live at `<stage>.<step>.resources`, as a one-step stage's live at `<stage>.resources`."""

    resources: Resources = Resources()  # the step's worker pool and what each worker holds


class ConfigDeprecationWarning(FutureWarning):
    """An old pipelines.yaml key, still accepted for one release (a FutureWarning: shown to users by default)."""


@contextlib.contextmanager
def warnings_at(path: str) -> Iterator[None]:
    """Deprecation warnings raised while validating the file at `path` are shown at that file (as
    "<path>:0: ConfigDeprecationWarning: <key> is deprecated ...", without a line of our source)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConfigDeprecationWarning)
        yield
    for w in caught:
        if issubclass(w.category, ConfigDeprecationWarning):
            warnings.warn_explicit(w.message, w.category, path, 0)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def deprecated(old: str, new: str) -> None:
    """Warn once per key that `old` is read as `new` (full key paths)."""
    warnings.warn(f"{old} is deprecated and will stop working in the next release: write {new} instead",
                  ConfigDeprecationWarning, stacklevel=2)


def move_key(data: Any, section: str, old: str, new: str) -> Any:
    """Before validation: a section's old key `old` moved to the dotted path `new` inside the section (with
    a warning). Both set is an error naming both keys."""
    if not isinstance(data, dict) or old not in data:
        return data
    data = dict(data)
    *path, last = new.split(".")
    node = data
    for p in path:
        child = node.get(p)
        node[p] = dict(child) if isinstance(child, dict) else ({} if child is None else child)
        if not isinstance(node[p], dict):
            raise ValueError(f"{section}.{old} is the old name of {section}.{new}, but {section}.{'.'.join(path)} "
                             f"is not a mapping")
        node = node[p]
    if last in node:
        raise ValueError(f"{section}.{old} (deprecated) and {section}.{new} are the same setting: keep {section}.{new}")
    node[last] = data.pop(old)
    deprecated(f"{section}.{old}", f"{section}.{new}")
    return data


def step_resources(data: Any, section: str, steps: tuple[str, ...]) -> Any:
    """Before validation: resource keys written directly under a step (`filter.model: {num_gpus: 1}`, the old
    form) moved into its `resources` block (with a warning naming both keys)."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for step in steps:
        block = data.get(step)
        if not isinstance(block, dict):
            continue
        old = [k for k in block if k in Resources.model_fields]
        if not old:
            continue
        block = dict(block)
        res = block.get("resources")
        res = dict(res) if isinstance(res, dict) else {}
        for k in old:
            if k in res:
                raise ValueError(f"{section}.{step}.{k} (deprecated) and {section}.{step}.resources.{k} are the same "
                                 f"setting: keep {section}.{step}.resources.{k}")
            res[k] = block.pop(k)
        block["resources"] = res
        data[step] = block
        deprecated(f"{section}.{step}: {{{', '.join(old)}}}", f"{section}.{step}.resources: {{{', '.join(old)}}}")
    return data
