"""GitHubPublisher (PyGithub 2.x) against the GitHub stand-in (tests/support/github_standin.py): a threaded HTTP
server on 127.0.0.1 serving the REST endpoints the publisher calls, backed by a real bare git repository.

(Remote parsing and credentials without a server: tests/unit/test_github_publisher.py.)"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ct_pipeline.adapters.git_local import LocalGitPublisher, init_local_remote
from ct_pipeline.adapters.github import GitHubPublisher, resolve_auth
from ct_pipeline.adapters.publishers import deployed_model, publisher_for
from ct_pipeline.domain.manifest import bump, render_initial_values
from ct_pipeline.domain.promotion import promotion_branch, record_path
from ct_pipeline.domain.records import BentoRef, PromotionRecord
from ct_pipeline.errors import GitOpsError, MergeConflictError, NothingToRevertError, RemoteError
from ct_pipeline.ports import GitPublisher
from ct_pipeline.settings import Settings, load_settings
from tests.support.factories import fast_settings, make_spec
from tests.support.github_standin import GitHubStandIn
from tests.support.merge_styles import STYLES, merge_by_hand, periods_of, promote_twice_then_revert

pytestmark = pytest.mark.integration  # real git, real HTTP
REPO = "acme/gitops"
TOKEN = "standin-token"


def make_bento(version: str, suffix: str = "") -> BentoRef:
    return BentoRef(
        model="fraud-detector",
        version=version,
        run_id=f"run{version}",
        bento_tag=f"svc:v{version}{suffix}",
        bento_model_tag=f"fraud-detector:m{version}",
        data_hash=f"hash{version}",
        image_repository="ghcr.io/acme/fraud-detector",
        image_tag=f"v{version}",
        image_digest="sha256:" + version[0] * 64 if version[0] in "0123456789abcdef" else None,
    )


def git(git_dir: Path, *args: str) -> str:
    return subprocess.run(
        ["git", f"--git-dir={git_dir}", *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def branches(git_dir: Path) -> list[str]:
    return git(git_dir, "for-each-ref", "--format=%(refname:short)", "refs/heads").splitlines()


@pytest.fixture
def standin(tmp_path):
    server = GitHubStandIn(tmp_path / "github", tokens={TOKEN}).start()
    yield server
    server.stop()


@pytest.fixture
def git_dir(standin, tmp_path, monkeypatch) -> Path:
    """acme/gitops on the stand-in, initialized like `ctpipe gitops init` (seed + the spec's values file)."""
    path = standin.add_repo(REPO)
    monkeypatch.delenv("CTPIPE_GITOPS_REMOTE", raising=False)
    settings = load_settings(paths={"home": tmp_path / "home"}, gitops={"remote": str(path)})
    init_local_remote(settings, [make_spec()])
    return path


@pytest.fixture
def publisher(standin, git_dir) -> GitHubPublisher:
    from github import Auth

    return GitHubPublisher(REPO, api_url=standin.base_url, auth=Auth.Token(TOKEN), settings=fast_settings())


def open_version(pub: GitPublisher, version: str, suffix: str = "", base_text: str | None = None) -> PromotionRecord:
    """What ct_pipeline.steps.promote does, minus the gate: bump the values file on the base, propose it."""
    spec = make_spec()
    current = pub.read_file(spec.manifest_path) if base_text is None else base_text
    record = PromotionRecord(
        id=f"fraud-detector/v{version}",
        model="fraud-detector",
        version=version,
        environment="staging",
        branch=promotion_branch(f"fraud-detector/v{version}"),
        base_branch="main",
        title=f"Promote fraud-detector v{version} to staging",
        body=f"**Promote `fraud-detector` v{version}{suffix}.**\n\n| metric | value |\n|---|---|\n| auc | 0.9 |\n",
        manifest_path=spec.manifest_path,
        created_at=datetime(2026, 11, 1, tzinfo=UTC),
    )
    return pub.open_promotion(record, {spec.manifest_path: bump(current, make_bento(version, suffix)).encode()})


# ------------------------------------------------------------------------------------------- selection


def test_default_publisher_chooses_github_for_github_remotes(standin, git_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CTPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CTPIPE_GITHUB_API_URL", standin.base_url)
    monkeypatch.setenv("CTPIPE_GITHUB_TOKEN", TOKEN)
    monkeypatch.setenv("CTPIPE_GITHUB_SECONDS_BETWEEN_WRITES", "0")
    monkeypatch.setenv("CTPIPE_GITOPS_REMOTE", "github.com/acme/gitops")
    pub = publisher_for(Settings())
    assert isinstance(pub, GitHubPublisher) and isinstance(pub, GitPublisher)
    assert (pub.full_name, pub.api_url, pub.auth_source) == (REPO, standin.base_url, "CTPIPE_GITHUB_TOKEN")
    assert pub.head() == git(git_dir, "rev-parse", "main")
    spec_remote = publisher_for(Settings(), make_spec(remote=f"{standin.origin}/acme/gitops"))
    assert isinstance(spec_remote, GitHubPublisher)
    monkeypatch.setenv("CTPIPE_GITOPS_REMOTE", str(git_dir))
    assert isinstance(publisher_for(Settings()), LocalGitPublisher)
    monkeypatch.setenv("CTPIPE_GITHUB_TOKEN", "wrong")
    monkeypatch.setenv("CTPIPE_GITOPS_REMOTE", "github.com/acme/gitops")
    with pytest.raises(RemoteError, match="rejected the credentials"):
        publisher_for(Settings()).head()


# ------------------------------------------------------------------------------------------- proposing


def test_open_promotion_is_one_commit_a_pull_request_and_the_same_record(standin, git_dir, publisher):
    spec = make_spec()
    base = git(git_dir, "rev-parse", "main")
    record = open_version(publisher, "3")
    branch = "promote/fraud-detector/v3"
    assert record.status == "open" and record.url == f"{standin.origin}/{REPO}/pull/1"
    assert record.commit == git(git_dir, "rev-parse", branch)
    assert git(git_dir, "rev-list", f"main..{branch}").split() == [record.commit]  # one commit on the base
    assert git(git_dir, "rev-parse", f"{branch}^") == base
    changed = set(git(git_dir, "diff", "--name-only", base, branch).split())
    assert changed == {spec.manifest_path, record_path(record.id), f"promotions/{record.id}/PR.md"}
    assert "Promotion-Id: fraud-detector/v3" in git(git_dir, "log", "-1", "--format=%B", branch)

    (pull,) = standin.open_pulls(REPO)
    assert (pull.head, pull.base, pull.title) == (branch, "main", record.title)
    assert pull.body == record.body == git(git_dir, "show", f"{branch}:promotions/{record.id}/PR.md") + "\n"
    assert pull.labels == ["promotion", "model:fraud-detector", "env:staging"]

    got = publisher.get_promotion(record.id)
    assert got == record
    assert publisher.list_promotions() == [record] == publisher.list_promotions("fraud-detector")
    assert publisher.list_promotions("other") == []
    assert publisher.get_promotion("fraud-detector/v9") is None
    assert publisher.read_file(spec.manifest_path, ref=branch).count('version: "3"') == 1
    assert publisher.read_file("nope.txt") is None


def test_reopening_the_same_version_reuses_branch_and_pull_request(standin, git_dir, publisher):
    first = open_version(publisher, "3")
    writes = len(standin.calls("POST")) + len(standin.calls("PATCH"))
    again = open_version(publisher, "3")
    assert again.commit == first.commit and again.url == first.url
    assert not standin.calls("PATCH", "/git/refs/")  # same content on the same base: branch untouched
    assert len(standin.calls("POST", "/pulls$")) == 1
    assert len(standin.calls("POST")) + len(standin.calls("PATCH")) - writes == 4  # 3 blobs + 1 tree, no commit

    changed = open_version(publisher, "3", suffix="-rebuilt")  # new Bento for the same version
    assert changed.commit != first.commit and changed.url == first.url
    assert git(git_dir, "rev-parse", "promote/fraud-detector/v3") == changed.commit
    (pull,) = standin.open_pulls(REPO)
    assert "-rebuilt" in pull.body and len(standin.pulls[REPO]) == 1


def test_a_422_duplicate_pull_request_resolves_to_the_existing_one(standin, git_dir, publisher, monkeypatch):
    first = open_version(publisher, "3")
    real = publisher._pulls
    calls = []

    def stale_once(branch, state="all"):  # the first listing does not see the pull request (a concurrent run)
        calls.append(branch)
        return [] if len(calls) == 1 else real(branch, state)

    monkeypatch.setattr(publisher, "_pulls", stale_once)
    again = open_version(publisher, "3", suffix="-b")
    assert again.url == first.url
    assert [s for *_, s in standin.calls("POST", "/pulls$")] == [201, 422]
    assert len(standin.pulls[REPO]) == 1 and "-b" in standin.open_pulls(REPO)[0].body


def test_rate_limits_and_server_errors_are_retried_honouring_retry_after(standin, git_dir, publisher):
    standin.inject(
        "POST",
        "/git/trees$",
        403,
        "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
        headers={"Retry-After": "1"},
    )
    standin.inject("POST", "/pulls$", 429, "rate limited", headers={"Retry-After": "1"})
    standin.inject("POST", "/git/blobs$", 502, "Server Error")
    standin.inject("GET", "/git/ref/heads/main$", 503, "unavailable", times=2)
    record = open_version(publisher, "3")
    assert record.url and len(standin.open_pulls(REPO)) == 1
    for method, path, status in [("POST", "/git/trees$", 403), ("POST", "/pulls$", 429)]:
        calls = standin.calls(method, path)
        assert [c[3] for c in calls][:2] == [status, 201]
        assert calls[1][0] - calls[0][0] >= 0.95, f"{method} {path} retried before Retry-After"
    assert [c[3] for c in standin.calls("POST", "/git/blobs$")][:2] == [502, 201]


def test_a_failure_leaves_no_stray_branch(standin, git_dir, publisher):
    before = branches(git_dir)
    standin.inject("POST", "/pulls$", 422, "Validation Failed")
    with pytest.raises(GitOpsError, match="refused the pull request"):
        open_version(publisher, "3")
    assert branches(git_dir) == before and standin.pulls[REPO] == {}

    standin.inject("POST", "/pulls$", 500, "boom", times=10)  # retries run out
    with pytest.raises(RemoteError, match="500"):
        open_version(publisher, "3")
    assert branches(git_dir) == before
    assert len(standin.calls("POST", "/pulls$")) == 1 + 5  # the 422 once; the 500 tried 1 + 4 retries
    standin.faults.clear()

    first = open_version(publisher, "3")  # an existing branch moves back when the update fails
    standin.inject("GET", "/pulls$", 500, "boom", times=10)
    with pytest.raises(RemoteError):
        open_version(publisher, "3", suffix="-x")
    assert git(git_dir, "rev-parse", "promote/fraud-detector/v3") == first.commit


def test_github_and_local_git_keep_the_same_records(standin, git_dir, publisher, tmp_path):
    local_remote = tmp_path / "local.git"
    subprocess.run(["git", "clone", "--quiet", "--bare", str(git_dir), str(local_remote)], check=True)
    local = LocalGitPublisher(local_remote)
    gh_record, local_record = open_version(publisher, "3"), open_version(local, "3")
    assert gh_record.model_copy(update={"commit": None, "url": None}) == local_record.model_copy(
        update={"commit": None}
    )
    for path in (record_path("fraud-detector/v3"), "promotions/fraud-detector/v3/PR.md", make_spec().manifest_path):
        assert publisher.read_file(path, ref=gh_record.branch) == local.read_file(path, ref=local_record.branch)
    assert publisher.list_promotions()[0].model_copy(update={"commit": None, "url": None}) == local.list_promotions()[
        0
    ].model_copy(update={"commit": None})


# ------------------------------------------------------------------------------------------- merge, revert


def test_merge_history_and_revert_through_pull_requests(standin, git_dir, publisher):
    spec = make_spec()
    initial = publisher.read_file(spec.manifest_path)
    assert initial == render_initial_values(spec)
    open_version(publisher, "1")
    merge_v1 = publisher.merge_promotion("fraud-detector/v1")
    assert git(git_dir, "rev-parse", "main") == merge_v1
    assert len(git(git_dir, "log", "-1", "--format=%P", merge_v1).split()) == 2
    assert "Promotion-Id: fraud-detector/v1" in git(git_dir, "log", "-1", "--format=%B", merge_v1)
    assert publisher.get_promotion("fraud-detector/v1").status == "merged"
    assert deployed_model(publisher, spec).version == "1"
    after_v1 = publisher.read_file(spec.manifest_path)
    with pytest.raises(GitOpsError, match="already merged"):
        publisher.merge_promotion("fraud-detector/v1")

    open_version(publisher, "2")
    merge_v2 = publisher.merge_promotion("fraud-detector/v2")
    assert deployed_model(publisher, spec).version == "2"
    assert [(e.kind, e.version) for e in publisher.history("fraud-detector")] == [("promote", "2"), ("promote", "1")]

    revert = publisher.revert_last_promotion("fraud-detector", "staging")
    assert git(git_dir, "rev-parse", "main") == revert
    assert f"This reverts commit {merge_v2}" in git(git_dir, "log", "-1", "--format=%B", f"{revert}^2")
    assert publisher.read_file(spec.manifest_path) == after_v1
    assert publisher.read_file(record_path("fraud-detector/v2")) is None  # like git revert -m 1
    assert deployed_model(publisher, spec).version == "1"
    rollback_pr = max(standin.pulls[REPO].values(), key=lambda p: p.number)
    assert rollback_pr.merged and rollback_pr.head == "revert/fraud-detector/v2" and "rollback" in rollback_pr.labels
    assert "revert/fraud-detector/v2" not in branches(git_dir)

    publisher.revert_last_promotion("fraud-detector", "staging")
    assert publisher.read_file(spec.manifest_path) == initial
    with pytest.raises(NothingToRevertError, match="no promotion of fraud-detector in staging"):
        publisher.revert_last_promotion("fraud-detector", "staging")
    events = [(e.kind, e.version, bool(e.reverted_by)) for e in publisher.history()]
    assert events == [  # newest first, as on the base branch
        ("revert", "1", False),
        ("revert", "2", False),
        ("promote", "2", True),
        ("promote", "1", True),
    ]

    # the local git publisher reads the same history from the same repository
    local = [(e.kind, e.version, bool(e.reverted_by)) for e in LocalGitPublisher(git_dir).history()]
    assert [e for e in local if e[0] == "promote"] == [e for e in events if e[0] == "promote"]


def test_revert_via_push_moves_the_base_branch(standin, git_dir, publisher):
    publisher.cfg.revert_via = "push"
    open_version(publisher, "1")
    merge = publisher.merge_promotion("fraud-detector/v1")
    revert = publisher.revert_last_promotion("fraud-detector", "staging")
    assert git(git_dir, "rev-parse", "main") == revert and git(git_dir, "rev-parse", f"{revert}^") == merge
    assert len(standin.pulls[REPO]) == 1


def test_conflicting_promotion_is_not_merged_and_main_is_untouched(standin, git_dir, publisher):
    base_text = publisher.read_file(make_spec().manifest_path)
    open_version(publisher, "1", base_text=base_text)
    open_version(publisher, "2", base_text=base_text)  # proposed against the same, now older, base
    publisher.merge_promotion("fraud-detector/v1")
    main = git(git_dir, "rev-parse", "main")
    with pytest.raises(MergeConflictError, match="cannot be merged"):
        publisher.merge_promotion("fraud-detector/v2")
    assert git(git_dir, "rev-parse", "main") == main


def test_close_then_promote_again_opens_a_new_pull_request(standin, git_dir, publisher):
    first = open_version(publisher, "3")
    closed = publisher.close_promotion("fraud-detector/v3")
    assert closed.status == "closed" and publisher.get_promotion("fraud-detector/v3").status == "closed"
    with pytest.raises(GitOpsError, match="is closed"):
        publisher.merge_promotion("fraud-detector/v3")
    again = open_version(publisher, "3", suffix="-new")  # branch force-moved: GitHub refuses to reopen
    assert again.status == "open" and again.url != first.url
    assert publisher.get_promotion("fraud-detector/v3").url == again.url
    assert [p.state for p in sorted(standin.pulls[REPO].values(), key=lambda p: p.number)] == ["closed", "open"]
    assert len(publisher.list_promotions()) == 1


# ------------------------------------------------------------------------------------------- auth


def test_github_app_installation_auth(standin, git_dir, monkeypatch):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    standin.add_app(4242, public.decode(), {77: REPO})
    cfg = fast_settings(app_id="4242", app_private_key=pem.decode(), api_url=standin.base_url)
    pub = GitHubPublisher(REPO, api_url=standin.base_url, settings=cfg)
    assert pub.auth_source == "GitHub App 4242"
    assert pub.head() == git(git_dir, "rev-parse", "main")
    assert standin.calls("GET", "/repos/acme/gitops/installation$")  # installation looked up for the repo
    assert [c[3] for c in standin.calls("POST", "/app/installations/77/access_tokens$")] == [201]


def test_token_from_the_airflow_connection(standin, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_GITHUB_DEFAULT", json.dumps({"conn_type": "github", "password": TOKEN, "host": standin.base_url})
    )
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    auth, api_url, source = resolve_auth(fast_settings(api_url=None), "acme", "gitops", "https://api.github.com")
    assert (auth.token, api_url, source) == (TOKEN, standin.base_url, "Airflow connection github_default")


# ------------------------------------------------------------------------------------------- git over HTTP


def test_the_standin_serves_the_repository_over_git_http(standin, git_dir, tmp_path):
    """What Flux's source-controller does in the kind end-to-end job: clone over HTTP; pushes need the token."""
    work = tmp_path / "clone"
    url = standin.git_url(REPO)
    subprocess.run(["git", "clone", "--quiet", url, str(work)], check=True, timeout=60)
    assert (work / "apps/staging/fraud-detector/values.yaml").is_file()
    cfg = ["-c", "user.name=t", "-c", "user.email=t@t"]
    (work / "NOTE").write_text("x\n")
    subprocess.run(["git", *cfg, "-C", str(work), "add", "NOTE"], check=True)
    subprocess.run(["git", *cfg, "-C", str(work), "commit", "-qm", "note"], check=True)
    anon = subprocess.run(["git", "-C", str(work), "push", "-q", url, "HEAD:main"], capture_output=True, timeout=60)
    assert anon.returncode != 0
    authed = url.replace("http://", f"http://x:{TOKEN}@")
    subprocess.run(["git", "-C", str(work), "push", "-q", authed, "HEAD:main"], check=True, timeout=60)
    assert git(git_dir, "log", "-1", "--format=%s", "main") == "note"


# ------------------------------------------------------------------------------------------- the CLI


def test_ctpipe_promotions_list_and_merge_on_github(standin, git_dir, publisher, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ct_pipeline.cli import app

    models = tmp_path / "models"
    models.mkdir()
    spec_yaml = {
        "name": "fraud-detector",
        "data": {"source": {"kind": "parquet", "path": "x"}, "time_column": "ts", "target": "y", "features": ["a"]},
        "candidates": [{"name": "lgbm", "kind": "lightgbm"}],
        "metric": {"name": "roc_auc"},
        "gitops": {"environment": "staging"},
    }
    (models / "fraud-detector.yaml").write_text(json.dumps(spec_yaml))
    open_version(publisher, "3")
    env = {
        "CTPIPE_HOME": str(tmp_path / "home"),
        "CTPIPE_MODELS_DIR": str(models),
        "CTPIPE_GITOPS_REMOTE": "github.com/acme/gitops",
        "CTPIPE_GITHUB_API_URL": standin.base_url,
        "CTPIPE_GITHUB_TOKEN": TOKEN,
        "CTPIPE_GITHUB_SECONDS_BETWEEN_REQUESTS": "0",
        "CTPIPE_GITHUB_SECONDS_BETWEEN_WRITES": "0",
        "COLUMNS": "200",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    synced = []  # the registry sync after a merge is the loop's business (MLflow); record that it ran
    from ct_pipeline.domain.records import SyncResult

    def fake_sync(ctx):
        synced.append(ctx.spec.name)
        return SyncResult(model=ctx.spec.name, lines=["synced"])

    monkeypatch.setattr("ct_pipeline.steps.sync.sync", fake_sync)
    runner = CliRunner()
    listed = runner.invoke(app, ["promotions", "list"], env=env)
    assert listed.exit_code == 0, listed.output
    assert "fraud-detector/v3" in listed.output and "open" in listed.output
    merged = runner.invoke(app, ["promotions", "merge", "fraud-detector/v3"], env=env)
    assert merged.exit_code == 0, merged.output
    assert "merged fraud-detector/v3 into main" in merged.output and synced == ["fraud-detector"]
    assert publisher.get_promotion("fraud-detector/v3").status == "merged"
    assert deployed_model(publisher, make_spec()).version == "3"


# ------------------------------------------------------------------------------------------- merge styles


def merge_on_github(standin, pub: GitHubPublisher, pid: str, style: str, **options) -> str:
    """What a person clicking GitHub's merge button does (its default messages unless ``options`` say otherwise)."""
    number = next(p.number for p in standin.open_pulls(REPO) if p.head == promotion_branch(pid))
    return pub.repo.get_pull(number).merge(merge_method=style, **options).sha


@pytest.mark.parametrize("style", STYLES)
def test_merge_styles_give_the_same_history_on_github_and_local_git(standin, git_dir, publisher, tmp_path, style):
    """v1 merged in GitHub's UI, v2 by the publisher, both ``style``; the rollback reverts v2. The git CLI
    publisher, with v1 and v2 landed the same way by hand, reads the same production periods."""
    local_remote = tmp_path / "local.git"
    subprocess.run(["git", "clone", "--quiet", "--bare", str(git_dir), str(local_remote)], check=True)
    publisher.merge_method = style

    def merge_github(pid: str) -> str:
        if pid.endswith("/v1"):
            return merge_on_github(standin, publisher, pid, style)
        return publisher.merge_promotion(pid)

    github = promote_twice_then_revert(
        publisher, make_spec(), style, git_dir, tmp_path, lambda v: open_version(publisher, v), merge_github
    )
    if style == "merge":
        assert len(git(git_dir, "log", "-1", "--format=%P", "main").split()) == 2  # the rollback pull request
    else:
        assert "revert/fraud-detector/v2" not in branches(git_dir)

    local = LocalGitPublisher(local_remote)
    local_periods = promote_twice_then_revert(
        local,
        make_spec(),
        style,
        local_remote,
        tmp_path,
        lambda v: open_version(local, v),
        lambda pid: merge_by_hand(local_remote, pid, style, tmp_path),
    )
    assert local_periods == github
    # and each publisher reads the other's repository the same way
    assert periods_of(LocalGitPublisher(git_dir), make_spec()) == github


def test_a_squash_titled_by_the_pull_request_alone_is_found_by_its_record_file(standin, git_dir, publisher):
    """GitHub's "default to pull request title and description" squash message carries no trailers."""
    spec = make_spec()
    record = open_version(publisher, "1")
    squash = merge_on_github(
        standin, publisher, record.id, "squash", commit_title=f"{record.title} (#1)", commit_message=record.body
    )
    assert "Promotion-Id" not in git(git_dir, "log", "-1", "--format=%B", squash)
    (event,) = publisher.history()
    assert (event.kind, event.version, event.commit) == ("promote", "1", squash)
    assert [e.version for e in LocalGitPublisher(git_dir).history()] == ["1"]
    publisher.revert_last_promotion("fraud-detector", "staging")
    assert publisher.read_file(spec.manifest_path) == render_initial_values(spec)
    assert [(e.kind, bool(e.reverted_by)) for e in publisher.history()] == [("revert", False), ("promote", True)]
