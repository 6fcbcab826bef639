"""Promotions as changes to a GitOps repository.

A promotion ``<model>/v<version>`` is a branch ``promote/<model>/v<version>`` that starts at the base branch
and carries one commit: the bumped values file plus the promotion record next to it
(``promotions/<model>/v<version>/record.json`` and ``PR.md``). A person merges it (``--no-ff``: one merge
commit on the base branch per promotion); rollback reverts that merge commit. Everything the publisher
needs to know later (status, what a merge promoted, what is already reverted) is read back from git itself,
so the same layout works when the remote is GitHub and the branch is a pull request.

:class:`GitPublisher` is the protocol; :class:`LocalGitPublisher` implements it with the ``git`` CLI
against any git remote (the embedded default is a local bare repository). Each operation works in a
fresh temporary clone and changes the remote only through one final push, so an operation that fails
half-way leaves the remote as it was.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel

from ct_pipeline.domain.manifest import ManifestError, read_deployed, render_initial_values
from ct_pipeline.domain.records import DeployedModel, PromotionRecord
from ct_pipeline.errors import (
    GitOpsError,
    MergeConflictError,
    NothingToRevertError,
    PromotionNotFoundError,
    PushRejectedError,
    RemoteError,
)

if TYPE_CHECKING:
    from ct_pipeline.domain.spec import ModelSpec
    from ct_pipeline.settings import Settings

log = logging.getLogger(__name__)

BRANCH_PREFIX = "promote/"
RECORDS_DIR = "promotions"
RECORD_FORMAT = "ct-pipeline/promotion-record/v1"
DEFAULT_SEED_DIR = Path(__file__).resolve().parents[1] / "gitops"

_MODEL_RE = r"[a-z0-9][a-z0-9-]{0,62}"
_VERSION_RE = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_ID_RE = re.compile(rf"^(?P<model>{_MODEL_RE})/v(?P<version>{_VERSION_RE})$")
_REVERTS_RE = re.compile(r"This reverts commit ([0-9a-f]{40})")
_GIT_TIMEOUT = 300














# --------------------------------------------------------------------------------------------- naming


def promotion_id(model: str, version: str) -> str:
    pid = f"{model}/v{version}"
    parse_promotion_id(pid)
    return pid


def parse_promotion_id(pid: str) -> tuple[str, str]:
    """``'fraud-detector/v3'`` -> ``('fraud-detector', '3')``; raises ValueError for anything else."""
    match = _ID_RE.match(pid)
    if not match or ".." in pid or pid.endswith(".lock"):
        raise ValueError(f"promotion id must look like '<model>/v<version>', got {pid!r}")
    return match.group("model"), match.group("version")


def promotion_branch(pid: str) -> str:
    parse_promotion_id(pid)
    return BRANCH_PREFIX + pid


def record_path(pid: str) -> str:
    return f"{RECORDS_DIR}/{pid}/record.json"


def body_path(pid: str) -> str:
    return f"{RECORDS_DIR}/{pid}/PR.md"


def promotion_files(record: PromotionRecord, **attachments: Any) -> dict[str, bytes]:
    """The record files of a promotion: ``record.json`` (the record plus attachments such as the gate
    decision and the Bento) and ``PR.md`` (the body, what a reviewer reads)."""
    stored = record.model_copy(update={"commit": None, "status": "open", "url": None})
    doc: dict[str, Any] = {"format": RECORD_FORMAT, "promotion": stored.to_json_dict()}
    for key, value in attachments.items():
        doc[key] = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return {
        record_path(record.id): (json.dumps(doc, indent=2, sort_keys=False) + "\n").encode(),
        body_path(record.id): (record.body.rstrip("\n") + "\n").encode(),
    }


def parse_record_file(data: bytes | str) -> tuple[PromotionRecord, dict[str, Any]]:
    """``record.json`` -> (the stored PromotionRecord, the whole document)."""
    doc = json.loads(data)
    if not isinstance(doc, dict) or "promotion" not in doc:
        raise GitOpsError("not a promotion record file (no 'promotion' key)")
    return PromotionRecord.model_validate(doc["promotion"]), doc


def checked_promotion(
    record: PromotionRecord, files: Mapping[str, bytes], base_branch: str
) -> tuple[PromotionRecord, dict[str, bytes]]:
    """Validate a promotion before any publisher touches its remote; add the record files if missing."""
    model, version = parse_promotion_id(record.id)
    if (record.model, record.version) != (model, version):
        raise GitOpsError(f"promotion id {record.id!r} does not match model {record.model!r} v{record.version}")
    branch = promotion_branch(record.id)
    if record.branch != branch:
        raise GitOpsError(f"promotion {record.id} must use branch {branch!r}, not {record.branch!r}")
    if record.base_branch != base_branch:
        raise GitOpsError(
            f"promotion {record.id} targets base {record.base_branch!r} but the publisher's base is {base_branch!r}"
        )
    paths = {_valid_repo_path(p): data for p, data in files.items()}
    if record_path(record.id) not in paths:
        record = record.model_copy(update={"files": sorted({*paths, record_path(record.id), body_path(record.id)})})
        paths.update(promotion_files(record))
    return record.model_copy(update={"files": sorted(paths)}), paths


class GitOpsEvent(BaseModel):
    """One promotion-related commit on the base branch (see :meth:`GitPublisher.history`)."""

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
    """Which commit reverts which ("This reverts commit X" lines), and whether a revert was itself undone.

    A revert of a revert makes the original live again, so ``reverted_by`` follows the chain.
    """

    def __init__(self) -> None:
        self.reverters: dict[str, list[str]] = {}
        self.reverts_of: dict[str, str] = {}
        self._live: dict[str, bool] = {}

    @classmethod
    def from_messages(cls, commits) -> RevertIndex:
        index = cls()
        for sha, message in commits:
            for target in _REVERTS_RE.findall(message):
                index.reverters.setdefault(target, []).append(sha)
                index.reverts_of.setdefault(sha, target)
        return index

    def live(self, sha: str, depth: int = 0) -> bool:
        if sha not in self._live:
            self._live[sha] = depth > 50 or not any(self.live(r, depth + 1) for r in self.reverters.get(sha, ()))
        return self._live[sha]

    def reverted_by(self, sha: str) -> str | None:
        return next((r for r in self.reverters.get(sha, ()) if self.live(r)), None)


def revert_message(target: GitOpsEvent, model: str, environment: str, restores: str) -> str:
    """The commit message of a rollback, the same from every publisher (its trailers make it findable)."""
    trailers = _trailers(
        promotion_id=target.promotion_id,
        model=model,
        environment=environment,
        manifest=target.manifest_path,
        reverts=target.commit,
    )
    return (
        f"Revert promotion {target.promotion_id} in {environment}\n\n"
        f"This reverts commit {target.commit}.\n"
        f'{target.manifest_path} goes back to {restores} (before "{target.subject}").\n\n' + trailers + "\n"
    )


# --------------------------------------------------------------------------------------------- protocol


@runtime_checkable
class GitPublisher(Protocol):
    """Where promotions are proposed, merged and reverted (local git today, GitHub pull requests later)."""

    base_branch: str

    def read_file(self, path: str, ref: str | None = None) -> str | None:
        """The file at ``ref`` (branch or commit; default the base branch), or None if it does not exist."""
        ...

    def head(self, ref: str | None = None) -> str:
        """Commit sha of branch ``ref`` (default the base branch)."""
        ...

    def open_promotion(self, record: PromotionRecord, files: Mapping[str, bytes]) -> PromotionRecord:
        """Propose ``files`` on the promotion's branch, started from the current base; re-opening the
        same id replaces that branch's content (one branch per id, never two)."""
        ...

    def list_promotions(self, model: str | None = None) -> list[PromotionRecord]: ...

    def get_promotion(self, promotion_id: str) -> PromotionRecord | None: ...

    def merge_promotion(self, promotion_id: str) -> str:
        """Merge (``--no-ff``) into the base branch; returns the merge commit."""
        ...

    def close_promotion(self, promotion_id: str) -> PromotionRecord:
        """Decline an open promotion without merging it (re-opening the id opens it again)."""
        ...

    def revert_last_promotion(self, model: str, environment: str) -> str:
        """Revert the newest not yet reverted promotion merge of ``model`` in ``environment``."""
        ...

    def history(self, model: str | None = None) -> list[GitOpsEvent]:
        """Promotion merges and their reverts on the base branch, newest first."""
        ...


