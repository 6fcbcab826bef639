"""The promotion-history algorithm on hand-made commits: no git, no HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ct_pipeline.domain.history import CommitInfo, GitOpsEvent, RevertIndex, production_periods, promotion_events
from ct_pipeline.domain.promotion import (
    parse_trailers,
    promotion_files,
    promotion_message,
    record_path,
    revert_message,
    trailers,
)
from ct_pipeline.domain.records import DeployedModel, PromotionRecord

MANIFEST = "apps/staging/m/values.yaml"
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def sha(name: str) -> str:
    return (name.encode().hex() + "0" * 40)[:40]


def record(version: str, environment: str = "staging") -> PromotionRecord:
    return PromotionRecord(
        id=f"m/v{version}",
        model="m",
        version=version,
        environment=environment,
        branch=f"promote/m/v{version}",
        title=f"Promote m v{version} to {environment}",
        body=f"Promote v{version}.\n",
        manifest_path=MANIFEST,
        created_at=T0,
    )


def commit(name: str, parents: list[str], minute: int, message: str, paths: list[str] | None = None) -> CommitInfo:
    return CommitInfo(sha(name), [sha(p) for p in parents], T0 + timedelta(minutes=minute), message, paths)


def files_of(*records: tuple[str, PromotionRecord]):
    """read_file over {(commit name, path): bytes} built from promotion records."""
    store = {}
    for name, rec in records:
        for path, data in promotion_files(rec).items():
            store[(sha(name), path)] = data
    return lambda commit_sha, path: store.get((commit_sha, path))


def no_files(commit_sha: str, path: str) -> bytes | None:
    return None


def summary(events: list[GitOpsEvent]) -> list[tuple]:
    return [(e.kind, e.version, e.commit, e.reverted_by, e.reverts) for e in events]


def promoted(name: str, parents: list[str], minute: int, rec: PromotionRecord) -> CommitInfo:
    """A promotion branch's own commit (what a rebase or fast-forward puts on the base)."""
    return commit(name, parents, minute, promotion_message(rec), [MANIFEST, record_path(rec.id)])


# ------------------------------------------------------------------------------------------------ merge styles


def test_a_merge_commit_is_described_by_its_second_parent():
    branch = promoted("b1", ["init"], 1, record("1"))
    merge = commit("m1", ["init", "b1"], 2, "Merge pull request #1 from acme/some-branch", None)
    chain = [merge, commit("init", [], 0, "Initialize")]
    events = promotion_events(chain, [(branch.sha, branch.message)], no_files)
    assert summary(events) == [("promote", "1", sha("m1"), None, None)]
    assert (events[0].environment, events[0].manifest_path, events[0].at) == ("staging", MANIFEST, merge.at)
    assert events[0].subject == "Merge pull request #1 from acme/some-branch"


def test_a_merge_without_trailers_is_found_by_branch_name_and_record():
    side = commit("b1", ["init"], 1, "hand-made commit, no trailers")
    merge = commit("m1", ["init", "b1"], 2, "Merge pull request #7 from acme/promote/m/v1\n\nPromote m v1")
    events = promotion_events([merge], [(side.sha, side.message)], files_of(("m1", record("1"))))
    assert summary(events) == [("promote", "1", sha("m1"), None, None)]


@pytest.mark.parametrize(
    "message",
    [
        # GitHub's default squash message: "<title> (#n)" and every commit's message, the subject bulleted
        "Promote m v1 to staging (#3)\n\n* " + promotion_message(record("1")),
        # git merge --squash: "Squashed commit of the following", the branch commit indented
        "Squashed commit of the following:\n\ncommit abc\nAuthor: a <a@b>\n\n"
        + "".join(f"    {line}\n" for line in promotion_message(record("1")).splitlines()),
    ],
    ids=["github", "git"],
)
def test_a_squash_merge_keeps_the_trailers(message):
    squash = commit("s1", ["init"], 1, message, None)
    events = promotion_events([squash], [], no_files)
    assert summary(events) == [("promote", "1", sha("s1"), None, None)]
    assert events[0].manifest_path == MANIFEST


def test_a_squash_without_trailers_is_found_by_the_record_file_it_changes():
    read = files_of(("s1", record("1")), ("x1", record("1")))
    squash = commit("s1", ["init"], 2, "Promote v1 (squashed by hand)", [MANIFEST, record_path("m/v1"), "x"])
    later = commit("x1", ["s1"], 3, "Edit the README", ["README.md"])  # the record is still there, unchanged
    assert summary(promotion_events([later, squash], [], read)) == [("promote", "1", sha("s1"), None, None)]
    # a record file changed without its values file is not a promotion
    odd = commit("s1", ["init"], 2, "Edit a record", [record_path("m/v1")])
    assert promotion_events([odd], [], read) == []


def test_changed_paths_are_asked_for_lazily_and_only_when_needed():
    asked = []

    def changed(commit_sha: str) -> list[str] | None:
        asked.append(commit_sha)
        return [MANIFEST, record_path("m/v1")] if commit_sha == sha("s1") else None

    chain = [
        commit("s1", ["r1"], 3, "Promote m v1 to staging (#2)\n\nPromote v1."),
        promoted("r1", ["init"], 2, record("0")),  # trailers: no need to ask
        commit("init", [], 0, "Initialize"),
    ]
    events = promotion_events(chain, [], files_of(("s1", record("1"))), changed_paths=changed)
    assert [(e.version, e.commit) for e in events] == [("1", sha("s1")), ("0", sha("r1"))]
    assert asked == [sha("s1"), sha("init")]


