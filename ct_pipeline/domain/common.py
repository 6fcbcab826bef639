"""Building blocks shared by the spec and the model families (no I/O)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    # Unknown keys are typos until proven otherwise: fail fast and name them.
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskType(StrEnum):
    binary_classification = "binary_classification"
    regression = "regression"
