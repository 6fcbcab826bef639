"""Reading promotions and rollbacks back from the base branch's history (pure: no I/O).

Every publisher hands the same algorithm the same neutral data: the first-parent chain of the base branch
(:class:`CommitInfo`, newest first), the messages of every commit reachable from it, and a way to read a file at a
commit. So the local git publisher and the GitHub publisher agree on what was promoted and what was reverted,
whichever way a promotion was merged:

- **merge commit** (two parents): the promotion branch's commit, parent 2, carries the trailers;
- **squash merge** (one parent): the squashed message contains the branch commit's message, trailers included
  (git's "Squashed commit of the following" and GitHub's default both do), and/or the commit changes
  ``promotions/<id>/record.json`` together with the values file;
- **rebase merge** / fast-forward (one parent): the branch commit itself, perhaps with a new sha, on the base.

A commit that reverts another ("This reverts commit X", or the ``Reverts-Commit`` trailer), and the merge of a
branch ending in one, is a revert, never a promotion, even though a rollback's message names its promotion.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from ct_pipeline.domain.promotion import (
    BRANCH_PREFIX,
    parse_promotion_id,
    parse_record_file,
    parse_trailers,
    record_path,
    record_path_id,
)
from ct_pipeline.domain.records import DeployedModel
from ct_pipeline.errors import GitOpsError

_REVERTS_RE = re.compile(r"This reverts commit ([0-9a-f]{40})")
# Merge messages without trailers (a branch merged by hand or GitHub's default merge title) still name the branch.
_MERGE_BRANCH_RE = re.compile(r"(?:from [^/\s]+/|Merge branch ')(" + re.escape(BRANCH_PREFIX) + r"[^'\s]+)")

ReadFile = Callable[[str, str], bytes | None]
"""``read_file(commit, path)``: the file's content at that commit, None when it does not exist there."""


@dataclass(frozen=True)
class CommitInfo:
    """One commit as every publisher can describe it.

    ``changed_paths`` are the paths changed against the first parent; None when the adapter does not know them
    without extra requests (then trailers, or the record file named by them, have to do).
    """

    sha: str
    parents: list[str]
    at: datetime
    message: str
    changed_paths: list[str] | None = None

    @property
    def subject(self) -> str:
        return self.message.split("\n", 1)[0]


class GitOpsEvent(BaseModel):
    """One promotion-related commit on the base branch (see :meth:`ct_pipeline.ports.GitPublisher.history`)."""

    kind: Literal["promote", "revert"]
    commit: str
    promotion_id: str
    model: str
    version: str
    environment: str
    manifest_path: str
    at: datetime
    subject: str
    reverted_by: str | None = None
    reverts: str | None = None


class RevertIndex:
    """Which commit reverts which, and whether a revert was itself undone.

    A revert of a revert makes the original live again, so ``reverted_by`` follows the chain.
    """

    def __init__(self) -> None:
        self.reverters: dict[str, list[str]] = {}
        self.reverts_of: dict[str, str] = {}
        self._live: dict[str, bool] = {}

    @classmethod
    def from_messages(cls, commits: Iterable[tuple[str, str]]) -> RevertIndex:
        index = cls()
        for sha, message in commits:
            targets = list(dict.fromkeys(_REVERTS_RE.findall(message)))
            trailer = parse_trailers(message).get("reverts")
            if trailer and re.fullmatch(r"[0-9a-f]{40}", trailer) and trailer not in targets:
                targets.append(trailer)
            for target in targets:
                if target == sha:
                    continue
                index.reverters.setdefault(target, []).append(sha)
                index.reverts_of.setdefault(sha, target)
        return index

    def live(self, sha: str, depth: int = 0) -> bool:
        if sha not in self._live:
            self._live[sha] = depth > 50 or not any(self.live(r, depth + 1) for r in self.reverters.get(sha, ()))
        return self._live[sha]

    def reverted_by(self, sha: str) -> str | None:
        return next((r for r in self.reverters.get(sha, ()) if self.live(r)), None)


def _promotion_of(
    commit: CommitInfo,
    side_message: str | None,
    read_file: ReadFile,
    changed_paths: Callable[[str], list[str] | None] | None,
) -> tuple[str, str, str] | None:
    """(promotion id, environment, manifest path) when ``commit`` lands a promotion on the base branch."""
    info = parse_trailers(commit.message)
    if side_message is not None:
        side = parse_trailers(side_message)
        if side.get("promotion_id"):
            info = {**info, **side}  # the branch's own commit describes the promotion best
    pid = info.get("promotion_id")
    if pid is None and side_message is not None and (m := _MERGE_BRANCH_RE.search(commit.message)):
        pid = m.group(1)[len(BRANCH_PREFIX) :]
    try:
        parse_promotion_id(pid or "")
    except ValueError:
        pid = None
    if pid and info.get("environment") and info.get("manifest"):
        return pid, info["environment"], info["manifest"]

    # No (complete) trailers: a promotion changes its record file together with the values file it names.
    paths = commit.changed_paths
    if paths is None and changed_paths is not None:
        paths = changed_paths(commit.sha)
    if paths is not None:
        ids = [i for p in paths if (i := record_path_id(p)) is not None]
        if pid in ids:
            ids = [pid]
    elif pid is not None:
        ids = [pid]  # the message names it; the record says where
    else:
        return None
    for candidate in ids:
        data = read_file(commit.sha, record_path(candidate))
        if data is None:
            continue
        try:
            record, _ = parse_record_file(data)
            parse_promotion_id(record.id)
        except (GitOpsError, ValueError):
            continue
        if record.id != candidate or (paths is not None and record.manifest_path not in paths):
            continue
        return record.id, record.environment, record.manifest_path
    return None


