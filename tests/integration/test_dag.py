"""The DAG file imports nothing heavy at parse time, checked in a fresh interpreter.

(The DAGs themselves: tests/unit/test_dag.py.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ["mlflow", "bentoml", "lightgbm", "sklearn", "pandas", "pyarrow", "numpy", "git", "docker"]


def test_dag_file_imports_nothing_heavy():
    code = (
        "import json, runpy, sys; runpy.run_path(sys.argv[1]); "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "dags" / "ct_models.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env={**os.environ, "CTPIPE_MODELS_DIR": str(REPO / "models")},
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
