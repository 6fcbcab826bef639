"""Factories of the promote() tests (tests/unit/test_promote.py, tests/integration/test_promote.py): the spec,
a gate decision and a Bento of fraud-detector as a promotion shows them."""

from __future__ import annotations

from datetime import UTC, datetime

from ct_pipeline.domain.records import BentoRef, GateCheck, GateDecision, ModelRef, WindowSnapshot
from ct_pipeline.domain.spec import parse_spec


def promotion_spec():
    return parse_spec(
        {
            "name": "fraud-detector",
            "data": {
                "source": {"kind": "parquet", "path": "data/fraud"},
                "time_column": "ts",
                "target": "is_fraud",
                "features": ["amount", "hour"],
            },
            "candidates": [{"name": "lgbm", "kind": "lightgbm"}],
            "metric": {"name": "roc_auc"},
            "gitops": {"environment": "staging"},
        }
    )


def make_decision(version: str = "3", champion: str | None = "2", promote_it: bool = True, **extra) -> GateDecision:
    snapshot = WindowSnapshot(
        model="fraud-detector",
        source="parquet:data/fraud",
        start=datetime(2026, 10, 1, tzinfo=UTC),
        end=datetime(2026, 10, 31, tzinfo=UTC),
        rows=48_213,
        content_hash="sha256:" + "ab" * 32,
        path="/tmp/snap.parquet",
        time_column="ts",
        target="is_fraud",
        features=["amount", "hour"],
    )
    fields = dict(
        model="fraud-detector",
        promote=promote_it,
        reason="roc_auc improves by +0.0178 (95% CI +0.0051 … +0.0302), above the 0.0 minimum"
        if promote_it
        else "no significant improvement",
        challenger=ModelRef(version=version, run_id=f"run-{version}", metric=0.8301),
        champion=ModelRef(version=champion, run_id=f"run-{champion}", metric=0.8123) if champion else None,
        metric="roc_auc",
        direction="maximize",
        delta=0.0178,
        ci_low=0.0051,
        ci_high=0.0302,
        checks=[
            GateCheck(name="superiority", passed=True, detail="CI low +0.0051 > 0.0"),
            GateCheck(name="schema", passed=True, detail="same 2 features"),
            GateCheck(name="latency", passed=True, detail="p99 | 4 ms", judged=False),
        ],
        decided_at=datetime(2026, 11, 1, tzinfo=UTC),
        snapshot=snapshot,
    )
    fields.update(extra)
    return GateDecision(**fields)


def make_bento(version: str = "3", image: bool = True) -> BentoRef:
    return BentoRef(
        model="fraud-detector",
        version=version,
        run_id=f"run-{version}",
        bento_tag=f"fraud_detector_service:b{version}",
        bento_model_tag=f"fraud-detector:m{version}",
        data_hash="sha256:" + "ab" * 32,
        image_repository="127.0.0.1:5000/fraud-detector" if image else None,
        image_tag=f"b{version}" if image else None,
        image_digest="sha256:" + "cd" * 32 if image else None,
    )
