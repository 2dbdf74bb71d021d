"""Training tasks: what is trained and how its loss is computed (the trainer owns everything else)."""
from __future__ import annotations

import importlib

from training.tasks.base import Task

# --task name -> "module:class"; imported lazily so `--task vae` never loads the text encoder.
TASKS = {"vae": "training.tasks.vae:VAETask", "transformer": "training.tasks.transformer:TransformerTask"}


def task_class(name: str) -> type[Task]:
    """The Task class registered as `name`."""
    target = TASKS.get(name, name if ":" in name else None)  # "module:Class" plugs in a custom Task
    if target is None:
        raise ValueError(f"--task {name!r}: unknown task (choose from {', '.join(TASKS)}, or give module:Class)")
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["TASKS", "Task", "task_class"]
