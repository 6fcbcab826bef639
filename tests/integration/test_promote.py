"""promote(): a gate-approved Bento becomes a promotion branch with a readable record.

(The body rendered without git: tests/unit/test_promote.py.)"""

from __future__ import annotations

import json
import subprocess

import pytest

from ct_pipeline.adapters.git_local import LocalGitPublisher, init_local_remote
from ct_pipeline.adapters.publishers import deployed_model, publisher_for
from ct_pipeline.domain.manifest import render_monitoring_values
from ct_pipeline.domain.promotion import body_path, record_path
from ct_pipeline.errors import AlreadyDeployedError, PromotionError, PromotionRefusedError
from ct_pipeline.steps.promote import open_promotion
from tests.support.promotions import make_bento, make_decision, promotion_spec


def promote(spec, decision, bento, settings, publisher=None, extra_files=None):
    """The promote step's core with the publisher the settings name (or the given one)."""
    return open_promotion(spec, decision, bento, publisher or publisher_for(settings, spec), extra_files=extra_files)


pytestmark = pytest.mark.integration  # real git


@pytest.fixture
def spec():
    return promotion_spec()


@pytest.fixture
def publisher(settings, spec) -> LocalGitPublisher:
    init_local_remote(settings, [spec])
    return LocalGitPublisher.from_settings(settings, spec)


def show(settings, rev_path: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", settings.gitops_remote_url, "show", rev_path], capture_output=True, text=True, check=True
    ).stdout