def promotion_events(
    chain: Iterable[CommitInfo],
    messages: Iterable[tuple[str, str]],
    read_file: ReadFile,
    changed_paths: Callable[[str], list[str] | None] | None = None,
) -> list[GitOpsEvent]:
    """Promotions and their reverts on the base branch, newest first.

    ``chain`` is the base branch's first-parent chain, newest first; ``messages`` the (sha, message) of every
    commit reachable from it (merged branches too: that is where merge-commit promotions and revert pull requests
    keep their messages). ``changed_paths(sha)``, when given, is asked lazily for a chain commit without usable
    trailers whose ``changed_paths`` is None. A revert that arrived through a merge is reported at that merge's
    place and time, under its own sha (the sha ``reverted_by`` names).
    """
    chain = list(chain)
    message_of = dict(messages)
    for commit in chain:
        message_of.setdefault(commit.sha, commit.message)
    index = RevertIndex.from_messages(message_of.items())

    position: dict[str, int] = {}
    events: list[GitOpsEvent] = []
    promos: dict[str, GitOpsEvent] = {}
    for i, commit in enumerate(chain):
        position.setdefault(commit.sha, i)
        side = commit.parents[1] if len(commit.parents) > 1 else None
        for parent in commit.parents[1:]:
            position.setdefault(parent, i)  # what a merge brought in sits where the merge is
        if commit.sha in index.reverts_of or (side is not None and side in index.reverts_of):
            continue  # a revert (direct, squashed, rebased or merged): not a promotion
        side_message = message_of.get(side, "") if side is not None else None
        found = _promotion_of(commit, side_message, read_file, changed_paths)
        if found is None:
            continue
        pid, environment, manifest = found
        model, version = parse_promotion_id(pid)
        event = GitOpsEvent(
            kind="promote",
            commit=commit.sha,
            promotion_id=pid,
            model=model,
            version=version,
            environment=environment,
            manifest_path=manifest,
            at=commit.at,
            subject=commit.subject,
            reverted_by=index.reverted_by(commit.sha),
        )
        promos[commit.sha] = event
        events.append(event)

    for sha, target in index.reverts_of.items():
        if target not in promos or sha not in position:
            continue
        landed = chain[position[sha]]
        events.append(
            promos[target].model_copy(
                update={
                    "kind": "revert",
                    "commit": sha,
                    "at": landed.at,
                    "subject": message_of.get(sha, "").split("\n", 1)[0],
                    "reverted_by": index.reverted_by(sha),
                    "reverts": target,
                }
            )
        )
    return sorted(events, key=lambda e: (position[e.commit], e.kind != "revert"))


# --------------------------------------------------------------------------------------------- production periods


@dataclass(frozen=True)
class ProductionPeriod:
    """Version ``version`` was what ``environment``'s base branch deployed from ``since`` until ``until``."""

    version: str | None
    since: datetime
    until: datetime | None
    commit: str
    cause: str  # "promote" or "revert"


def production_periods(
    events: Iterable[GitOpsEvent],
    environment: str,
    read_manifest: Callable[[str], DeployedModel | None],
    *,
    model: str | None = None,
    limit: int | None = None,
) -> tuple[list[ProductionPeriod], dict[str, str]]:
    """(periods oldest first, {rolled-back version: reverting commit}) from ``events`` (newest first, as
    ``history()`` returns them) of ``environment``; ``read_manifest(commit)`` is what that commit deploys.

    Each period ends when the next begins; ``limit`` keeps the newest events only.
    """
    chosen = [e for e in events if e.environment == environment and (model is None or e.model == model)]
    if limit is not None:
        chosen = chosen[:limit]
    periods: list[ProductionPeriod] = []
    rolled_back: dict[str, str] = {}
    # oldest first; commits of the same second keep their order on the branch
    for event in sorted(reversed(chosen), key=lambda e: e.at):
        deployed = read_manifest(event.commit)
        if periods:
            periods[-1] = replace(periods[-1], until=event.at)
        periods.append(
            ProductionPeriod(deployed.version if deployed else None, event.at, None, event.commit, event.kind)
        )
        if event.kind == "promote" and event.reverted_by:
            rolled_back[event.version] = event.reverted_by
    return periods, rolled_back


__all__ = [
    "CommitInfo",
    "GitOpsEvent",
    "ProductionPeriod",
    "ReadFile",
    "RevertIndex",
    "production_periods",
    "promotion_events",
]
