"""promote(): the body of a promotion, rendered without git (the git side: tests/integration/test_promote.py)."""

from __future__ import annotations

import pytest

from ct_pipeline.domain.promotion_body import render_body
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
