"""Any scikit-learn estimator named by its import path, with the spec's params, logged with mlflow.sklearn."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from ct_pipeline.errors import TrainingError
from ct_pipeline.families.base import CandidateSpec, ModelFamily, import_attr, sklearn_log_options


class SklearnCandidate(CandidateSpec):
    kind: Literal["sklearn"]
    estimator: str = Field(
        pattern=r"^sklearn\.[\w.]+\.\w+$", description="e.g. sklearn.linear_model.LogisticRegression"
    )


class SklearnFamily(ModelFamily):
    kind: ClassVar[str] = "sklearn"
    candidate: ClassVar[type[CandidateSpec]] = SklearnCandidate
    packages: ClassVar[tuple[str, ...]] = ("scikit-learn", "skops", "scipy")

    def fit(self, candidate: Any, train_df, spec) -> Any:
        module, _, name = candidate.estimator.rpartition(".")
        cls = import_attr(f"{module}:{name}", "estimator")
        try:
            estimator = cls(**candidate.params)
        except TypeError as exc:
            raise TrainingError(f"candidate {candidate.name!r}: bad params for {candidate.estimator}: {exc}") from None
        return estimator.fit(train_df[spec.data.features], train_df[spec.data.target])

    log_options = staticmethod(sklearn_log_options)
