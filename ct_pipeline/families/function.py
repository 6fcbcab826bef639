"""A user's training function ``module:train(train_df, params) -> model`` (the Railyard contract).

The returned model must have ``predict_proba`` (classification) or ``predict``; it is logged with mlflow.sklearn.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from ct_pipeline.errors import TrainingError
from ct_pipeline.families.base import CandidateSpec, ModelFamily, import_attr, sklearn_log_options


class FunctionCandidate(CandidateSpec):
    kind: Literal["function"]
    function: str = Field(pattern=r"^[\w.]+:\w+$", description="module:function, train(train_df, params) -> model")


class FunctionFamily(ModelFamily):
    kind: ClassVar[str] = "function"
    candidate: ClassVar[type[CandidateSpec]] = FunctionCandidate
    packages: ClassVar[tuple[str, ...]] = ("scikit-learn", "skops", "scipy")

    def fit(self, candidate: Any, train_df, spec) -> Any:
        features, target = spec.data.features, spec.data.target
        train_fn = import_attr(candidate.function, "training function")
        model = train_fn(train_df[[*features, target]].copy(), dict(candidate.params))
        method = self.predict_method(spec.task)
        if not hasattr(model, method):
            raise TrainingError(
                f"candidate {candidate.name!r}: {candidate.function} returned a model without {method}()"
            )
        return model

    log_options = staticmethod(sklearn_log_options)
