"""LocalGitPublisher against a real bare repository in a temporary CTPIPE_HOME.

(The promotion record file without git: tests/unit/test_gitops.py.)"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ct_pipeline.adapters.git_local import LocalGitPublisher, init_local_remote
from ct_pipeline.adapters.publishers import deployed_model
from ct_pipeline.domain.manifest import (
    bump,
    monitoring_values_path,
    render_app_kustomization,
    render_initial_values,
    render_monitoring_values,
)
from ct_pipeline.domain.promotion import body_path, parse_record_file, promotion_branch, promotion_id, record_path
from ct_pipeline.domain.records import BentoRef, PromotionRecord
from ct_pipeline.errors import (
    GitOpsError,
    MergeConflictError,
    NothingToRevertError,
    PromotionNotFoundError,
    PushRejectedError,
    RemoteError,
)
from ct_pipeline.ports import GitPublisher
from tests.support.factories import make_spec
from tests.support.merge_styles import STYLES, merge_by_hand, promote_twice_then_revert

pytestmark = pytest.mark.integration  # real git


def make_bento(spec, version: str, tag_suffix: str = "") -> BentoRef:
    return BentoRef(
        model=spec.name,
        version=version,
        run_id=f"run{version}",
        bento_tag=f"svc:v{version}{tag_suffix}",
        bento_model_tag=f"{spec.name}:m{version}",
        data_hash=f"hash{version}",
    )


def git(remote: str | Path, *args: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", str(remote), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def remote_branches(remote) -> list[str]:
    return git(remote, "for-each-ref", "--format=%(refname:short)", "refs/heads").splitlines()


@pytest.fixture
def spec():
    return make_spec()


@pytest.fixture
def remote(settings, spec) -> str:
    return init_local_remote(settings, [spec])


@pytest.fixture
def publisher(settings, remote) -> LocalGitPublisher:
    return LocalGitPublisher(remote, "main", settings.gitops.author_name, settings.gitops.author_email)


def open_version(publisher: GitPublisher, spec, version: str, tag_suffix: str = "") -> PromotionRecord:
    """What promote() does, minus the body: bump main's manifest and open the promotion."""
    text = publisher.read_file(spec.manifest_path)
    pid = promotion_id(spec.name, version)
    record = PromotionRecord(
        id=pid,
        model=spec.name,
        version=version,
        environment=spec.gitops.environment,
        branch=promotion_branch(pid),
        title=f"Promote {spec.name} v{version} to {spec.gitops.environment}",
        body=f"Promote v{version}{tag_suffix}.\n",
        manifest_path=spec.manifest_path,
        created_at=datetime(2026, 11, 1, tzinfo=UTC),
    )
    new_text = bump(text, make_bento(spec, version, tag_suffix))
    return publisher.open_promotion(record, {spec.manifest_path: new_text.encode()})


# ------------------------------------------------------------------------------------------------ init


def test_init_creates_bare_repo_with_seed_and_values(settings, spec, remote):
    assert remote == str(settings.paths.home_dir / "gitops.git")
    assert git(remote, "rev-parse", "--is-bare-repository") == "true"
    files = set(git(remote, "ls-tree", "-r", "--name-only", "main").splitlines())
    assert {"README.md", "clusters/staging/.gitkeep", "apps/base/.gitkeep", "infrastructure/.gitkeep"} <= files
    assert spec.manifest_path in files
    assert git(remote, "show", f"main:{spec.manifest_path}") + "\n" == render_initial_values(spec)
    # the generated monitoring values sit next to the values file, exactly as rendered from the spec
    assert monitoring_values_path(spec) == "apps/staging/fraud-detector/monitoring.yaml"
    assert git(remote, "show", f"main:{monitoring_values_path(spec)}") + "\n" == render_monitoring_values(spec)
    assert git(remote, "rev-list", "--count", "main") == "1"
    publisher = LocalGitPublisher(remote)
    assert isinstance(publisher, GitPublisher)
    assert deployed_model(publisher, spec) is None


