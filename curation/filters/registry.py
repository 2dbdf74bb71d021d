"""Scorer registry: short names for the built-in scorers.

A new filter is one class (a `curation.filters.base.Scorer` subclass with its own `Config`) and one
entry in pipelines.yaml: `filter.scorers.<name>: {type: package.module:Class, ...}`. Adding the class
here as well gives it a short `type` name.
"""
from __future__ import annotations

import importlib

REGISTRY: dict[str, str] = {
    "motion": "curation.filters.motion:MotionScorer",
    "aesthetic": "curation.filters.aesthetic:AestheticScorer",
    "clip_zero_shot": "curation.filters.clip_classifier:ZeroShotScorer",
    "linear_probe": "curation.filters.clip_classifier:LinearProbeScorer",
    "text": "curation.filters.text:TextScorer",
    "nsfw": "curation.filters.nsfw:NsfwScorer",
}


# The base class every scorer derives from, named rather than imported: base.py imports this module.
SCORER = "curation.filters.base.Scorer"


def _name(c: type) -> str:
    return f"{c.__module__}.{c.__qualname__}"


def scorer_class(type_name: str) -> type:
    """The Scorer class of a registry name or `package.module:Class` path (modules import no torch at top)."""
    path = REGISTRY.get(type_name, type_name)
    if ":" not in path:
        raise ValueError(f"unknown scorer type {type_name!r}; built-ins: {', '.join(REGISTRY)}, "
                         "or give an import path package.module:Class")
    mod, attr = path.split(":", 1)
    klass = getattr(importlib.import_module(mod), attr)
    if not (isinstance(klass, type) and any(_name(c) == SCORER for c in klass.__mro__)):
        raise ValueError(f"{path} is not a curation.filters.base.Scorer subclass")
    return klass
