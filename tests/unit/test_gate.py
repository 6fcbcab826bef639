"""The gate on synthetic predictions with known truth, and its edge cases through a fake registry."""

import time
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit

from ct_pipeline.domain.metrics import metric
from ct_pipeline.domain.records import CandidateResult, ModelRef, RunRequest, TrainResult, WindowSnapshot
from ct_pipeline.domain.spec import GateSpec, parse_spec
from ct_pipeline.domain.tags import CHALLENGER, CHAMPION
from ct_pipeline.errors import RegistryError
from ct_pipeline.steps.gate import evaluate as evaluate_gate
from ct_pipeline.steps.gate.scoring import paired_bootstrap
from ct_pipeline.steps.gate.verdict import decide
from ct_pipeline.testing import InMemoryTracker, make_context


def evaluate(spec, result, registry, force=False, force_reason=None, forced_by=None, plot_sink=None):
    """The gate step's decision through a context on the fakes, with ``registry`` as its tracker."""
    import tempfile
    from pathlib import Path

    request = RunRequest(end=result.snapshot.end, force=force, reason=force_reason, requested_by=forced_by)
    ctx = make_context(spec, Path(tempfile.mkdtemp()), tracker=registry, request=request)
    decision, plots = evaluate_gate(ctx, result)
    if plot_sink is not None:
        plot_sink.update(plots)
    return decision


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


class FakeRegistry(InMemoryTracker):
    """The in-memory tracker with fixed holdout scores per version (and some versions that cannot load)."""

    def __init__(self, scores: dict[str, np.ndarray], champion: str | None, broken: set[str] = frozenset()):
        super().__init__()
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

    def versions_tagged(self, model, key, value):
        return sorted(v for v, tags in self.tags.items() if tags.get(key) == value)

    def set_model_tag(self, model, key, value):
        pass

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
    scores = {"1": expit(weak[holdout]), "2": expit(strong[holdout])}  # probabilities, as predict_proba gives
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


# --- guardrails -------------------------------------------------------------------------------------------


def with_gate(spec, **gate):
    data = spec.model_dump()
    data["gate"].update(gate)
    return parse_spec(data)


def test_slice_regression_hidden_by_a_better_average_is_not_promoted(trained, tmp_path):
    """The challenger wins overall but is much worse on one slice: the gate names that slice."""
    spec, result, scores = trained
    frame = pd.read_parquet(result.snapshot.path)
    n = len(frame)
    rng = np.random.default_rng(11)
    frame["segment"] = rng.choice(["a", "b", "c", "d"], size=n, p=[0.4, 0.3, 0.2, 0.1])
    frame.to_parquet(result.snapshot.path)
    holdout_segment = frame["segment"].to_numpy()[n // 2 :]
    broken = scores["2"].copy()
    in_d = holdout_segment == "d"
    # On segment d the challenger is the champion plus noise: clearly worse there, still better overall.
    broken[in_d] = expit(logit(scores["1"][in_d]) + rng.normal(scale=1.5, size=int(in_d.sum())))
    spec = with_gate(spec, slices={"columns": ["segment"], "max_degradation": 0.02, "min_rows": 50, "min_positives": 5})
    decision = evaluate(spec, result, FakeRegistry({"1": scores["1"], "2": broken}, champion="1"))
    assert decision.delta > 0  # better on average...
    assert not decision.promote  # ...but not promoted
    assert decision.reason.startswith("slices failed: slice segment=d:")
    by_value = {s.value: s for s in decision.slices}
    assert not by_value["d"].passed and by_value["d"].delta < -0.02
    assert all(by_value[v].passed for v in "abc")


def test_small_slices_are_reported_not_judged(trained):
    spec, result, scores = trained
    frame = pd.read_parquet(result.snapshot.path)
    frame["segment"] = np.where(np.arange(len(frame)) % 100 == 0, "tiny", "big")
    frame.to_parquet(result.snapshot.path)
    spec = with_gate(spec, slices={"columns": ["segment"], "min_rows": 200})
    decision = evaluate(spec, result, FakeRegistry(scores, champion="1"))
    tiny = next(s for s in decision.slices if s.value == "tiny")
    assert not tiny.judged and "rows < min_rows 200" in tiny.note
    assert decision.promote


@pytest.mark.parametrize(
    ("bad", "expected"),
    [(np.nan, "NaN/inf predictions"), ("constant", "constant predictions")],
)
def test_broken_predictions_block_even_the_first_promotion(trained, bad, expected):
    spec, result, scores = trained
    broken = scores["2"].copy()
    if bad == "constant":
        broken[:] = 0.3
    else:
        broken[::7] = bad
    decision = evaluate(spec, result, FakeRegistry({"1": scores["1"], "2": broken}, champion=None))
    assert not decision.promote
    assert decision.reason.startswith("predictions failed:") and expected in decision.reason


def test_latency_and_size_limits(trained):
    spec, result, scores = trained

    class SlowModel(FakeModel):
        metadata = type("Meta", (), {"model_size_bytes": 5_000_000})()

        def predict(self, X):
            if len(X) == 1:
                time.sleep(0.003)
            return super().predict(X)

    class SlowRegistry(FakeRegistry):
        def load_pyfunc(self, model, version):
            return SlowModel(self.scores[version])

    spec = with_gate(spec, max_latency_p95_ms=1.0, latency_samples=20, max_model_size_mb=1.0)
    decision = evaluate(spec, result, SlowRegistry(scores, champion="1"))
    assert not decision.promote
    assert decision.latency_p95_ms >= 3.0 and decision.model_size_bytes == 5_000_000
    assert decision.reason.startswith("latency_p95 failed: single-row p95")
    assert "(and 1 more failing check(s))" in decision.reason
    assert any(c.name == "model_size" and not c.passed and "5.00 MB (limit 1 MB)" in c.detail for c in decision.checks)


def test_plots_are_rendered_as_png(trained):
    spec, result, scores = trained
    sink: dict[str, bytes] = {}
    decision = evaluate(spec, result, FakeRegistry(scores, champion="1"), plot_sink=sink)
    assert sorted(sink) == ["curves.png", "delta_by_slice.png"]
    assert all(data.startswith(b"\x89PNG") and len(data) > 5000 for data in sink.values())
    assert decision.plots == ["gate/plots/curves.png", "gate/plots/delta_by_slice.png"]


def test_a_rolled_back_model_needs_force_to_come_back(trained):
    spec, result, scores = trained
    registry = FakeRegistry(scores, champion="1")
    registry.tags = {
        "2": {"ct.fingerprint": "abc"},
        "9": {"ct.fingerprint": "abc", "ct.rolled_back": "true", "ct.rolled_back.commit": "deadbeef00"},
    }
    decision = evaluate(spec, result, registry)
    assert not decision.promote
    assert decision.reason.startswith("rolled_back failed: v2 is the same model (data and candidate) as v9")
    forced = evaluate(spec, result, registry, force=True, force_reason="fixed the upstream bug", forced_by="ana")
    assert forced.promote and forced.forced
