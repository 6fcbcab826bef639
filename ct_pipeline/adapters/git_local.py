"""The git CLI publisher: :class:`LocalGitPublisher` implements :class:`ct_pipeline.ports.GitPublisher` with the
``git`` command line against any git remote (the embedded default is a local bare repository).

Each operation works in a fresh temporary clone and changes the remote only through one final push, so an
operation that fails half-way leaves the remote as it was. Everything the publisher needs to know later (status,
what a commit promoted, what is already reverted) is read back from git itself, through the same algorithm the
GitHub publisher uses (:func:`ct_pipeline.domain.history.promotion_events`), so it reads promotions merged by a
merge commit, a squash or a rebase alike, whoever merged them.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ct_pipeline.domain.history import CommitInfo, GitOpsEvent, promotion_events
from ct_pipeline.domain.manifest import add_app_to_environment, app_files, monitoring_values_path, read_deployed
from ct_pipeline.domain.promotion import (
    BRANCH_PREFIX,
    checked_promotion,
    parse_promotion_id,
    parse_record_file,
    promotion_branch,
    promotion_message,
    record_path,
    record_trailers,
    remote_for,
    revert_message,
    trailers,
    valid_repo_path,
)
from ct_pipeline.domain.records import PromotionRecord
from ct_pipeline.errors import (
    GitOpsError,
    ManifestError,
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

DEFAULT_SEED_DIR = Path(__file__).resolve().parents[2] / "gitops"
_GIT_TIMEOUT = 300


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
                "(`ctpipe gitops init`, ct_pipeline.adapters.git_local.init_local_remote)"
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
        remote, base = remote_for(spec, settings.gitops_remote_url, settings.gitops.branch)
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
            data = repo.show(rev, valid_repo_path(path))
        return None if data is None else data.decode()

    def _resolve(self, repo: _Repo, ref: str | None) -> str:
        if ref is None:
            return repo.base_tip()
        sha = repo.branch_tip(ref) or repo.rev(ref)
        if sha is None:
            raise GitOpsError(f"no branch or commit {ref!r} on GitOps remote {self.remote_url}")
        return sha

    def _promotion_at(
        self, repo: _Repo, pid: str, base: str, scan: Callable[[], list[GitOpsEvent]] | None = None
    ) -> PromotionRecord | None:
        branch = promotion_branch(pid)
        tip = repo.branch_tip(branch)
        if tip is None:
            return None
        data = repo.show(tip, record_path(pid))
        if data is None:
            log.warning("branch %s has no %s; not a promotion", branch, record_path(pid))
            return None
        record, _ = parse_record_file(data)
        if repo.is_ancestor(tip, base) or self._landed(repo, pid, tip, base, scan):
            status = "merged"
        else:
            status = "closed" if record.status == "closed" else "open"
        return record.model_copy(update={"commit": tip, "status": status})

    def _landed(self, repo: _Repo, pid: str, tip: str, base: str, scan: Callable[[], list[GitOpsEvent]] | None) -> bool:
        """Whether a squash or rebase put this branch's promotion on ``base`` after the branch started (the
        branch tip itself is not in base then)."""
        fork = repo.out("merge-base", tip, base)
        events = scan() if scan is not None else self._scan(repo, base)
        return any(
            e.kind == "promote" and e.promotion_id == pid and e.commit != fork and repo.is_ancestor(fork, e.commit)
            for e in events
        )

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
            scanned: list[list[GitOpsEvent]] = []

            def scan() -> list[GitOpsEvent]:  # once per listing, and only when a branch is not in base
                if not scanned:
                    scanned.append(self._scan(repo, base))
                return scanned[0]

            records = []
            for ref in refs:
                pid = ref[len(repo.remote_ref(BRANCH_PREFIX)) :]
                try:
                    parse_promotion_id(pid)
                except ValueError:
                    continue
                record = self._promotion_at(repo, pid, base, scan)
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
            new_tip = repo.commit(promotion_message(record))
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
            data = repo.show(tip, record_path(promotion_id)) if tip else None
            if tip is None or data is None:
                raise GitOpsError(f"promotion {promotion_id} has no record file on its branch; cannot close it")
            _, doc = parse_record_file(data)
            doc["promotion"]["status"] = "closed"
            repo.checkout(tip)
            repo.write_files({record_path(promotion_id): (json.dumps(doc, indent=2) + "\n").encode()})
            new_tip = repo.commit(f"Close promotion {promotion_id}\n\n" + trailers(promotion_id=promotion_id) + "\n")
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
            if record.commit is None:
                raise GitOpsError(f"promotion {promotion_id} has no branch commit to merge")
            repo.checkout(base)
            message = (
                f"Merge promotion {promotion_id}: {record.title}\n\n"
                f"Merge branch '{branch}' (at {record.commit}) into {self.base_branch}.\n\n"
                + record_trailers(record)
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
        """Promotions and reverts on the first-parent history of ``base``, newest first."""
        fmt = "%x1e%H%x1f%P%x1f%ct%x1f%B%x1f"
        raw = repo.run(
            "log", "--first-parent", "--diff-merges=first-parent", "--name-only", f"--format={fmt}", base
        ).stdout.decode(errors="replace")
        chain = []
        for chunk in raw.split("\x1e")[1:]:
            sha, parents, ts, message, names = chunk.split("\x1f", 4)
            chain.append(
                CommitInfo(
                    sha=sha,
                    parents=parents.split(),
                    at=datetime.fromtimestamp(int(ts), UTC),
                    message=message,
                    changed_paths=[n for n in names.split("\n") if n],
                )
            )
        # Every commit reachable from base: merged branches keep the messages of merge-commit promotions and of
        # merged revert branches (as GitHub makes them).
        bodies = repo.run("log", "--format=%H%x1f%B%x1e", base).stdout.decode(errors="replace")
        entries = (e.strip("\n").split("\x1f", 1) for e in bodies.split("\x1e") if "\x1f" in e)
        return promotion_events(chain, ((sha, body) for sha, body in entries), repo.show)

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
            # A merge commit is reverted against its first parent; a squashed or rebased promotion is one
            # ordinary commit.
            parents = repo.out("rev-list", "--parents", "-n1", target.commit).split()[1:]
            mainline = ("-m", "1") if len(parents) > 1 else ()
            res = repo.run("revert", *mainline, "--no-commit", target.commit, check=False)
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


def _seed_files(seed_dir: Path) -> dict[str, bytes]:
    files = {}
    for path in sorted(seed_dir.rglob("*")):
        rel = path.relative_to(seed_dir)
        if path.is_file() and "__pycache__" not in rel.parts and rel.name != ".DS_Store" and ".git" not in rel.parts:
            files[rel.as_posix()] = path.read_bytes()
    return files


def _register_app(files: dict[str, bytes], spec: ModelSpec, read: Callable[[str], bytes | None]) -> None:
    """List a new default-layout app directory (apps/<env>/<model>/) in its environment's kustomization (when
    that file exists), so Flux deploys it; ``files`` receives the changed kustomization."""
    if spec.gitops.manifest is not None:
        return  # a custom layout is wired by hand
    env_dir, app = posixpath.split(posixpath.dirname(spec.manifest_path))
    path = f"{env_dir}/kustomization.yaml"
    current = read(path)
    if current is None:
        return
    try:
        updated = add_app_to_environment(current.decode(), app)
    except ManifestError as exc:
        raise GitOpsError(f"{path}: {exc}") from None
    if updated is not None:
        files[path] = updated.encode()


def init_local_remote(
    settings: Settings, specs: Iterable[ModelSpec], seed_dir: str | os.PathLike[str] | None = None
) -> str:
    """Make sure the GitOps remote exists and has an app directory for every spec; returns the remote URL.

    A missing local bare repository is created with one commit on the base branch holding the seed files
    (``seed_dir``, else settings.gitops.seed_dir, default this checkout's ``gitops/``) and each spec's app files
    (:func:`ct_pipeline.domain.manifest.app_files`: the initial values file, the generated monitoring.yaml and,
    for the default layout, the app kustomization, listed in ``apps/<env>/kustomization.yaml`` when that exists).
    Hand-written seed files win, except monitoring.yaml: it is generated, so the spec's own rendering replaces the
    seed's.
    On an existing repository, only missing files are added (one commit); nothing is overwritten (a stale
    monitoring.yaml is updated by the next promotion). Idempotent. Specs whose ``gitops.remote`` names another
    remote are left out (initialize that one separately).
    """
    remote, base = remote_for(None, settings.gitops_remote_url, settings.gitops.branch)
    specs = list(specs)
    ours: list[ModelSpec] = []
    for spec in specs:
        if remote_for(spec, settings.gitops_remote_url, settings.gitops.branch)[0] != remote:
            log.warning("spec %s uses another GitOps remote (%s); not initialized here", spec.name, spec.gitops.remote)
        else:
            ours.append(spec)
    paths = [s.manifest_path for s in ours]
    if len(set(paths)) != len(paths):
        raise GitOpsError(f"two specs share a values file: {sorted(p for p in paths if paths.count(p) > 1)}")

    chosen = seed_dir if seed_dir is not None else settings.gitops.seed_dir
    explicit_seed = chosen is not None
    seed = Path(chosen).expanduser() if chosen is not None else DEFAULT_SEED_DIR
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
        if tip is None:
            files = _seed_files(seed) if seed.is_dir() else {}
            for spec in ours:
                for rel, text in app_files(spec).items():
                    if rel == monitoring_values_path(spec):
                        files[rel] = text.encode()  # generated from the spec: the seed's copy may be another spec's
                    else:
                        files.setdefault(rel, text.encode())  # a hand-written file in the seed wins
                _register_app(files, spec, lambda p: files.get(p))
            repo.run("symbolic-ref", "HEAD", f"refs/heads/{base}")
            repo.run("read-tree", "--empty")
            if not files:
                files = {"README.md": b"# GitOps repository\n"}
            repo.write_files({valid_repo_path(p): d for p, d in files.items()})
            names = ", ".join(f"{s.name} ({s.gitops.environment})" for s in ours) or "no models yet"
            sha = repo.commit(f"Initialize GitOps repository\n\nSeed layout and initial values for {names}.\n")
            repo.push(f"{sha}:refs/heads/{base}")
            return remote
        repo.checkout(tip)
        missing: dict[str, bytes] = {}
        for spec in ours:
            for rel, text in app_files(spec).items():
                if rel not in missing and repo.show(tip, rel) is None:
                    missing[rel] = text.encode()
            _register_app(missing, spec, lambda p: missing.get(p) or repo.show(tip, p))
        if missing:
            repo.write_files({valid_repo_path(p): d for p, d in missing.items()})
            names = ", ".join(sorted(missing))
            sha = repo.commit(f"Add initial values files\n\n{names}\n")
            repo.push(f"{sha}:refs/heads/{base}")
    return remote


__all__: Sequence[str] = ("DEFAULT_SEED_DIR", "LocalGitPublisher", "init_local_remote")
