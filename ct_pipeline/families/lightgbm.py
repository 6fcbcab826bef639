"""LightGBM through its scikit-learn API (LGBMClassifier / LGBMRegressor), logged with mlflow.sklearn."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from ct_pipeline.domain.common import TaskType
from ct_pipeline.families.base import CandidateSpec, ModelFamily, sklearn_log_options


class LightGBMCandidate(CandidateSpec):
    kind: Literal["lightgbm"]


class LightGBMFamily(ModelFamily):
    kind: ClassVar[str] = "lightgbm"
    candidate: ClassVar[type[CandidateSpec]] = LightGBMCandidate
    packages: ClassVar[tuple[str, ...]] = ("scikit-learn", "skops", "scipy", "lightgbm")

    def fit(self, candidate: Any, train_df, spec) -> Any:
        import lightgbm as lgb

        cls = lgb.LGBMClassifier if spec.task == TaskType.binary_classification else lgb.LGBMRegressor
        estimator = cls(**{"random_state": 0, "verbose": -1, **candidate.params})
        return estimator.fit(train_df[spec.data.features], train_df[spec.data.target])

    log_options = staticmethod(sklearn_log_options)
