"""GitHub remotes and credentials, without a server (the publisher against the GitHub stand-in:
tests/integration/test_github_publisher.py)."""

from __future__ import annotations

import pytest

from ct_pipeline.adapters.github import parse_github_remote, resolve_auth
from ct_pipeline.errors import GitOpsError
from tests.support.factories import fast_settings


def test_parse_github_remote():
    api = "http://127.0.0.1:8080/api/v3"
    assert parse_github_remote("github.com/acme/gitops", "") == ("github.com", "acme", "gitops")
    assert parse_github_remote("https://github.com/acme/gitops.git", "") == ("github.com", "acme", "gitops")
    assert parse_github_remote("https://github.com/acme/git.ops/", "") == ("github.com", "acme", "git.ops")
    assert parse_github_remote("git@github.com:acme/gitops.git", "") is None  # ssh: a plain git remote
    assert parse_github_remote("/srv/gitops.git", api) is None
    assert parse_github_remote("https://gitlab.com/acme/gitops", api) is None
    assert parse_github_remote("http://127.0.0.1:8080/acme/gitops.git", api) == ("127.0.0.1:8080", "acme", "gitops")
    assert parse_github_remote("127.0.0.1:8080/acme/gitops", api) == ("127.0.0.1:8080", "acme", "gitops")
    assert parse_github_remote("http://127.0.0.1:9999/acme/gitops", api) is None  # another port


def test_without_credentials_the_error_says_where_to_put_them(monkeypatch):
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_GITHUB_DEFAULT", raising=False)
    cfg = fast_settings(airflow_conn_id="ctpipe_missing_connection")
    with pytest.raises(GitOpsError, match="CTPIPE_GITHUB_TOKEN.*GITHUB_TOKEN"):
        resolve_auth(cfg, "acme", "gitops", "https://api.github.com")
    monkeypatch.setenv("GITHUB_TOKEN", "abc")
    cfg = fast_settings(airflow_conn_id="ctpipe_missing_connection")  # settings are read at the edge, once
    assert resolve_auth(cfg, "acme", "gitops", "https://api.github.com")[2] == "GITHUB_TOKEN"
