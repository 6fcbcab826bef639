"""The whole step table through run_pipeline on the in-memory fakes of ct_pipeline.testing: the steps receive
their ports through the context, so nothing here touches git, MLflow, BentoML or a container engine.

The candidates are real (LightGBM and a scikit-learn LogisticRegression on the demo transactions).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from ct_pipeline.demo_data import generate_transactions
from ct_pipeline.domain.records import RunRequest
from ct_pipeline.domain.spec import load_spec
from ct_pipeline.domain.tags import CHALLENGER, CHAMPION, FINGERPRINT
from ct_pipeline.pipeline import run_pipeline
from ct_pipeline.steps import STEP_NAMES
from ct_pipeline.testing import FakeBentoStore, InMemoryPublisher, InMemoryTracker, make_context

REPO = Path(__file__).resolve().parents[2]
END = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def frame():
    return generate_transactions(date(2026, 1, 20), date(2026, 3, 1), rows_per_day=250, seed=3)


@pytest.fixture
def spec():
    data = load_spec(REPO / "models" / "fraud-detector.yaml").model_dump()
    data["candidates"][0]["params"]["n_estimators"] = 40  # quick, still a real fit
    data["gate"]["bootstrap_resamples"] = 200
    from ct_pipeline.domain.spec import parse_spec

    return parse_spec(data)


def test_first_run_promotes_through_every_step(spec, frame, tmp_path):
    ctx = make_context(spec, tmp_path, frame=frame, request=RunRequest(end=END))
    seen: list[str] = []
    outcome = run_pipeline(ctx, on_step=lambda step, message: seen.append(step))

    assert seen == list(STEP_NAMES)
    assert outcome.status == "promoted" and outcome.reason == "no champion yet"
    tracker = ctx.tracker
    assert isinstance(tracker, InMemoryTracker) and isinstance(ctx.bentos, FakeBentoStore)
    # two candidates -> two registered versions, each with its fingerprint; the best is the challenger
    assert sorted(tracker.versions[spec.name]) == ["1", "2"]
    assert all(FINGERPRINT in v.tags for v in tracker.versions[spec.name].values())
    assert tracker.aliases[(spec.name, CHALLENGER)] == outcome.decision.challenger.version
    assert [b.version for b in ctx.bentos.built] == [outcome.decision.challenger.version]
    # the decision and the gate's plots went to the challenger's run, the plots into the promotion
    run_id = outcome.decision.challenger.run_id
    assert (run_id, "gate/decision.json") in tracker.artifacts
    promotion = outcome.promotion
    assert promotion is not None and promotion.status == "open"
    assert f"promotions/{promotion.id}/curves.png" in promotion.files
    assert ctx.publisher.get_promotion(promotion.id) == promotion


def test_after_the_merge_the_registry_follows_git_and_a_rerun_is_not_promoted(spec, frame, tmp_path):
    publisher, tracker = InMemoryPublisher(), InMemoryTracker()
    request = RunRequest(end=END)
    first = run_pipeline(
        make_context(spec, tmp_path, frame=frame, request=request, publisher=publisher, tracker=tracker)
    )
    assert first.promotion is not None
    publisher.merge_promotion(first.promotion.id)

    again = make_context(spec, tmp_path, frame=frame, request=request, publisher=publisher, tracker=tracker)
    outcome = run_pipeline(again, on_step=lambda step, message: None)
    # sync moved the champion to what the base branch deploys before the gate judged the new candidates
    assert tracker.aliases[(spec.name, CHAMPION)] == first.decision.challenger.version
    assert outcome.status == "not_promoted"
    assert outcome.decision.champion.version == first.decision.challenger.version
    assert outcome.bento is None and outcome.promotion is None  # the halt skipped package and promote


def test_an_empty_window_stops_at_pull_with_the_window_named(spec, tmp_path):
    ctx = make_context(spec, tmp_path, request=RunRequest(end=END))
    from ct_pipeline.errors import DataError

    with pytest.raises(DataError, match=r"empty data window: no rows with event_time in \[2026-01-30"):
        run_pipeline(ctx)