def test_init_is_idempotent_and_only_adds_missing_values_files(settings, spec, remote, publisher):
    first = git(remote, "rev-parse", "main")
    assert init_local_remote(settings, [spec]) == remote
    assert git(remote, "rev-parse", "main") == first  # nothing to add: no commit

    open_version(publisher, spec, "1")
    publisher.merge_promotion("fraud-detector/v1")
    other = make_spec("churn", "production")
    init_local_remote(settings, [spec, other])
    assert git(remote, "rev-list", "--first-parent", "--count", "main") == "3"  # init, merge, add churn
    # churn's whole app directory, listed in its environment so Flux deploys it
    assert git(remote, "diff", "--name-only", "main^", "main").splitlines() == [
        "apps/production/churn/kustomization.yaml",
        "apps/production/churn/monitoring.yaml",
        other.manifest_path,
        "apps/production/kustomization.yaml",
    ]
    assert git(remote, "show", "main:apps/production/churn/kustomization.yaml") + "\n" == render_app_kustomization(
        other
    )
    env = git(remote, "show", "main:apps/production/kustomization.yaml")
    assert env.splitlines()[-2:] == ["  - fraud-detector", "  - churn"]
    assert env.startswith("# Every model served in this environment")  # the comment stays
    assert init_local_remote(settings, [spec, other]) == remote  # listed once: nothing more to add
    assert git(remote, "rev-list", "--first-parent", "--count", "main") == "3"
    assert deployed_model(publisher, spec).version == "1"  # not overwritten
    assert deployed_model(publisher, other) is None


def test_init_with_explicit_seed_dir(settings, spec, tmp_path):
    seed = tmp_path / "seed"
    (seed / "clusters" / "prod").mkdir(parents=True)
    (seed / "clusters" / "prod" / "kustomization.yaml").write_text("resources: []\n")
    remote = init_local_remote(settings, [spec], seed_dir=seed)
    files = git(remote, "ls-tree", "-r", "--name-only", "main").splitlines()
    assert files == sorted(
        [
            "clusters/prod/kustomization.yaml",
            spec.manifest_path,
            monitoring_values_path(spec),
            "apps/staging/fraud-detector/kustomization.yaml",  # no apps/staging/kustomization.yaml to list it in
        ]
    )
    with pytest.raises(GitOpsError, match="does not exist"):
        init_local_remote(settings, [spec], seed_dir=tmp_path / "missing")


def test_bad_remote_gives_a_clear_error(tmp_path, settings):
    missing = LocalGitPublisher(tmp_path / "nope.git")
    with pytest.raises(RemoteError, match="cannot read GitOps remote"):
        missing.head()
    with pytest.raises(RemoteError, match="cannot read GitOps remote"):
        missing.list_promotions()
    empty = tmp_path / "empty.git"
    subprocess.run(["git", "init", "--quiet", "--bare", str(empty)], check=True)
    with pytest.raises(RemoteError, match="base branch 'main' does not exist.*initialize"):
        LocalGitPublisher(empty).read_file("README.md")


# ------------------------------------------------------------------------------------------------ open


def test_open_promotion_pushes_branch_with_bumped_manifest_and_record(spec, remote, publisher):
    main_before = git(remote, "rev-parse", "main")
    record = open_version(publisher, spec, "1")

    assert record.status == "open" and record.id == "fraud-detector/v1"
    assert record.branch == "promote/fraud-detector/v1"
    assert record.commit == git(remote, "rev-parse", "promote/fraud-detector/v1")
    assert record.files == sorted([spec.manifest_path, record_path(record.id), body_path(record.id)])
    assert git(remote, "rev-parse", "main") == main_before  # main untouched
    assert git(remote, "rev-parse", f"{record.commit}^") == main_before  # one commit on top of main

    assert 'version: "1"' in git(remote, "show", f"{record.commit}:{spec.manifest_path}")
    stored, doc = parse_record_file(git(remote, "show", f"{record.commit}:{record_path(record.id)}"))
    assert stored.id == record.id and stored.title == record.title and doc["format"].startswith("ct-pipeline/")
    assert git(remote, "show", f"{record.commit}:{body_path(record.id)}") == "Promote v1."
    assert publisher.read_file(spec.manifest_path, ref=record.branch).count('"1"') == 1
    assert publisher.get_promotion(record.id) == record


def test_reopening_the_same_id_updates_the_one_branch(spec, remote, publisher):
    first = open_version(publisher, spec, "1")
    again = open_version(publisher, spec, "1")
    assert again.commit == first.commit  # same content on the same base: branch left alone

    updated = open_version(publisher, spec, "1", tag_suffix="-rebuilt")
    assert updated.commit != first.commit
    assert remote_branches(remote) == ["main", "promote/fraud-detector/v1"]
    assert git(remote, "rev-parse", "promote/fraud-detector/v1") == updated.commit
    assert git(remote, "rev-parse", f"{updated.commit}^") == git(remote, "rev-parse", "main")  # rebuilt, not stacked
    assert "svc:v1-rebuilt" in git(remote, "show", f"{updated.commit}:{spec.manifest_path}")
    assert [p.id for p in publisher.list_promotions()] == ["fraud-detector/v1"]


