"""The model-family seam: what the loop needs to know about one kind of candidate.

A family is one module: the spec's candidate config (its ``kind`` is the family's name), how to fit it, how to
log it with its MLflow flavor, and what the served model needs installed. Everything is served through pyfunc,
so the Bento, the image and the gateway stay generic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from ct_pipeline.domain.common import Strict, TaskType
from ct_pipeline.errors import TrainingError

if TYPE_CHECKING:
    import pandas as pd

    from ct_pipeline.domain.spec import ModelSpec


class CandidateSpec(Strict):
    """One candidate in a spec: a name, a kind (the family) and the family's parameters."""

    name: str = Field(pattern=r"^[a-z0-9_-]+$")
    kind: str  # each family narrows it to its own Literal (the discriminator)
    params: dict[str, Any] = Field(default_factory=dict)


class ModelFamily:
    """Base of the families; subclasses set ``kind``, ``candidate``, ``flavor`` and implement :meth:`fit`."""

    kind: ClassVar[str]
    candidate: ClassVar[type[CandidateSpec]]
    flavor: ClassVar[str] = "sklearn"  # mlflow.<flavor>.log_model
    packages: ClassVar[tuple[str, ...]] = ()  # what the served model imports, beyond mlflow + pandas/numpy

    def fit(self, candidate: Any, train_df: pd.DataFrame, spec: ModelSpec) -> Any:
        raise NotImplementedError

    @staticmethod
    def predict_method(task: TaskType) -> str:
        return "predict_proba" if task == TaskType.binary_classification else "predict"

    def log_options(self, model: Any, spec: ModelSpec) -> dict[str, Any]:
        """Flavor-specific arguments of ``log_model``."""
        return {}


def sklearn_log_options(model: Any, spec: ModelSpec) -> dict[str, Any]:
    """mlflow.sklearn: the pyfunc predict method, and the types skops must trust to load the model back.

    MLflow 3 saves sklearn models with skops, not pickle; we trained the object ourselves, so trusting exactly
    its own types keeps the safe format usable.
    """
    import skops.io

    return {
        "pyfunc_predict_fn": ModelFamily.predict_method(spec.task),
        "skops_trusted_types": skops.io.get_untrusted_types(data=skops.io.dumps(model)),
    }


def import_attr(path: str, what: str) -> Any:
    """'package.module:attr' -> the attribute, or a TrainingError naming what could not be imported."""
    module_name, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise TrainingError(f"{what} {path!r} cannot be imported: {exc}") from None
