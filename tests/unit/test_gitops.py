"""The promotion record file, without git (LocalGitPublisher on a real repository: tests/integration/test_gitops.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from ct_pipeline.domain.promotion import body_path, parse_record_file, record_path
from ct_pipeline.domain.records import PromotionRecord


def test_record_file_round_trip():
    record = PromotionRecord(
        id="m/v1",
        model="m",
        version="1",
        environment="staging",
        branch="promote/m/v1",
        title="t",
        body="b",
        manifest_path="apps/staging/m/values.yaml",
        commit="abc",
        status="merged",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    from ct_pipeline.domain.promotion import promotion_files

    files = promotion_files(record, note={"k": 1})
    stored, doc = parse_record_file(files[record_path("m/v1")])
    assert stored.commit is None and stored.status == "open"  # live values are read from git
    assert doc["note"] == {"k": 1} and json.loads(files[record_path("m/v1")])["promotion"]["id"] == "m/v1"
    assert files[body_path("m/v1")] == b"b\n"