def test_open_promotion_validates_its_input(spec, remote, publisher):
    record = open_version(publisher, spec, "1")
    with pytest.raises(GitOpsError, match="must use branch"):
        publisher.open_promotion(record.model_copy(update={"branch": "feature/x"}), {})
    with pytest.raises(GitOpsError, match="paths must be relative"):
        publisher.open_promotion(record, {"../outside.yaml": b"x"})
    with pytest.raises(ValueError, match="promotion id"):
        publisher.get_promotion("fraud-detector/../../main")


# ------------------------------------------------------------------------------------------------ list / merge


def test_list_shows_open_then_merged(spec, remote, publisher):
    open_version(publisher, spec, "1")
    open_version(publisher, spec, "2")
    assert [(p.id, p.status) for p in publisher.list_promotions("fraud-detector")] == [
        ("fraud-detector/v1", "open"),
        ("fraud-detector/v2", "open"),
    ]
    assert publisher.list_promotions("churn") == []

    merge = publisher.merge_promotion("fraud-detector/v2")
    assert git(remote, "rev-parse", "main") == merge
    assert len(git(remote, "rev-list", "--parents", "-n1", merge).split()) == 3  # a real merge commit
    assert "fraud-detector/v2" in git(remote, "log", "-1", "--format=%B", merge)
    statuses = {p.id: p.status for p in publisher.list_promotions()}
    assert statuses == {"fraud-detector/v1": "open", "fraud-detector/v2": "merged"}

    deployed = deployed_model(publisher, spec)
    assert (deployed.version, deployed.bento_tag, deployed.commit) == ("2", "svc:v2", merge)
    with pytest.raises(GitOpsError, match="already merged"):
        publisher.merge_promotion("fraud-detector/v2")
    with pytest.raises(PromotionNotFoundError):
        publisher.merge_promotion("fraud-detector/v9")
    assert publisher.get_promotion("fraud-detector/v9") is None


def test_merge_conflict_fails_cleanly_and_leaves_base_untouched(spec, remote, publisher):
    open_version(publisher, spec, "1")
    open_version(publisher, spec, "2")  # both from the same base, both change model.version
    publisher.merge_promotion("fraud-detector/v1")
    base = git(remote, "rev-parse", "main")

    with pytest.raises(MergeConflictError, match=rf"conflicts with main .*{spec.manifest_path}.*untouched"):
        publisher.merge_promotion("fraud-detector/v2")
    assert git(remote, "rev-parse", "main") == base
    assert deployed_model(publisher, spec).version == "1"
    assert publisher.get_promotion("fraud-detector/v2").status == "open"

    # re-opening rebuilds the branch on the current main, and then it merges
    open_version(publisher, spec, "2")
    publisher.merge_promotion("fraud-detector/v2")
    assert deployed_model(publisher, spec).version == "2"


def test_close_promotion(spec, remote, publisher):
    open_version(publisher, spec, "1")
    closed = publisher.close_promotion("fraud-detector/v1")
    assert closed.status == "closed" == publisher.get_promotion("fraud-detector/v1").status
    with pytest.raises(GitOpsError, match="closed"):
        publisher.merge_promotion("fraud-detector/v1")
    assert open_version(publisher, spec, "1").status == "open"  # re-opened
    publisher.merge_promotion("fraud-detector/v1")
    with pytest.raises(GitOpsError, match="already merged"):
        publisher.close_promotion("fraud-detector/v1")


# ------------------------------------------------------------------------------------------------ revert


def test_revert_restores_the_previous_manifest(spec, remote, publisher):
    open_version(publisher, spec, "1")
    publisher.merge_promotion("fraud-detector/v1")
    after_v1 = publisher.read_file(spec.manifest_path)
    open_version(publisher, spec, "2")
    merge_v2 = publisher.merge_promotion("fraud-detector/v2")

    revert = publisher.revert_last_promotion("fraud-detector", "staging")
    assert git(remote, "rev-parse", "main") == revert
    assert git(remote, "rev-parse", f"{revert}^") == merge_v2
    assert f"This reverts commit {merge_v2}" in git(remote, "log", "-1", "--format=%B", revert)
    assert publisher.read_file(spec.manifest_path) == after_v1
    assert deployed_model(publisher, spec).version == "1"

    publisher.revert_last_promotion("fraud-detector", "staging")  # then v1 goes too
    assert publisher.read_file(spec.manifest_path) == render_initial_values(spec)
    with pytest.raises(NothingToRevertError, match="no promotion of fraud-detector in staging"):
        publisher.revert_last_promotion("fraud-detector", "staging")

    events = [(e.kind, e.promotion_id, bool(e.reverted_by)) for e in publisher.history("fraud-detector")]
    assert events == [
        ("revert", "fraud-detector/v1", False),
        ("revert", "fraud-detector/v2", False),
        ("promote", "fraud-detector/v2", True),
        ("promote", "fraud-detector/v1", True),
    ]
    # listing still reports both as merged (their tips are in main's history)
    assert {p.status for p in publisher.list_promotions()} == {"merged"}


