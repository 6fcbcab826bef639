"""The gate on synthetic predictions with known truth, and its edge cases through a fake registry."""

import time
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from ct_pipeline.gate import decide, evaluate, paired_bootstrap
from ct_pipeline.metrics import metric
from ct_pipeline.records import CandidateResult, ModelRef, TrainResult, WindowSnapshot
from ct_pipeline.registry import CHALLENGER, CHAMPION, RegistryError
from ct_pipeline.spec import GateSpec, parse_spec


def synthetic(n: int, seed: int, strength_a: float, strength_b: float):
    """Labels and two models' scores; a model's strength is how much signal its score carries."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=n)
    y = (latent + rng.normal(scale=1.0, size=n) > 1.2).astype(float)
    a = strength_a * latent + rng.normal(size=n)
    b = strength_b * latent + rng.normal(size=n)
    return y, a, b


def bootstrap(y, chal, champ, seed=0):
    return paired_bootstrap("roc_auc", y, chal, champ, resamples=500, confidence=0.95, seed=seed, maximize=True)


def test_clearly_better_promotes():
    y, better, worse = synthetic(20_000, 1, 1.5, 1.0)
    point, low, high = bootstrap(y, better, worse)
    assert low > 0 and low <= point <= high
    promote, reason, _ = decide(GateSpec(), point, low, high, "roc_auc")
    assert promote and "passes" in reason


def test_equal_models_not_promoted():
    y, a, _ = synthetic(20_000, 2, 1.0, 1.0)
    point, low, high = bootstrap(y, a, a.copy())
    assert point == 0 and low == 0 and high == 0
    promote, reason, _ = decide(GateSpec(), point, low, high, "roc_auc")
    assert not promote and "fails" in reason


def test_worse_not_promoted_and_reason_has_numbers():
    y, better, worse = synthetic(20_000, 3, 1.5, 1.0)
    point, low, high = bootstrap(y, worse, better)
    assert high < 0
    promote, reason, _ = decide(GateSpec(), point, low, high, "roc_auc")
    assert not promote
    assert f"{point:+.4f}" in reason and "lower bound must exceed +0.0000" in reason


def test_non_inferiority_admits_a_slightly_worse_fresh_model():
    y, a, b = synthetic(50_000, 4, 1.0, 1.0)
    point, low, high = bootstrap(y, a, b)
    gate = GateSpec(mode="non_inferiority", non_inferiority_margin=0.02)
    promote, _, _ = decide(gate, point, low, high, "roc_auc")
    assert promote
    assert not decide(GateSpec(mode="superiority", min_improvement=0.01), point, low, high, "roc_auc")[0]


def test_minimize_metric_sign():
    rng = np.random.default_rng(5)
    y = rng.normal(size=5000)
    good, bad = y + rng.normal(scale=0.5, size=5000), y + rng.normal(scale=1.0, size=5000)
    point, low, _ = paired_bootstrap("rmse", y, good, bad, 300, 0.95, 0, maximize=False)
    assert point > 0 and low > 0  # positive = improvement, even though rmse goes down


def test_bootstrap_is_seeded_and_fast():
    y, a, b = synthetic(100_000, 6, 1.1, 1.0)
    started = time.perf_counter()
    first = paired_bootstrap("roc_auc", y, a, b, 1000, 0.95, seed=42, maximize=True)
    elapsed = time.perf_counter() - started
    assert abs(first[0] - (metric("roc_auc", y, a) - metric("roc_auc", y, b))) < 1e-12
    assert elapsed < 60, f"1000 resamples x 100k rows took {elapsed:.1f}s"
    small = (y[:5000], a[:5000], b[:5000])
    assert paired_bootstrap("roc_auc", *small, 200, 0.95, 1, True) == paired_bootstrap(
        "roc_auc", *small, 200, 0.95, 1, True
    )
    assert paired_bootstrap("roc_auc", *small, 200, 0.95, 1, True) != paired_bootstrap(
        "roc_auc", *small, 200, 0.95, 2, True
    )


# --- evaluate() edge cases through a fake registry (fakes only in unit tests) ---------------------------


class FakeModel:
    def __init__(self, scores):
        self.scores = scores

    def predict(self, X):
        return np.column_stack([1 - self.scores, self.scores])


class FakeRegistry:
    def __init__(self, scores: dict[str, np.ndarray], champion: str | None, broken: set[str] = frozenset()):
        self.scores, self.aliases, self.broken, self.tags = scores, {}, broken, {}
        if champion:
            self.aliases[CHAMPION] = champion

    def get_alias(self, model, alias):
        v = self.aliases.get(alias)
        return ModelRef(version=v, run_id=f"run-{v}") if v else None

    def set_alias(self, model, alias, version):
        self.aliases[alias] = version

    def delete_alias(self, model, alias):
        self.aliases.pop(alias, None)

    def set_version_tags(self, model, version, tags):
        self.tags.setdefault(version, {}).update(tags)

    def get_version_tags(self, model, version):
        return self.tags.get(version, {})

    def load_pyfunc(self, model, version):
        if version in self.broken:
            raise RegistryError(f"cannot load {model} v{version} from the registry: artifacts missing")
        return FakeModel(self.scores[version])


@pytest.fixture
def trained(tmp_path):
    n = 8000
    y, strong, weak = synthetic(n, 7, 1.6, 1.0)
    times = pd.date_range("2026-01-01", periods=n, freq="min", tz="UTC")
    frame = pd.DataFrame({"t": times, "f": np.arange(n, dtype=float), "y": y.astype(int)})
    path = tmp_path / "snap.parquet"
    frame.to_parquet(path)
    spec = parse_spec(
        {
            "name": "m",
            "data": {
                "source": {"kind": "csv", "path": "x"},
                "time_column": "t",
                "target": "y",
                "features": ["f"],
                "holdout_fraction": 0.5,
            },
            "candidates": [{"name": "a", "kind": "lightgbm"}],
            "metric": {"name": "roc_auc"},
            "gate": {"bootstrap_resamples": 300},
        }
    )
    snapshot = WindowSnapshot(
        model="m",
        source="x",
        start=times[0],
        end=times[-1],
        rows=n,
        content_hash="sha256:x",
        path=str(path),
        time_column="t",
        target="y",
        features=["f"],
    )
    holdout = slice(n // 2, n)
    scores = {"1": weak[holdout], "2": strong[holdout]}
    result = TrainResult(
        model="m",
        snapshot=snapshot,
        holdout_rows=n // 2,
        train_rows=n // 2,
        candidates=[
            CandidateResult(
                name="a",
                kind="lightgbm",
                run_id="run-2",
                model_uri="models:/m/2",
                version="2",
                metrics={"roc_auc": 0.9},
                primary_metric=0.9,
            )
        ],
    )
    return spec, result, scores


def test_first_run_promotes_with_no_champion(trained):
    spec, result, scores = trained
    registry = FakeRegistry(scores, champion=None)
    decision = evaluate(spec, result, registry)
    assert decision.promote and decision.reason == "no champion yet"
    assert registry.aliases[CHALLENGER] == "2"


def test_better_challenger_promotes_over_champion(trained):
    spec, result, scores = trained
    decision = evaluate(spec, result, FakeRegistry(scores, champion="1"))
    assert decision.promote and decision.ci_low > 0 and decision.champion.version == "1"


def test_worse_challenger_stops_with_reason(trained):
    spec, result, scores = trained
    scores = {"1": scores["2"], "2": scores["1"]}  # swap: challenger is now the weak one
    decision = evaluate(spec, result, FakeRegistry(scores, champion="1"))
    assert not decision.promote
    assert decision.reason.startswith("roc_auc delta -")


def test_force_needs_reason_and_is_recorded(trained):
    spec, result, scores = trained
    scores = {"1": scores["2"], "2": scores["1"]}
    with pytest.raises(ValueError, match="force needs a reason"):
        evaluate(spec, result, FakeRegistry(scores, champion="1"), force=True)
    decision = evaluate(
        spec, result, FakeRegistry(scores, champion="1"), force=True, force_reason="hotfix", forced_by="ana"
    )
    assert decision.promote and decision.forced and decision.forced_by == "ana"
    assert decision.reason.startswith("forced by ana: hotfix (gate said: roc_auc delta -")


def test_champion_that_cannot_load_blocks(trained):
    spec, result, scores = trained
    decision = evaluate(spec, result, FakeRegistry(scores, champion="1", broken={"1"}))
    assert not decision.promote
    assert "champion v1 cannot be loaded" in decision.reason
    assert decision.decided_at <= datetime.now(UTC)
