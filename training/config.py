"""Section of pipelines.yaml (placeholder: its owner replaces this with the typed model)."""
from pydantic import BaseModel, ConfigDict


class TrainingConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