def test_a_rebase_merge_is_the_branch_commit_on_the_base():
    chain = [promoted("r2", ["r1"], 2, record("2")), promoted("r1", ["init"], 1, record("1"))]
    assert summary(promotion_events(chain, [], no_files)) == [
        ("promote", "2", sha("r2"), None, None),
        ("promote", "1", sha("r1"), None, None),
    ]


# ------------------------------------------------------------------------------------------------ reverts


def event_for(name: str, version: str) -> GitOpsEvent:
    return GitOpsEvent(
        kind="promote",
        commit=sha(name),
        promotion_id=f"m/v{version}",
        model="m",
        version=version,
        environment="staging",
        manifest_path=MANIFEST,
        at=T0,
        subject=f"Promote m v{version}",
    )


def test_a_direct_revert_marks_the_promotion_and_is_not_a_promotion():
    rev = commit("v2", ["p2"], 3, revert_message(event_for("p2", "2"), "m", "staging", "v1"), [MANIFEST])
    chain = [rev, promoted("p2", ["p1"], 2, record("2")), promoted("p1", ["init"], 1, record("1"))]
    events = promotion_events(chain, [], no_files)
    assert summary(events) == [
        ("revert", "2", sha("v2"), None, sha("p2")),
        ("promote", "2", sha("p2"), sha("v2"), None),
        ("promote", "1", sha("p1"), None, None),
    ]
    assert events[0].at == rev.at and events[0].subject == "Revert promotion m/v2 in staging"


def test_a_merged_revert_pull_request_is_a_revert_at_the_merge():
    revert = commit("rv", ["p1"], 2, revert_message(event_for("p1", "1"), "m", "staging", "nothing deployed"))
    merge = commit("mv", ["p1", "rv"], 4, "Merge rollback of m/v1 in staging", [MANIFEST, record_path("m/v1")])
    chain = [merge, promoted("p1", ["init"], 1, record("1"))]
    events = promotion_events(chain, [(revert.sha, revert.message)], files_of(("mv", record("1"))))
    assert summary(events) == [
        ("revert", "1", sha("rv"), None, sha("p1")),
        ("promote", "1", sha("p1"), sha("rv"), None),
    ]
    assert events[0].at == merge.at  # when it landed on the base


def test_a_squashed_revert_with_the_promotions_trailers_is_still_a_revert():
    message = "Revert promotion m/v1 in staging (#4)\n\n* " + revert_message(event_for("p1", "1"), "m", "staging", "x")
    chain = [commit("sv", ["p1"], 2, message, None), promoted("p1", ["init"], 1, record("1"))]
    assert [e.kind for e in promotion_events(chain, [], no_files)] == ["revert", "promote"]


def test_a_revert_named_only_by_its_trailer_counts():
    message = "Roll back m\n\n" + trailers(promotion_id="m/v1", reverts=sha("p1"))
    chain = [commit("rv", ["p1"], 2, message), promoted("p1", ["init"], 1, record("1"))]
    assert summary(promotion_events(chain, [], no_files))[1] == ("promote", "1", sha("p1"), sha("rv"), None)


def test_reverting_the_revert_makes_the_promotion_live_again():
    rev = commit("rv", ["p1"], 2, revert_message(event_for("p1", "1"), "m", "staging", "x"))
    again = commit("ag", ["rv"], 3, f'Revert "Revert promotion m/v1"\n\nThis reverts commit {rev.sha}.\n')
    chain = [again, rev, promoted("p1", ["init"], 1, record("1"))]
    events = promotion_events(chain, [], no_files)
    assert summary(events) == [
        ("revert", "1", sha("rv"), sha("ag"), sha("p1")),
        ("promote", "1", sha("p1"), None, None),
    ]
    index = RevertIndex.from_messages([(c.sha, c.message) for c in chain])
    assert index.live(sha("p1")) and not index.live(sha("rv"))


# ------------------------------------------------------------------------------------------------ periods


def test_production_periods_in_time_order_with_rolled_back_versions():
    rev = commit("v2", ["p2"], 2, revert_message(event_for("p2", "2"), "m", "staging", "v1"))
    chain = [
        rev,
        promoted("p2", ["p1"], 1, record("2")),  # same minute as v1: the branch order decides
        promoted("p1", ["px"], 1, record("1")),
        promoted("px", ["init"], 0, record("9", environment="production")),
    ]
    events = promotion_events(chain, [], no_files)
    deployed = {sha("v2"): "1", sha("p2"): "2", sha("p1"): "1"}

    def read_manifest(commit_sha: str) -> DeployedModel | None:
        version = deployed.get(commit_sha)
        return DeployedModel(model="m", environment="staging", version=version) if version else None

    periods, rolled_back = production_periods(events, "staging", read_manifest)
    assert [(p.version, p.cause, p.commit) for p in periods] == [
        ("1", "promote", sha("p1")),
        ("2", "promote", sha("p2")),
        ("1", "revert", sha("v2")),
    ]
    assert [p.until for p in periods] == [periods[1].since, periods[2].since, None]
    assert rolled_back == {"2": sha("v2")}
    newest, _ = production_periods(events, "staging", read_manifest, limit=2)
    assert [p.commit for p in newest] == [sha("p2"), sha("v2")]
    assert production_periods(events, "staging", read_manifest, model="other") == ([], {})


def test_trailers_round_trip_and_refuse_unknown_keys():
    text = trailers(promotion_id="m/v1", model="m", environment="staging", manifest=MANIFEST, reverts=None)
    assert text.splitlines()[0] == "Promotion-Id: m/v1" and "Reverts-Commit" not in text
    assert parse_trailers("subject\n\nbody\n\n" + text) == {
        "promotion_id": "m/v1",
        "model": "m",
        "environment": "staging",
        "manifest": MANIFEST,
    }
    with pytest.raises(ValueError, match="unknown trailer"):
        trailers(promotion="m/v1")
