"""Image names, no engine needed (the model-service OCI image on the real engine: tests/integration/test_image.py)."""

from __future__ import annotations

from ct_pipeline.settings import load_settings
from ct_pipeline.steps.package import image_repository, image_tag
from tests.support.factories import bento_ref as _ref


def test_names(tmp_path):
    s = load_settings(paths={"home": tmp_path}, image={"registry": "127.0.0.1:5000", "repository_prefix": "Team/ML"})
    assert image_repository(s, "fraud-detector") == "127.0.0.1:5000/team/ml/fraud-detector"
    assert image_repository(s.replace(image={"repository_prefix": ""}), "m") == "127.0.0.1:5000/m"
    assert image_tag(_ref()) == "fraud-detector-v7"
    assert image_tag(_ref(version="3 rc/1")) == "fraud-detector-v3-rc-1"
