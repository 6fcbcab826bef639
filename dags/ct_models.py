"""Airflow entry point: per spec in models/ the training DAG ``ct_<model>`` (cron or its retrain/data asset) and
the monitor DAG ``ct_<model>_monitor`` (see ct_pipeline.dag_factory)."""

import os
from pathlib import Path

from ct_pipeline.dag_factory import build_dags

_MODELS_DIR = os.environ.get("CTPIPE_MODELS_DIR") or Path(__file__).resolve().parent.parent / "models"

globals().update(build_dags(_MODELS_DIR))
