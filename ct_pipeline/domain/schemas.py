"""The records whose JSON schemas live in the repo (``schemas/``), so other tools can validate what we write.

Regenerate with ``python -m ct_pipeline.domain.schemas``; tests/unit/test_records_schema.py fails when stale.
"""

from __future__ import annotations

import json
from pathlib import Path

from ct_pipeline.domain.monitor_report import MonitorReport
from ct_pipeline.domain.records import GateDecision, PromotionRecord, Record

SCHEMAS: dict[str, type[Record]] = {
    "gate-decision": GateDecision,
    "promotion-record": PromotionRecord,
    "monitor-report": MonitorReport,
}


def write_schemas(directory: str | Path) -> list[str]:
    written = []
    for name, model in SCHEMAS.items():
        path = Path(directory) / f"{name}.schema.json"
        path.write_text(json.dumps(model.model_json_schema(mode="serialization"), indent=2, sort_keys=True) + "\n")
        written.append(str(path))
    return written


if __name__ == "__main__":  # pragma: no cover
    print("\n".join(write_schemas("schemas")))