def test_revert_with_nothing_to_revert(spec, remote, publisher):
    with pytest.raises(NothingToRevertError):
        publisher.revert_last_promotion("fraud-detector", "staging")
    open_version(publisher, spec, "1")  # open, not merged: still nothing to revert
    with pytest.raises(NothingToRevertError):
        publisher.revert_last_promotion("fraud-detector", "staging")
    publisher.merge_promotion("fraud-detector/v1")
    with pytest.raises(NothingToRevertError):
        publisher.revert_last_promotion("fraud-detector", "production")  # other environment


def test_revert_of_a_manual_revert_counts_as_live_again(spec, remote, publisher, tmp_path):
    open_version(publisher, spec, "1")
    publisher.merge_promotion("fraud-detector/v1")
    revert = publisher.revert_last_promotion("fraud-detector", "staging")
    # someone re-applies it by hand: git revert of the revert, pushed to main
    work = tmp_path / "work"
    subprocess.run(["git", "clone", "--quiet", remote, str(work)], check=True)
    env = ["-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", *env, "-C", str(work), "revert", "--no-edit", revert], check=True, capture_output=True)
    subprocess.run(["git", "-C", str(work), "push", "--quiet", "origin", "HEAD:main"], check=True)
    assert deployed_model(publisher, spec).version == "1"

    publisher.revert_last_promotion("fraud-detector", "staging")
    assert deployed_model(publisher, spec) is None


# ------------------------------------------------------------------------------------------------ failures


def reject_pushes(remote: str, refs_pattern: str) -> None:
    hook = Path(remote) / "hooks" / "pre-receive"
    hook.write_text(
        "#!/bin/sh\n"
        "while read old new ref; do\n"
        f'  case "$ref" in {refs_pattern}) echo "policy: $ref is protected" >&2; exit 1;; esac\n'
        "done\n"
    )
    hook.chmod(0o755)


def test_rejected_push_leaves_no_branch(spec, remote, publisher):
    reject_pushes(remote, "refs/heads/promote/*")
    main_before = git(remote, "rev-parse", "main")
    with pytest.raises(PushRejectedError, match="rejected the push of refs/heads/promote/fraud-detector/v1"):
        open_version(publisher, spec, "1")
    assert remote_branches(remote) == ["main"]
    assert git(remote, "rev-parse", "main") == main_before
    assert publisher.list_promotions() == []


def test_rejected_merge_push_leaves_base_untouched(spec, remote, publisher):
    open_version(publisher, spec, "1")
    reject_pushes(remote, "refs/heads/main")
    main_before = git(remote, "rev-parse", "main")
    with pytest.raises(PushRejectedError, match="policy: refs/heads/main is protected"):
        publisher.merge_promotion("fraud-detector/v1")
    assert git(remote, "rev-parse", "main") == main_before
    assert publisher.get_promotion("fraud-detector/v1").status == "open"


# ------------------------------------------------------------------------------------------------ merge styles


@pytest.mark.parametrize("style", STYLES)
def test_promotions_merged_by_hand_any_way_are_history_and_revert_the_newest(spec, remote, publisher, tmp_path, style):
    """A repository that allows only squash (or rebase) merges: a person lands the branch with the git CLI."""
    # v2 squashed with a message of their own: no trailers, only the record file says what it promoted
    messages = {"fraud-detector/v2": "Promote v2 (squashed by hand)"} if style == "squash" else {}
    promote_twice_then_revert(
        publisher,
        spec,
        style,
        remote,
        tmp_path,
        lambda version: open_version(publisher, spec, version),
        lambda pid: merge_by_hand(remote, pid, style, tmp_path, messages.get(pid)),
    )
    with pytest.raises(GitOpsError, match="already merged"):
        publisher.merge_promotion("fraud-detector/v1")
    publisher.revert_last_promotion("fraud-detector", "staging")  # then v1, also landed by hand
    assert deployed_model(publisher, spec) is None
    with pytest.raises(NothingToRevertError):
        publisher.revert_last_promotion("fraud-detector", "staging")
