"""Airflow entry point: one continuous-training DAG per spec in models/ (see ct_pipeline.dag_factory)."""

import os
from pathlib import Path

from ct_pipeline.dag_factory import build_dags

_MODELS_DIR = os.environ.get("CTPIPE_MODELS_DIR") or Path(__file__).resolve().parent.parent / "models"

globals().update(build_dags(_MODELS_DIR))