# --------------------------------------------------------------------------------------------- git plumbing


def _is_local(url: str) -> bool:
    if url.startswith("file://"):
        return True
    if "://" in url:
        return False
    return not re.match(r"^[\w.-]+@[\w.-]+:", url)  # scp-like user@host:path


def _local_path(url: str) -> Path:
    return Path(url[len("file://") :] if url.startswith("file://") else url).expanduser()


def _clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    # Variables that would point git at another repository (e.g. when run from inside a git hook).
    drop = {
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_NAMESPACE",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_COMMON_DIR",
        "GIT_PREFIX",
    }
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update({"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "LANG": "C"})
    env.update(extra)
    return env


_GIT_CONFIG = tuple(
    arg
    for setting in (
        "commit.gpgsign=false",
        "tag.gpgsign=false",
        "core.autocrlf=false",
        "core.quotePath=false",
        "advice.detachedHead=false",
        "merge.conflictStyle=merge",
        "rerere.enabled=false",
        # No client-side hooks in the temporary clones (the remote's own hooks still run on push).
        f"core.hooksPath={os.devnull}",
    )
    for arg in ("-c", setting)
)


class _Repo:
    """A temporary bare clone of the remote (``origin``; its branches are the clone's ``refs/heads``) with
    a separate work tree for the operations that need one (checkout, merge, revert)."""

    def __init__(self, git_dir: Path, work_tree: Path, publisher: LocalGitPublisher):
        self.git_dir = git_dir
        self.path = work_tree
        self.pub = publisher

    def run(self, *args: str, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
        where = (f"--git-dir={self.git_dir}", f"--work-tree={self.path}")
        return self.pub._git(*where, *args, cwd=self.path, input=input, check=check)

    def out(self, *args: str) -> str:
        return self.run(*args).stdout.decode().strip()

    def rev(self, ref: str) -> str | None:
        res = self.run("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
        return res.stdout.decode().strip() if res.returncode == 0 else None

    def remote_ref(self, branch: str) -> str:
        return f"refs/heads/{branch}"

    def branch_tip(self, branch: str) -> str | None:
        return self.rev(self.remote_ref(branch))

    def base_tip(self) -> str:
        tip = self.branch_tip(self.pub.base_branch)
        if tip is None:
            raise RemoteError(
                f"base branch {self.pub.base_branch!r} does not exist on GitOps remote "
                f"{self.pub.remote_url}; initialize the repository first "
                "(ct_pipeline.gitops.init_local_remote / `ctpipe gitops init`)"
            )
        return tip

    def show(self, rev: str, path: str) -> bytes | None:
        res = self.run("cat-file", "blob", f"{rev}:{path}", check=False)
        return res.stdout if res.returncode == 0 else None

    def is_ancestor(self, a: str, b: str) -> bool:
        return self.run("merge-base", "--is-ancestor", a, b, check=False).returncode == 0

    def checkout(self, rev: str) -> None:
        self.run("checkout", "--quiet", "--force", "--detach", rev)

    def write_files(self, files: Mapping[str, bytes]) -> None:
        for rel, data in files.items():
            target = self.path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        self.run("add", "--all", "--", *files.keys())

    def has_staged_changes(self) -> bool:
        return self.run("diff", "--cached", "--quiet", check=False).returncode != 0

    def commit(self, message: str) -> str:
        self.run("commit", "--quiet", "--no-verify", "--cleanup=verbatim", "-F", "-", input=message.encode())
        return self.out("rev-parse", "HEAD")

    def push(self, refspec: str, *options: str) -> None:
        res = self.run("push", "--quiet", "--porcelain", *options, "origin", refspec, check=False)
        if res.returncode != 0:
            detail = _tail(res.stderr) or _tail(res.stdout)
            raise PushRejectedError(
                f"GitOps remote {self.pub.remote_url} rejected the push of {refspec.split(':')[-1]}: {detail}"
            )


def _tail(data: bytes, lines: int = 6) -> str:
    text = data.decode(errors="replace").strip()
    return " | ".join(text.splitlines()[-lines:])


def _command(args: Sequence[str]) -> str:
    """The git subcommand and its first arguments, without the --git-dir/--work-tree options."""
    return " ".join([a for a in args if not a.startswith(("--git-dir=", "--work-tree="))][:3])


def _valid_repo_path(path: str) -> str:
    p = PurePosixPath(path)
    if not path or p.is_absolute() or ".." in p.parts or p.parts[0] == ".git" or "\\" in path:
        raise GitOpsError(f"refusing to write {path!r}: paths must be relative, inside the repository")
    return str(p)


def _trailers(**values: str) -> str:
    names = {
        "promotion_id": "Promotion-Id",
        "model": "Promotion-Model",
        "environment": "Promotion-Environment",
        "manifest": "Promotion-Manifest",
        "reverts": "Reverts-Commit",
    }
    return "\n".join(f"{names[k]}: {v}" for k, v in values.items() if v)


# --------------------------------------------------------------------------------------------- local git


class LocalGitPublisher:
    """:class:`GitPublisher` on any git remote (default: a local bare repository) with the git CLI."""

    def __init__(
        self,
        remote_url: str | os.PathLike[str],
        base_branch: str = "main",
        author_name: str = "ct-pipeline",
        author_email: str = "ct-pipeline@localhost",
    ):
        self.remote_url = str(remote_url)
        self.base_branch = base_branch
        self.author_name = author_name
        self.author_email = author_email
        if shutil.which("git") is None:
            raise GitOpsError("the git command-line tool is required for the GitOps publisher (apt-get install git)")

    def __repr__(self) -> str:
        return f"LocalGitPublisher({self.remote_url!r}, base_branch={self.base_branch!r})"

    @classmethod
    def from_settings(cls, settings: Settings, spec: ModelSpec | None = None) -> LocalGitPublisher:
        remote, base = resolve_remote(settings, spec)
        return cls(remote, base, author_name=settings.gitops.author_name, author_email=settings.gitops.author_email)

    # -- plumbing

    def _git(
        self, *args: str, cwd: Path | None = None, input: bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        env = _clean_env(
            {
                "GIT_AUTHOR_NAME": self.author_name,
                "GIT_AUTHOR_EMAIL": self.author_email,
                "GIT_COMMITTER_NAME": self.author_name,
                "GIT_COMMITTER_EMAIL": self.author_email,
            }
        )
        cmd = ["git", *_GIT_CONFIG, *args]
        try:
            res = subprocess.run(
                cmd, cwd=cwd, input=input, capture_output=True, env=env, timeout=_GIT_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            raise GitOpsError(f"git {_command(args)} timed out after {_GIT_TIMEOUT}s ({self.remote_url})") from None
        if check and res.returncode != 0:
            raise GitOpsError(f"git {_command(args)} failed: {_tail(res.stderr) or _tail(res.stdout)}")
        return res

    @contextmanager
    def _clone(self) -> Iterator[_Repo]:
        tmp = Path(tempfile.mkdtemp(prefix="ctpipe-gitops-"))
        try:
            # --shared: a local remote's objects are borrowed, not copied (the clone lives for one operation)
            shared = ("--shared",) if _is_local(self.remote_url) else ()
            clone = ("clone", "--quiet", "--bare", "--template=", *shared, "--", self.remote_url, str(tmp / "repo.git"))
            res = self._git(*clone, check=False)
            if res.returncode != 0:
                raise RemoteError(
                    f"cannot read GitOps remote {self.remote_url!r}: {_tail(res.stderr, 2)} "
                    "(is it initialized? see `ctpipe gitops init`, CTPIPE_GITOPS_REMOTE, spec gitops.remote)"
                )
            (tmp / "work").mkdir()
            yield _Repo(tmp / "repo.git", tmp / "work", self)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # -- reading

    def head(self, ref: str | None = None) -> str:
        branch = ref or self.base_branch
        res = self._git("ls-remote", "--", self.remote_url, f"refs/heads/{branch}", check=False)
        if res.returncode != 0:
            raise RemoteError(f"cannot read GitOps remote {self.remote_url!r}: {_tail(res.stderr, 2)}")
        for line in res.stdout.decode().splitlines():
            sha, name = line.split("\t", 1)
            if name == f"refs/heads/{branch}":
                return sha
        raise RemoteError(f"branch {branch!r} does not exist on GitOps remote {self.remote_url}")

    def read_file(self, path: str, ref: str | None = None) -> str | None:
        with self._clone() as repo:
            rev = self._resolve(repo, ref)
            data = repo.show(rev, _valid_repo_path(path))
        return None if data is None else data.decode()

    def _resolve(self, repo: _Repo, ref: str | None) -> str:
        if ref is None:
            return repo.base_tip()
        sha = repo.branch_tip(ref) or repo.rev(ref)
        if sha is None:
            raise GitOpsError(f"no branch or commit {ref!r} on GitOps remote {self.remote_url}")
        return sha

    def _promotion_at(self, repo: _Repo, pid: str, base: str) -> PromotionRecord | None:
        branch = promotion_branch(pid)
        tip = repo.branch_tip(branch)
        if tip is None:
            return None
        data = repo.show(tip, record_path(pid))
        if data is None:
            log.warning("branch %s has no %s; not a promotion", branch, record_path(pid))
            return None
        record, _ = parse_record_file(data)
        if repo.is_ancestor(tip, base):
            status = "merged"
        else:
            status = "closed" if record.status == "closed" else "open"
        return record.model_copy(update={"commit": tip, "status": status})

    def get_promotion(self, promotion_id: str) -> PromotionRecord | None:
        parse_promotion_id(promotion_id)
        with self._clone() as repo:
            return self._promotion_at(repo, promotion_id, repo.base_tip())

    def list_promotions(self, model: str | None = None) -> list[PromotionRecord]:
        with self._clone() as repo:
            base = repo.base_tip()
            prefix = repo.remote_ref(BRANCH_PREFIX) + (model or "")
            prefix = prefix.rstrip("/")  # for-each-ref matches a prefix up to a slash
            refs = repo.out("for-each-ref", "--format=%(refname)", prefix).splitlines()
            records = []
            for ref in refs:
                pid = ref[len(repo.remote_ref(BRANCH_PREFIX)) :]
                try:
                    parse_promotion_id(pid)
                except ValueError:
                    continue
                record = self._promotion_at(repo, pid, base)
                if record is not None and (model is None or record.model == model):
                    records.append(record)
        return sorted(records, key=lambda r: (r.model, r.created_at, r.id))

    # -- proposing

    def open_promotion(self, record: PromotionRecord, files: Mapping[str, bytes]) -> PromotionRecord:
        record, paths = checked_promotion(record, files, self.base_branch)
        branch = record.branch

        with self._clone() as repo:
            base = repo.base_tip()
            old_tip = repo.branch_tip(branch)
            repo.checkout(base)
            repo.write_files(paths)
            if not repo.has_staged_changes():
                existing = self._promotion_at(repo, record.id, base) if old_tip else None
                if existing is not None and existing.status == "merged":
                    return existing  # already merged with exactly this content: nothing to do
                raise GitOpsError(
                    f"promotion {record.id}: the files already are on {self.base_branch} ({base[:12]}); "
                    "nothing to propose"
                )
            message = (
                f"{record.title}\n\n{record.body.rstrip()}\n\n"
                + _trailers(
                    promotion_id=record.id,
                    model=record.model,
                    environment=record.environment,
                    manifest=record.manifest_path,
                )
                + "\n"
            )
            new_tip = repo.commit(message)
            if (
                old_tip
                and repo.out("rev-parse", f"{old_tip}^{{tree}}") == repo.out("rev-parse", "HEAD^{tree}")
                and repo.out("rev-parse", f"{old_tip}^") == base
            ):
                new_tip = old_tip  # same content on the same base: leave the branch alone
            else:
                # Replace the branch atomically, and only if nobody moved it since we looked.
                repo.push(
                    f"{new_tip}:refs/heads/{branch}",
                    "--force",
                    f"--force-with-lease=refs/heads/{branch}:{old_tip or ''}",
                )
        return record.model_copy(update={"commit": new_tip, "status": "open", "url": None})

    def close_promotion(self, promotion_id: str) -> PromotionRecord:
        branch = promotion_branch(promotion_id)
        with self._clone() as repo:
            current = self._promotion_at(repo, promotion_id, repo.base_tip())
            if current is None:
                raise PromotionNotFoundError(f"no promotion {promotion_id!r} on {self.remote_url}")
            if current.status == "merged":
                raise GitOpsError(f"promotion {promotion_id} is already merged; revert it instead of closing")
            if current.status == "closed":
                return current
            tip = current.commit
            data = repo.show(tip, record_path(promotion_id))
            _, doc = parse_record_file(data)
            doc["promotion"]["status"] = "closed"
            repo.checkout(tip)
            repo.write_files({record_path(promotion_id): (json.dumps(doc, indent=2) + "\n").encode()})
            new_tip = repo.commit(f"Close promotion {promotion_id}\n\n" + _trailers(promotion_id=promotion_id) + "\n")
            repo.push(f"{new_tip}:refs/heads/{branch}", f"--force-with-lease=refs/heads/{branch}:{tip}")
        return current.model_copy(update={"commit": new_tip, "status": "closed"})

    # -- merging and reverting

    def merge_promotion(self, promotion_id: str) -> str:
        branch = promotion_branch(promotion_id)
        with self._clone() as repo:
            base = repo.base_tip()
            record = self._promotion_at(repo, promotion_id, base)
            if record is None:
                raise PromotionNotFoundError(f"no promotion {promotion_id!r} on {self.remote_url}")
            if record.status == "merged":
                raise GitOpsError(f"promotion {promotion_id} is already merged into {self.base_branch}")
            if record.status == "closed":
                raise GitOpsError(f"promotion {promotion_id} is closed; re-open it (promote again) to merge it")
            repo.checkout(base)
            message = (
                f"Merge promotion {promotion_id}: {record.title}\n\n"
                f"Merge branch '{branch}' (at {record.commit}) into {self.base_branch}.\n\n"
                + _trailers(
                    promotion_id=promotion_id,
                    model=record.model,
                    environment=record.environment,
                    manifest=record.manifest_path,
                )
                + "\n"
            )
            msg_file = repo.git_dir / "CTPIPE_MERGE_MSG"
            msg_file.write_text(message)
            res = repo.run(
                "merge",
                "--no-ff",
                "--no-verify",
                "--cleanup=verbatim",
                "-F",
                str(msg_file),
                record.commit,
                check=False,
            )
            if res.returncode != 0:
                conflicts = repo.out("diff", "--name-only", "--diff-filter=U").split()
                repo.run("merge", "--abort", check=False)
                if conflicts:
                    raise MergeConflictError(
                        f"promotion {promotion_id} conflicts with {self.base_branch} ({base[:12]}) in "
                        f"{', '.join(conflicts)}; {self.base_branch} is untouched. The promotion was "
                        f"proposed against an older {self.base_branch}: promote again to rebuild it, "
                        "or close it."
                    )
                raise GitOpsError(f"merging promotion {promotion_id} failed: {_tail(res.stderr) or _tail(res.stdout)}")
            merge = repo.out("rev-parse", "HEAD")
            repo.push(f"{merge}:refs/heads/{self.base_branch}")
        return merge

    def _scan(self, repo: _Repo, base: str) -> list[GitOpsEvent]:
        """Promotion merges and reverts on the first-parent history of ``base``, newest first."""
        fmt = "%x1e%H%x1f%P%x1f%ct%x1f%s%x1f%B%x1f"
        raw = repo.run(
            "log", "--first-parent", "--diff-merges=first-parent", "--name-only", f"--format={fmt}", base
        ).stdout.decode(errors="replace")
        commits = []
        for chunk in raw.split("\x1e")[1:]:
            sha, parents, ts, subject, body, names = chunk.split("\x1f", 5)
            commits.append((sha, parents.split(), int(ts), subject, body, names.split("\n")))
        # Reverts anywhere in base's history (also inside merged revert branches, as GitHub makes them).
        # A commit is live unless a live commit reverts it: reverting a revert re-applies the original.
        all_bodies = repo.run("log", "--format=%H%x1f%B%x1e", base).stdout.decode(errors="replace")
        entries = (e.strip("\n").split("\x1f", 1) for e in all_bodies.split("\x1e") if "\x1f" in e)
        index = RevertIndex.from_messages((sha, body) for sha, body in entries)
        reverts_of, reverted_by = index.reverts_of, index.reverted_by

        events: list[GitOpsEvent] = []
        promo_by_commit: dict[str, GitOpsEvent] = {}
        for sha, parents, ts, subject, _body, names in commits:
            if len(parents) < 2:
                continue
            for name in names:
                m = re.match(rf"^{RECORDS_DIR}/(.+)/record\.json$", name)
                if not m:
                    continue
                data = repo.show(sha, name)
                if data is None:
                    continue
                try:
                    record, _ = parse_record_file(data)
                except (GitOpsError, ValueError):
                    continue
                if record.manifest_path not in names:
                    continue
                event = GitOpsEvent(
                    kind="promote",
                    commit=sha,
                    promotion_id=record.id,
                    model=record.model,
                    version=record.version,
                    environment=record.environment,
                    manifest_path=record.manifest_path,
                    at=datetime.fromtimestamp(ts, UTC),
                    subject=subject,
                    reverted_by=reverted_by(sha),
                )
                promo_by_commit[sha] = event
                events.append(event)
                break
        for sha, _parents, ts, subject, _body, _names in commits:
            target = reverts_of.get(sha)
            if target in promo_by_commit:
                p = promo_by_commit[target]
                events.append(
                    p.model_copy(
                        update={
                            "kind": "revert",
                            "commit": sha,
                            "at": datetime.fromtimestamp(ts, UTC),
                            "subject": subject,
                            "reverted_by": reverted_by(sha),
                            "reverts": target,
                        }
                    )
                )
        order_index = {sha: i for i, (sha, *_rest) in enumerate(commits)}
        return sorted(events, key=lambda e: order_index.get(e.commit, len(commits)))

    def history(self, model: str | None = None) -> list[GitOpsEvent]:
        with self._clone() as repo:
            events = self._scan(repo, repo.base_tip())
        return [e for e in events if model is None or e.model == model]

    def revert_last_promotion(self, model: str, environment: str) -> str:
        with self._clone() as repo:
            base = repo.base_tip()
            candidates = [
                e
                for e in self._scan(repo, base)
                if e.kind == "promote" and e.model == model and e.environment == environment and not e.reverted_by
            ]
            if not candidates:
                raise NothingToRevertError(
                    f"no promotion of {model} in {environment} on {self.base_branch} is left to revert"
                )
            target = candidates[0]
            before_text = repo.show(f"{target.commit}^1", target.manifest_path)
            try:
                before = read_deployed(before_text.decode(), model, environment) if before_text else None
                restores = f"v{before.version}" if before else "nothing deployed"
            except ManifestError:
                restores = "its previous content"
            repo.checkout(base)
            res = repo.run("revert", "-m", "1", "--no-commit", target.commit, check=False)
            if res.returncode != 0:
                conflicts = repo.out("diff", "--name-only", "--diff-filter=U").split()
                repo.run("revert", "--abort", check=False)
                raise MergeConflictError(
                    f"cannot revert promotion {target.promotion_id} ({target.commit[:12]}): later commits on "
                    f"{self.base_branch} changed the same lines "
                    f"({', '.join(conflicts) or _tail(res.stderr)}); {self.base_branch} is untouched"
                )
            if not repo.has_staged_changes():
                raise GitOpsError(
                    f"promotion {target.promotion_id} ({target.commit[:12]}) has already been undone by hand "
                    f"on {self.base_branch}; nothing to revert"
                )
            message = revert_message(target, model, environment, restores)
            sha = repo.commit(message)
            repo.push(f"{sha}:refs/heads/{self.base_branch}")
        return sha


# --------------------------------------------------------------------------------------------- helpers


def resolve_remote(settings: Settings, spec: ModelSpec | None = None) -> tuple[str, str]:
    """(remote url, base branch) for ``spec``: the spec's gitops.remote / base_branch when set explicitly,
    else CTPIPE_GITOPS_REMOTE (default HOME/gitops.git) / CTPIPE_GITOPS_BRANCH."""
    remote = (spec.gitops.remote if spec is not None else None) or settings.gitops_remote_url
    base = settings.gitops.branch
    if spec is not None and "base_branch" in spec.gitops.model_fields_set:
        base = spec.gitops.base_branch
    return remote, base


def default_publisher(settings: Settings, spec: ModelSpec | None = None) -> GitPublisher:
    """The publisher for ``spec``: GitHub pull requests (:class:`ct_pipeline.github.GitHubPublisher`) when the
    remote names a GitHub repository (``github.com/owner/repo``, ``https://github.com/owner/repo``, or a repository
    URL on the host of ``CTPIPE_GITHUB_API_URL``: GitHub Enterprise, the test stand-in), else the git CLI
    publisher (local paths, ``file://``, ssh remotes)."""
    from ct_pipeline.github import GitHubPublisher, parse_github_remote

    if parse_github_remote(resolve_remote(settings, spec)[0]) is not None:
        return GitHubPublisher.from_settings(settings, spec)
    return LocalGitPublisher.from_settings(settings, spec)


def deployed_model(publisher: GitPublisher, spec: ModelSpec) -> DeployedModel | None:
    """What the base branch's values file says is deployed (None if nothing is, or there is no file)."""
    sha = publisher.head()
    text = publisher.read_file(spec.manifest_path, ref=sha)
    if text is None:
        return None
    return read_deployed(text, spec, commit=sha)


def _seed_files(seed_dir: Path) -> dict[str, bytes]:
    files = {}
    for path in sorted(seed_dir.rglob("*")):
        rel = path.relative_to(seed_dir)
        if path.is_file() and "__pycache__" not in rel.parts and rel.name != ".DS_Store" and ".git" not in rel.parts:
            files[rel.as_posix()] = path.read_bytes()
    return files


def init_local_remote(
    settings: Settings, specs: Iterable[ModelSpec], seed_dir: str | os.PathLike[str] | None = None
) -> str:
    """Make sure the GitOps remote exists and has a values file for every spec; returns the remote URL.

    A missing local bare repository is created with one commit on the base branch holding the seed files
    (``seed_dir``, default this checkout's ``gitops/``) and each spec's initial values file. On an existing
    repository, only missing values files are added (one commit); nothing is overwritten. Idempotent.
    Specs whose ``gitops.remote`` names another remote are left out (initialize that one separately).
    """
    remote, base = resolve_remote(settings)
    specs = list(specs)
    ours: list[ModelSpec] = []
    for spec in specs:
        if resolve_remote(settings, spec)[0] != remote:
            log.warning("spec %s uses another GitOps remote (%s); not initialized here", spec.name, spec.gitops.remote)
        else:
            ours.append(spec)
    paths = [s.manifest_path for s in ours]
    if len(set(paths)) != len(paths):
        raise GitOpsError(f"two specs share a values file: {sorted(p for p in paths if paths.count(p) > 1)}")

    explicit_seed = seed_dir is not None
    seed = Path(seed_dir) if explicit_seed else DEFAULT_SEED_DIR
    if explicit_seed and not seed.is_dir():
        raise GitOpsError(f"GitOps seed directory {seed} does not exist")

    publisher = LocalGitPublisher(remote, base, settings.gitops.author_name, settings.gitops.author_email)
    if _is_local(remote):
        path = _local_path(remote)
        if not path.exists() or (path.is_dir() and not any(path.iterdir())):
            path.mkdir(parents=True, exist_ok=True)
            publisher._git("init", "--quiet", "--bare", f"--initial-branch={base}", str(path))

    with publisher._clone() as repo:
        tip = repo.branch_tip(base)
        values = {s.manifest_path: render_initial_values(s).encode() for s in ours}
        if tip is None:
            files = _seed_files(seed) if seed.is_dir() else {}
            for rel, data in values.items():
                files.setdefault(rel, data)  # a hand-written values file in the seed wins
            repo.run("symbolic-ref", "HEAD", f"refs/heads/{base}")
            repo.run("read-tree", "--empty")
            if not files:
                files = {"README.md": b"# GitOps repository\n"}
            repo.write_files({_valid_repo_path(p): d for p, d in files.items()})
            names = ", ".join(f"{s.name} ({s.gitops.environment})" for s in ours) or "no models yet"
            sha = repo.commit(f"Initialize GitOps repository\n\nSeed layout and initial values for {names}.\n")
            repo.push(f"{sha}:refs/heads/{base}")
            return remote
        repo.checkout(tip)
        missing = {p: d for p, d in values.items() if repo.show(tip, p) is None}
        if missing:
            repo.write_files(missing)
            names = ", ".join(sorted(missing))
            sha = repo.commit(f"Add initial values files\n\n{names}\n")
            repo.push(f"{sha}:refs/heads/{base}")
    return remote


__all__: Sequence[str] = (
    "GitOpsError",
    "RemoteError",
    "PushRejectedError",
    "PromotionNotFoundError",
    "MergeConflictError",
    "NothingToRevertError",
    "GitPublisher",
    "LocalGitPublisher",
    "GitOpsEvent",
    "promotion_id",
    "parse_promotion_id",
    "promotion_branch",
    "record_path",
    "body_path",
    "promotion_files",
    "parse_record_file",
    "resolve_remote",
    "default_publisher",
    "deployed_model",
    "init_local_remote",
)
