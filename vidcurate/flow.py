"""pipelines.yaml as a whole: every section, in run order, and the model that validates the file.

A new stage or section is one line in SECTIONS (its key, its pydantic model, and for a stage the
"module:function" that runs it); the stage's code stays in its own package and file.
"""
from __future__ import annotations

from captioning.config import CaptionConfig, EnginesConfig
from curation import config as curation_config
from curation.config import BaseConfig, Section, config_model
from shards.config import ShardConfig
from training.config import TrainingConfig

SECTIONS: tuple[Section, ...] = (
    *curation_config.SECTIONS,  # ray, probe, split, filter, dedup, select (curation/config.py)
    Section("engines", EnginesConfig),  # named language models the caption steps refer to (captioning/config.py)
    Section("caption", CaptionConfig, "captioning.stage:run", "captions/{cfg.caption.run}"),
    Section("shard", ShardConfig, "shards.writer:run", "shards/{cfg.shard.writer.name}"),
    Section("training", TrainingConfig),  # `python -m training`, not a curation stage
)

PipelineConfig = config_model(SECTIONS)


def load_config(path: str, overrides: list[str] | None = None, check_inputs: bool = True) -> BaseConfig:
    """Read, override and validate the whole pipelines.yaml (curation.config.load_config with every section)."""
    return curation_config.load_config(path, overrides, check_inputs, schema=PipelineConfig)
