"""promote() without git: the body of a promotion and the files it commits, on the in-memory publisher (the git
side: tests/integration/test_promote.py)."""

from __future__ import annotations

import pytest

from ct_pipeline.domain.manifest import render_initial_values, render_monitoring_values
from ct_pipeline.domain.promotion_body import render_body
from ct_pipeline.errors import PromotionError
from ct_pipeline.steps.promote import open_promotion
from ct_pipeline.testing import InMemoryPublisher
from tests.support.promotions import make_bento, make_decision, promotion_spec


@pytest.fixture
def spec():
    return promotion_spec()


def test_render_body_for_a_minimize_metric_without_ci(spec):
    decision = make_decision(
        "3", direction="minimize", ci_low=None, ci_high=None, delta=None, checks=[], reason="forced through"
    )
    body = render_body(spec, decision, make_bento("3"))
    assert "↓ lower is better" in body and "| 0.8123 | 0.8301 | — |" in body
    assert "Gate checks" not in body and "CI" not in body.split("**Lineage**")[0]


class RecordingPublisher(InMemoryPublisher):
    """The in-memory publisher, keeping the files of every open_promotion call."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.opened: list[dict[str, bytes]] = []

    def open_promotion(self, record, files):
        self.opened.append(dict(files))
        return super().open_promotion(record, files)


def test_every_promotion_carries_the_monitoring_values_rendered_from_the_spec(spec):
    publisher = RecordingPublisher({spec.manifest_path: render_initial_values(spec)})
    record = open_promotion(spec, make_decision("3", champion=None), make_bento("3"), publisher)
    monitoring = "apps/staging/fraud-detector/monitoring.yaml"
    assert monitoring in record.files
    (files,) = publisher.opened
    assert files[monitoring] == render_monitoring_values(spec).encode()
    assert set(files) == set(record.files)  # what the record lists is what the commit holds
    with pytest.raises(PromotionError, match="must not replace"):
        open_promotion(spec, make_decision("3"), make_bento("3"), publisher, extra_files={monitoring: b"x"})

    publisher.merge_promotion(record.id)  # the spec's monitors change: the next promotion carries the new rules
    data = spec.model_dump(by_alias=True)
    data["monitoring"]["monitors"] = [{"name": "volume", "kind": "volume", "min_per_hour": 5}]
    changed = type(spec).model_validate(data)
    next_record = open_promotion(changed, make_decision("4", champion="3"), make_bento("4"), publisher)
    text = publisher.read_file(monitoring, ref=next_record.branch)
    assert text == render_monitoring_values(changed) != render_monitoring_values(spec)
    assert "CtVolume" in text and "CtFeatureDrift" not in text
