"""The three ways a promotion lands on the base branch (merge commit, squash, rebase), for both publishers' tests.

Local merges are made as a person merging by hand would: the git CLI on a clone of the bare remote, then a push.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

from ct_pipeline.adapters.publishers import deployed_model
from ct_pipeline.domain.history import production_periods
from ct_pipeline.domain.manifest import read_deployed
from ct_pipeline.domain.promotion import promotion_branch

STYLES = ("merge", "squash", "rebase")
_ID = ["-c", "user.name=Hand", "-c", "user.email=hand@example.com", "-c", "commit.gpgsign=false"]


def sh(work: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *_ID, "-C", str(work), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def parent_count(git_dir: str | Path, sha: str) -> int:
    out = subprocess.run(
        ["git", f"--git-dir={git_dir}", "rev-list", "--parents", "-n1", sha], capture_output=True, text=True, check=True
    ).stdout.split()
    return len(out) - 1


def _clone(remote: str | Path, tmp: Path) -> Path:
    work = tmp / f"hand-{uuid.uuid4().hex[:8]}"
    subprocess.run(["git", "clone", "--quiet", str(remote), str(work)], check=True, capture_output=True)
    return work


def merge_by_hand(remote: str | Path, pid: str, style: str, tmp: Path, message: str | None = None) -> str:
    """Land promotion ``pid`` on main of ``remote`` the ``style`` way with the git CLI; returns main's new tip.

    squash without ``message`` keeps git's "Squashed commit of the following" message (the branch commit's message,
    trailers included, indented); with one, only the record file tells what was promoted.
    """
    work = _clone(remote, tmp)
    branch = f"origin/{promotion_branch(pid)}"
    if style == "merge":
        sh(work, "merge", "--no-ff", "--no-edit", branch)
    elif style == "squash":
        sh(work, "merge", "--squash", branch)
        sh(work, "commit", "--quiet", *(["-m", message] if message else ["--no-edit"]))
    elif style == "rebase":
        sh(work, "checkout", "--quiet", "-B", "landing", branch)
        sh(work, "rebase", "--quiet", "main")
        sh(work, "checkout", "--quiet", "main")
        sh(work, "merge", "--quiet", "--ff-only", "landing")
    else:
        raise ValueError(style)
    sh(work, "push", "--quiet", "origin", "HEAD:main")
    return sh(work, "rev-parse", "HEAD")


def unrelated_commit(remote: str | Path, tmp: Path) -> str:
    """Someone else changes main meanwhile (so a rebase gets a new sha)."""
    work = _clone(remote, tmp)
    (work / "NOTES.md").write_text(f"note {uuid.uuid4().hex}\n")
    sh(work, "add", "NOTES.md")
    sh(work, "commit", "--quiet", "-m", "Unrelated change")
    sh(work, "push", "--quiet", "origin", "HEAD:main")
    return sh(work, "rev-parse", "HEAD")


def periods_of(pub, spec) -> tuple[list[tuple[str | None, str]], list[str]]:
    """(version, cause) of each production period, and the rolled-back versions, read from ``pub``'s history."""

    def read_manifest(commit: str):
        text = pub.read_file(spec.manifest_path, ref=commit)
        return read_deployed(text, spec) if text else None

    periods, rolled_back = production_periods(pub.history(spec.name), spec.gitops.environment, read_manifest)
    return [(p.version, p.cause) for p in periods], sorted(rolled_back)


def promote_twice_then_revert(
    pub,
    spec,
    style: str,
    remote: str | Path,
    tmp: Path,
    open_version: Callable[[str], object],
    merge: Callable[[str], str],
) -> tuple[list[tuple[str | None, str]], list[str]]:
    """v1 then v2 land ``style``; the rollback must revert v2 (the newest), not v1. Returns :func:`periods_of`."""
    env = spec.gitops.environment
    open_version("1")
    first = merge(f"{spec.name}/v1")
    assert parent_count(remote, first) == (2 if style == "merge" else 1)
    history = pub.history(spec.name)
    assert [(e.kind, e.version, e.environment, e.commit) for e in history] == [("promote", "1", env, first)]
    assert pub.get_promotion(f"{spec.name}/v1").status == "merged"

    open_version("2")
    unrelated_commit(remote, tmp)
    second = merge(f"{spec.name}/v2")
    history = pub.history(spec.name)
    assert [(e.kind, e.version, e.commit) for e in history] == [("promote", "2", second), ("promote", "1", first)]
    assert pub.get_promotion(f"{spec.name}/v2").status == "merged"
    assert deployed_model(pub, spec).version == "2"

    pub.revert_last_promotion(spec.name, env)
    assert deployed_model(pub, spec).version == "1"
    history = pub.history(spec.name)
    assert [(e.kind, e.version, bool(e.reverted_by)) for e in history] == [
        ("revert", "2", False),
        ("promote", "2", True),
        ("promote", "1", False),
    ]
    assert history[0].reverts == second and history[1].reverted_by == history[0].commit
    periods = periods_of(pub, spec)
    assert periods == ([("1", "promote"), ("2", "promote"), ("1", "revert")], ["2"])
    return periods
