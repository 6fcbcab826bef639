"""build_bento: unit checks of names/labels (real builds: tests/integration/test_package.py)."""

from __future__ import annotations

import pytest

from ct_pipeline.adapters.bento import bento_model_name, bento_model_version, runtime_requirements, sanitize_label
from ct_pipeline.errors import PackageError


def test_sanitize_label():
    assert sanitize_label("sha256:" + "a" * 64) == ("sha256-" + "a" * 64)[:63]
    assert len(sanitize_label("x" * 200)) == 63
    assert sanitize_label("fraud-detector") == "fraud-detector"
    assert sanitize_label(" weird / value! ") == "weird-value"
    assert sanitize_label(3) == "3"


def test_names():
    assert bento_model_name("fraud-detector") == "fraud-detector"
    assert bento_model_name("Churn Model v2") == "churn-model-v2"
    assert bento_model_version("12", "0123456789abcdef0123") == "v12-0123456789ab"
    with pytest.raises(PackageError):
        bento_model_name("---")


def test_runtime_requirements_are_pinned():
    pins = dict(p.split("==") for p in runtime_requirements())
    assert {"mlflow", "scikit-learn", "lightgbm", "pandas"} <= set(pins)
    assert all(pins.values())