def changed_files(settings, commit: str) -> list[str]:
    return subprocess.run(
        ["git", "--git-dir", settings.gitops_remote_url, "diff-tree", "--no-commit-id", "--name-only", "-r", commit],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()


def test_promote_opens_a_branch_with_manifest_record_and_body(settings, spec, publisher):
    decision, bento = make_decision("3", champion=None), make_bento("3")
    record = promote(spec, decision, bento, settings)  # default publisher from settings

    assert record.id == "fraud-detector/v3" and record.branch == "promote/fraud-detector/v3"
    assert record.title == "Promote fraud-detector v3 to staging"
    assert record.status == "open" and record.environment == "staging" and record.base_branch == "main"
    assert record.manifest_path == "apps/staging/fraud-detector/values.yaml"
    monitoring = "apps/staging/fraud-detector/monitoring.yaml"
    assert record.files == sorted([record.manifest_path, monitoring, record_path(record.id), body_path(record.id)])
    assert show(settings, f"{record.branch}:{monitoring}") == render_monitoring_values(spec)

    values = show(settings, f"{record.branch}:{record.manifest_path}")
    assert 'version: "3"' in values and "fraud_detector_service:b3" in values and "sha256:" + "cd" * 32 in values
    doc = json.loads(show(settings, f"{record.branch}:{record_path(record.id)}"))
    assert doc["decision"]["challenger"]["version"] == "3"
    assert doc["bento"]["bento_tag"] == "fraud_detector_service:b3"
    assert doc["deployed_before"] is None
    assert show(settings, f"{record.branch}:{body_path(record.id)}") == record.body

    body = record.body
    assert body.startswith("**Promote `fraud-detector` v3 to staging.** roc_auc improves by +0.0178")
    assert "| `roc_auc` (↑ higher is better) | — | 0.8301 | +0.0178 (95% CI +0.0051 … +0.0302) |" in body
    assert "| superiority | ✅ pass | CI low +0.0051 > 0.0 |" in body
    assert "| latency | ➖ info | p99 \\| 4 ms |" in body
    assert "2026-10-01 00:00+00:00 → 2026-10-31 00:00+00:00, 48,213 rows" in body
    assert "content hash `sha256:" + "ab" * 32 + "`" in body
    assert "run `run-3`" in body and "`fraud_detector_service:b3`" in body
    assert "- Image: `127.0.0.1:5000/fraud-detector:b3@sha256:" in body
    assert "Deployed in staging now: nothing (main @ `" in body
    assert "`model.version` '' → '3'" in body
    assert len(body.splitlines()) < 40  # readable in a minute


def test_promote_update_merge_and_next_promotion(settings, spec, publisher):
    promote(spec, make_decision("3", champion=None), make_bento("3"), settings, publisher)
    again = promote(spec, make_decision("3", champion=None), make_bento("3"), settings, publisher)
    assert [p.id for p in publisher.list_promotions()] == ["fraud-detector/v3"]  # same branch, updated
    assert again.commit == publisher.head(again.branch)

    publisher.merge_promotion("fraud-detector/v3")
    assert deployed_model(publisher, spec).version == "3"
    with pytest.raises(AlreadyDeployedError, match="already deployed"):
        promote(spec, make_decision("3", champion=None), make_bento("3"), settings, publisher)

    record = promote(spec, make_decision("4", champion="3"), make_bento("4", image=False), settings, publisher)
    assert "Deployed in staging now: v3 (main @" in record.body
    assert "note:" not in record.body  # the gate's champion is what is deployed
    assert "- Image:" not in record.body
    doc = json.loads(publisher.read_file(record_path(record.id), ref=record.branch))
    assert doc["deployed_before"]["version"] == "3"
    publisher.merge_promotion(record.id)
    deployed = deployed_model(publisher, spec)
    assert deployed.version == "4"
    assert deployed.image_tag == "b3"  # no image in this Bento: image.* left alone

    publisher.revert_last_promotion("fraud-detector", "staging")
    assert deployed_model(publisher, spec).version == "3"


def test_a_change_of_monitors_travels_with_the_next_promotion(settings, spec, publisher):
    """monitoring.yaml is re-rendered from the spec in every promotion: unchanged it is not in the commit's diff;
    after the spec's monitors change, the next promotion carries the new alert rules, and merging deploys them."""
    monitoring = "apps/staging/fraud-detector/monitoring.yaml"
    seeded = show(settings, f"main:{monitoring}")
    assert seeded == render_monitoring_values(spec)
    first = promote(spec, make_decision("3", champion=None), make_bento("3"), settings, publisher)
    changed = changed_files(settings, first.commit)
    assert monitoring not in changed and spec.manifest_path in changed  # identical: untouched
    publisher.merge_promotion(first.id)

    data = spec.model_dump(by_alias=True)
    data["monitoring"]["monitors"].append({"name": "stale", "kind": "stale_model", "max_age": "30d"})
    watched = type(spec).model_validate(data)
    assert render_monitoring_values(watched) != seeded and "CtModelStale" in render_monitoring_values(watched)
    second = promote(watched, make_decision("4", champion="3"), make_bento("4"), settings, publisher)
    assert monitoring in changed_files(settings, second.commit)
    assert show(settings, f"{second.branch}:{monitoring}") == render_monitoring_values(watched)
    publisher.merge_promotion(second.id)
    assert show(settings, f"main:{monitoring}") == render_monitoring_values(watched)
    publisher.revert_last_promotion("fraud-detector", "staging")  # a rollback takes the monitors back too
    assert show(settings, f"main:{monitoring}") == seeded


def test_promote_notes_when_the_gate_champion_is_not_what_is_deployed(settings, spec, publisher):
    record = promote(spec, make_decision("3", champion="2"), make_bento("3"), settings, publisher)
    assert "note: the gate compared against v2, which is not what is deployed" in record.body


def test_promote_refuses_when_the_gate_says_no(settings, spec, publisher):
    with pytest.raises(PromotionRefusedError, match="not to promote fraud-detector v3: no significant"):
        promote(spec, make_decision("3", promote_it=False), make_bento("3"), settings, publisher)
    assert publisher.list_promotions() == []


def test_promote_refuses_a_bento_that_is_not_the_approved_model(settings, spec, publisher):
    with pytest.raises(PromotionError, match="Bento holds v4 but the gate approved v3"):
        promote(spec, make_decision("3"), make_bento("4"), settings, publisher)
    assert publisher.list_promotions() == []


def test_forced_promotion_says_so(settings, spec, publisher):
    decision = make_decision("3", forced=True, forced_by="alice", force_reason="hotfix for drift")
    record = promote(spec, decision, make_bento("3"), settings, publisher)
    assert "> **Forced** by alice: hotfix for drift" in record.body


def test_promote_creates_a_missing_values_file_and_takes_extra_files(settings, spec):
    init_local_remote(settings, [])  # repository without this model's values file
    publisher = LocalGitPublisher(settings.gitops_remote_url)
    record = promote(
        spec, make_decision("3"), make_bento("3"), settings, publisher, extra_files={"reports/v3.html": b"<p>ok</p>"}
    )
    assert "reports/v3.html" in record.files
    assert show(settings, f"{record.branch}:reports/v3.html") == "<p>ok</p>"
    assert 'version: "3"' in show(settings, f"{record.branch}:{spec.manifest_path}")
    with pytest.raises(PromotionError, match="must not replace"):
        promote(spec, make_decision("3"), make_bento("3"), settings, publisher, extra_files={spec.manifest_path: b""})


class RacingPublisher(LocalGitPublisher):
    """Someone edits the values file on main while the first promotion is being opened."""

    def __init__(self, *args, work, **kwargs):
        super().__init__(*args, **kwargs)
        self.work, self.opened = work, 0

    def open_promotion(self, record, files):
        self.opened += 1
        if self.opened == 1:
            subprocess.run(["git", "clone", "--quiet", self.remote_url, str(self.work)], check=True)
            values = self.work / record.manifest_path
            values.write_text(values.read_text().replace("modelServer:\n  replicas: 2", "modelServer:\n  replicas: 5"))
            cfg = ["-c", "user.name=t", "-c", "user.email=t@t"]
            subprocess.run(["git", *cfg, "-C", str(self.work), "commit", "-qam", "scale up"], check=True)
            subprocess.run(["git", "-C", str(self.work), "push", "-q", "origin", "HEAD:main"], check=True)
        return super().open_promotion(record, files)


def test_promote_redoes_the_bump_when_the_values_file_changes_meanwhile(settings, spec, tmp_path):
    init_local_remote(settings, [spec])
    publisher = RacingPublisher(settings.gitops_remote_url, work=tmp_path / "work")
    record = promote(spec, make_decision("3"), make_bento("3"), settings, publisher)
    assert publisher.opened == 2
    values = show(settings, f"{record.branch}:{spec.manifest_path}")
    assert "replicas: 5" in values and 'version: "3"' in values  # the hand edit survives
    assert [p.id for p in publisher.list_promotions()] == ["fraud-detector/v3"]
