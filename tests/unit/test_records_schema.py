"""The decision record's JSON schema lives in the repo (schemas/) and must match the code."""

import json
from pathlib import Path

import jsonschema

from ct_pipeline.domain.records import GateDecision
from ct_pipeline.domain.schemas import SCHEMAS

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


def test_committed_schemas_match_the_records():
    for name, model in SCHEMAS.items():
        committed = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())
        assert committed == model.model_json_schema(mode="serialization"), (
            f"schemas/{name}.schema.json is stale: run `python -m ct_pipeline.domain.schemas`"
        )


def test_a_decision_validates_and_a_broken_one_does_not():
    schema = json.loads((SCHEMA_DIR / "gate-decision.schema.json").read_text())
    decision = {
        "model": "m",
        "promote": True,
        "reason": "no champion yet",
        "challenger": {"version": "1", "run_id": "r1", "metric": 0.8},
        "metric": "roc_auc",
        "direction": "maximize",
        "decided_at": "2026-11-22T00:00:00Z",
        "snapshot": {
            "model": "m",
            "source": "file:///x",
            "start": "2026-10-23T00:00:00Z",
            "end": "2026-11-22T00:00:00Z",
            "rows": 10,
            "content_hash": "sha256:ab",
            "path": "/x.parquet",
            "time_column": "t",
            "target": "y",
            "features": ["a"],
        },
        "slices": [{"column": "c", "value": "x", "rows": 5, "judged": False, "passed": True, "note": "small"}],
    }
    jsonschema.validate(decision, schema)
    GateDecision.model_validate(decision)
    broken = {**decision, "promote": "maybe"}
    try:
        jsonschema.validate(broken, schema)
    except jsonschema.ValidationError as exc:
        assert list(exc.absolute_path) == ["promote"]
    else:
        raise AssertionError("a non-boolean promote must be rejected")
