"""Promotions as GitHub pull requests: :class:`GitHubPublisher` implements :class:`~ct_pipeline.ports.GitPublisher`
with PyGithub 2.x against github.com, GitHub Enterprise (``CTPIPE_GITHUB_API_URL``) or any server speaking its
REST API (the tests use ``tests/support/github_standin.py``).

The repository layout and the records are the same as with the git CLI publisher
(:class:`~ct_pipeline.adapters.git_local.LocalGitPublisher`): a promotion ``<model>/v<version>`` is the branch
``promote/<model>/v<version>`` holding one commit on top of the base branch (the bumped values file +
``promotions/<id>/record.json`` + ``PR.md``), and the pull request from it has the record's title and body
(``PR.md``) and the labels ``promotion``, ``model:<model>``, ``env:<env>``.

- **One commit, through the Git Data API**: blobs, one tree on top of the base commit's tree, one commit, then the
  branch ref is created or moved. Nothing is cloned.
- **Idempotent**: re-opening the same id reuses the branch and its open pull request (title/body updated; an
  unchanged branch is not even rewritten); GitHub's 422 "A pull request already exists" (a concurrent run)
  resolves to that pull request; a closed one is reopened when GitHub allows it, else a new one is opened.
- **No stray branch**: when the pull request cannot be opened, a branch created by this call is deleted again
  (an existing branch is moved back to where it was).
- **Polite**: PyGithub's ``GithubRetry`` (urllib3 Retry) retries secondary rate limits (403/429, waiting
  ``Retry-After`` when given) and 5xx with exponential backoff, for writes too; PyGithub's pacing between
  requests/writes stays on unless configured.
- **Merge** is the pull request's merge, pinned to the reviewed head sha: a merge commit by default, or a squash
  or rebase (``merge_method``) for repositories that allow only those. Promotions merged any of these ways (also
  by hand in GitHub's UI) are read back by the same algorithm the git CLI publisher uses
  (:func:`ct_pipeline.domain.history.promotion_events`).
- **Close** closes the pull request (its state is the record's status).
- **Revert** builds, with the Git Data API, one commit on the base that restores every file the promotion commit
  changed to its content in that commit's first parent (what ``git revert -m 1`` does for a merge and ``git revert``
  for a squashed or rebased promotion, file by file; a file changed again later is a conflict and nothing happens),
  proposes it as a pull request from ``revert/<model>/v<version>`` and merges it, so the rollback is reviewable
  like any other change and works with protected branches (``revert_via="push"`` moves the base branch instead).
  When the pull request cannot be merged (e.g. reviews are required) it is left open and
  :class:`~ct_pipeline.errors.RevertPendingError` names it.

Configuration is :class:`ct_pipeline.settings.GitHubSettings` (``settings.github``); nothing here reads the
environment. Authentication, first found: ``CTPIPE_GITHUB_TOKEN``; a GitHub App (``CTPIPE_GITHUB_APP_ID`` +
``CTPIPE_GITHUB_APP_PRIVATE_KEY`` or ``..._PATH`` [+ ``CTPIPE_GITHUB_APP_INSTALLATION_ID``, else looked up for the
repository]) through ``github.Auth.AppAuth``; the Airflow connection ``github_default`` (password = token, host =
API URL; ``apache-airflow-providers-github`` when installed); ``GITHUB_TOKEN`` (``fallback_token``).
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Mapping, Sequence
from datetime import UTC
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from ct_pipeline.domain.history import CommitInfo, GitOpsEvent, promotion_events
from ct_pipeline.domain.manifest import read_deployed
from ct_pipeline.domain.promotion import (
    BRANCH_PREFIX,
    REVERT_PREFIX,
    checked_promotion,
    parse_promotion_id,
    parse_record_file,
    promotion_branch,
    promotion_message,
    record_path,
    record_trailers,
    remote_for,
    revert_message,
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
    RevertPendingError,
)
from ct_pipeline.settings import GitHubSettings

if TYPE_CHECKING:
    from github.PullRequest import PullRequest
    from github.Repository import Repository

    from ct_pipeline.domain.spec import ModelSpec
    from ct_pipeline.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.github.com"
MergeMethod = Literal["merge", "squash", "rebase"]
_NAME = r"[A-Za-z0-9_.-]+"
# GitHub titles the commit of a squashed (or UI-merged) pull request "<title> (#<number>)".
_PR_SUBJECT_RE = re.compile(r"\(#\d+\)$")


# --------------------------------------------------------------------------------------------- remotes


def parse_github_remote(remote: str, api_url: str | None = None) -> tuple[str, str, str] | None:
    """``(host, owner, repo)`` when ``remote`` names a GitHub repository, else None.

    GitHub: ``github.com/owner/repo``, ``https://github.com/owner/repo(.git)``, and any ``http(s)://host/owner/repo``
    whose host is the host of ``api_url`` (GitHub Enterprise, the stand-in). SSH remotes (``git@github.com:...``)
    stay plain git remotes: they need no API token and the git CLI publisher handles them. ``api_url`` is
    settings.github.api_url (``CTPIPE_GITHUB_API_URL``).
    """
    text = remote.strip()
    m = re.match(rf"^(?:https?://)?(?:www\.)?github\.com/({_NAME})/({_NAME}?)(?:\.git)?/?$", text)
    if m:
        return "github.com", m.group(1), m.group(2)
    if api_url and re.match(r"^https?://", text):
        parts, api = urlsplit(text), urlsplit(api_url)
        m = re.match(rf"^/({_NAME})/({_NAME}?)(?:\.git)?/?$", parts.path)
        if m and parts.hostname == api.hostname and (parts.port or None) == (api.port or None):
            return parts.netloc, m.group(1), m.group(2)
    if api_url:  # host/owner/repo without a scheme, host = the API's host
        m = re.match(rf"^([^/:\s]+(?::\d+)?)/({_NAME})/({_NAME}?)(?:\.git)?/?$", text)
        if m and m.group(1) == urlsplit(api_url).netloc:
            return m.group(1), m.group(2), m.group(3)
    return None


def api_url_for(host: str) -> str:
    return DEFAULT_API_URL if host == "github.com" else f"https://{host}/api/v3"


# --------------------------------------------------------------------------------------------- auth


def _airflow_connection(conn_id: str) -> tuple[str | None, str | None]:
    """(token, api url) from the Airflow connection ``conn_id``; (None, None) without Airflow or connection."""
    try:
        try:  # the GitHub provider's hook knows the connection type (optional dependency)
            from airflow.providers.github.hooks.github import GithubHook as Hook
        except ImportError:
            from airflow.sdk import BaseHook as Hook
        conn = Hook.get_connection(conn_id)
    except Exception as exc:  # no Airflow, no such connection, no metadata DB: not configured
        log.debug("no Airflow connection %s: %s", conn_id, exc)
        return None, None
    host = (conn.host or "").strip() or None
    if host and not host.startswith(("http://", "https://")):
        host = f"https://{host}"
    return (conn.password or None), host


def resolve_auth(cfg: GitHubSettings, owner: str, repo: str, api_url: str) -> tuple[Any, str, str]:
    """(``github.Auth`` object, API URL, where the credentials came from)."""
    from github import Auth, GithubIntegration

    if cfg.token is not None:
        return Auth.Token(cfg.token.get_secret_value()), api_url, "CTPIPE_GITHUB_TOKEN"
    if cfg.app_id:
        if cfg.app_private_key is not None:
            key = cfg.app_private_key.get_secret_value()
        elif cfg.app_private_key_path is not None:
            key = cfg.app_private_key_path.expanduser().read_text()
        else:
            raise GitOpsError(
                "CTPIPE_GITHUB_APP_ID needs CTPIPE_GITHUB_APP_PRIVATE_KEY or CTPIPE_GITHUB_APP_PRIVATE_KEY_PATH"
            )
        app_auth = Auth.AppAuth(cfg.app_id, key)
        installation = cfg.app_installation_id
        if installation is None:
            gi = GithubIntegration(auth=app_auth, base_url=api_url)
            try:
                installation = gi.get_repo_installation(owner, repo).id
            finally:
                gi.close()
        return app_auth.get_installation_auth(installation), api_url, f"GitHub App {cfg.app_id}"
    token, conn_url = _airflow_connection(cfg.airflow_conn_id)
    if token:
        return Auth.Token(token), (cfg.api_url or conn_url or api_url), f"Airflow connection {cfg.airflow_conn_id}"
    if cfg.fallback_token is not None and cfg.fallback_token.get_secret_value():
        return Auth.Token(cfg.fallback_token.get_secret_value()), api_url, "GITHUB_TOKEN"
    raise GitOpsError(
        f"no GitHub credentials for {owner}/{repo}: set CTPIPE_GITHUB_TOKEN, a GitHub App "
        f"(CTPIPE_GITHUB_APP_ID + CTPIPE_GITHUB_APP_PRIVATE_KEY[_PATH]), the Airflow connection "
        f"{cfg.airflow_conn_id!r}, or GITHUB_TOKEN"
    )


def make_retry(cfg: GitHubSettings):
    """PyGithub's GithubRetry: 403 secondary rate limits (+ Retry-After), 429 and 5xx, every method."""
    from github import GithubRetry
    from urllib3.util.retry import Retry

    return GithubRetry(
        total=cfg.retries,
        backoff_factor=cfg.backoff_factor,
        backoff_max=120,
        status_forcelist=[429, *range(500, 600)],
        allowed_methods=Retry.DEFAULT_ALLOWED_METHODS | {"GET", "POST", "PATCH", "PUT", "DELETE"},
        respect_retry_after_header=True,
        raise_on_status=False,  # the last answer reaches PyGithub, which raises a GithubException with it
        secondary_rate_wait=cfg.secondary_rate_wait,
        max_rate_limit_wait=cfg.max_rate_limit_wait,
    )


# --------------------------------------------------------------------------------------------- publisher


def _status(exc: Exception) -> int | None:
    return getattr(exc, "status", None)


def _message(exc: Exception) -> str:
    data = getattr(exc, "data", None)
    if isinstance(data, dict):
        parts = [str(data.get("message", ""))]
        for err in data.get("errors") or []:
            parts.append(str(err.get("message") or err.get("code") or err) if isinstance(err, dict) else str(err))
        return "; ".join(p for p in parts if p)
    return str(exc)


class GitHubPublisher:
    """:class:`~ct_pipeline.ports.GitPublisher` on a GitHub repository, promotions as pull requests.

    ``merge_method`` is how :meth:`merge_promotion` and rollbacks merge their pull requests ("merge", "squash" or
    "rebase", whatever the repository allows); history reads all three.
    """

    def __init__(
        self,
        repository: str,
        base_branch: str = "main",
        *,
        api_url: str | None = None,
        auth: Any = None,
        github: Any = None,
        settings: GitHubSettings | None = None,
        author_name: str = "ct-pipeline",
        author_email: str = "ct-pipeline@localhost",
        merge_method: MergeMethod = "merge",
    ):
        from github import Github

        # Without settings: the defaults, not the environment (the edge reads that, once, into Settings).
        self.cfg = settings if settings is not None else GitHubSettings.model_construct()
        owner, _, name = repository.partition("/")
        if not owner or not name or "/" in name:
            raise GitOpsError(f"GitHub repository must be 'owner/name', got {repository!r}")
        self.full_name, self.owner, self.name = repository, owner, name
        self.base_branch = base_branch
        self.author_name, self.author_email = author_name, author_email
        self.merge_method: MergeMethod = merge_method
        self._files: dict[str, list[str]] = {}  # sha -> changed paths (commits never change)
        self.api_url = (api_url or self.cfg.api_url or DEFAULT_API_URL).rstrip("/")
        self.auth_source = "given"
        if github is None:
            if auth is None:
                auth, self.api_url, self.auth_source = resolve_auth(self.cfg, owner, name, self.api_url)
            github = Github(
                auth=auth,
                base_url=self.api_url,
                timeout=self.cfg.timeout,
                per_page=100,
                retry=make_retry(self.cfg),
                seconds_between_requests=self.cfg.seconds_between_requests,
                seconds_between_writes=self.cfg.seconds_between_writes,
                user_agent="ct-pipeline",
            )
        self.gh = github
        self._repo: Repository | None = None

    def __repr__(self) -> str:
        return f"GitHubPublisher({self.full_name!r}, base_branch={self.base_branch!r}, api_url={self.api_url!r})"

    @property
    def remote_url(self) -> str:
        return f"{self.api_url}/repos/{self.full_name}"

    @classmethod
    def from_settings(cls, settings: Settings, spec: ModelSpec | None = None) -> GitHubPublisher:
        remote, base = remote_for(spec, settings.gitops_remote_url, settings.gitops.branch)
        cfg = settings.github
        parsed = parse_github_remote(remote, cfg.api_url)
        if parsed is None:
            raise GitOpsError(f"GitOps remote {remote!r} is not a GitHub repository")
        host, owner, name = parsed
        return cls(
            f"{owner}/{name}",
            base,
            api_url=cfg.api_url or api_url_for(host),
            settings=cfg,
            author_name=settings.gitops.author_name,
            author_email=settings.gitops.author_email,
        )

    # -- plumbing

    @property
    def repo(self) -> Repository:
        if self._repo is None:
            from github import UnknownObjectException

            try:
                self._repo = self._call("opening the repository", self.gh.get_repo, self.full_name)
            except UnknownObjectException:
                raise RemoteError(
                    f"GitHub repository {self.full_name} does not exist at {self.api_url} or the credentials "
                    f"({self.auth_source}) cannot see it"
                ) from None
        return self._repo

    def _call(self, what: str, fn, *args, **kwargs):
        """Run one API call, turning transport and auth failures into RemoteError."""
        from github import BadCredentialsException, GithubException, UnknownObjectException
        from requests.exceptions import RequestException

        try:
            return fn(*args, **kwargs)
        except BadCredentialsException as exc:
            raise RemoteError(
                f"GitHub rejected the credentials ({self.auth_source}) for {self.full_name}: {_message(exc)}"
            ) from None
        except UnknownObjectException:
            raise
        except GithubException as exc:
            if _status(exc) in (403, 429) or (_status(exc) or 0) >= 500:
                raise RemoteError(
                    f"GitHub {what} failed for {self.full_name} ({_status(exc)}): {_message(exc)}"
                ) from exc
            raise
        except RequestException as exc:
            raise RemoteError(f"cannot reach GitHub at {self.api_url} ({what}): {exc}") from exc

    def _ref_sha(self, branch: str) -> str | None:
        from github import UnknownObjectException

        try:
            return self._call("reading a branch", lambda: self.repo.get_git_ref(f"heads/{branch}").object.sha)
        except UnknownObjectException:
            return None

    # -- reading

    def head(self, ref: str | None = None) -> str:
        branch = ref or self.base_branch
        sha = self._ref_sha(branch)
        if sha is None:
            if ref is None:
                raise RemoteError(
                    f"base branch {branch!r} does not exist on GitHub repository {self.full_name}; "
                    "push the seed (gitops/) to it first (see docs/cluster.md)"
                )
            raise RemoteError(f"branch {branch!r} does not exist on GitHub repository {self.full_name}")
        return sha

    def read_file(self, path: str, ref: str | None = None) -> str | None:
        data = self._read_bytes(path, ref)
        return None if data is None else data.decode()

    def _read_bytes(self, path: str, ref: str | None = None) -> bytes | None:
        from github import GithubException, UnknownObjectException

        path = valid_repo_path(path)
        try:
            content = self._call("reading a file", self.repo.get_contents, path, ref=ref or self.base_branch)
        except UnknownObjectException as exc:
            if "No commit found" in _message(exc):
                raise GitOpsError(f"no branch or commit {ref!r} on GitHub repository {self.full_name}") from None
            return None
        except GithubException as exc:
            if _status(exc) == 422 and "No commit found" in _message(exc):
                raise GitOpsError(f"no branch or commit {ref!r} on GitHub repository {self.full_name}") from None
            raise
        if isinstance(content, list):
            return None  # a directory
        if content.encoding == "base64" and content.content is not None:
            return base64.b64decode(content.content)
        blob = self._call("reading a blob", self.repo.get_git_blob, content.sha)  # files over 1 MB
        return base64.b64decode(blob.content)

    def _pulls(self, branch: str, state: str = "all") -> list[PullRequest]:
        pulls = self._call(
            "listing pull requests",
            lambda: list(self.repo.get_pulls(state=state, head=f"{self.owner}:{branch}", base=self.base_branch)),
        )
        return sorted(pulls, key=lambda p: (p.state == "open", p.number), reverse=True)

    def _record(self, pr: PullRequest) -> PromotionRecord | None:
        pid = pr.head.ref[len(BRANCH_PREFIX) :]
        data = self._read_bytes(record_path(pid), pr.head.sha)
        if data is None:
            log.warning("pull request #%s (%s) has no %s; not a promotion", pr.number, pr.head.ref, record_path(pid))
            return None
        record, _ = parse_record_file(data)
        status = "merged" if pr.merged else ("open" if pr.state == "open" else "closed")
        return record.model_copy(update={"commit": pr.head.sha, "status": status, "url": pr.html_url})

    def _find(self, promotion_id: str) -> tuple[PullRequest | None, PromotionRecord | None]:
        parse_promotion_id(promotion_id)
        pulls = self._pulls(promotion_branch(promotion_id))
        if not pulls:
            return None, None
        return pulls[0], self._record(pulls[0])

    def get_promotion(self, promotion_id: str) -> PromotionRecord | None:
        return self._find(promotion_id)[1]

    def list_promotions(self, model: str | None = None) -> list[PromotionRecord]:
        prefix = BRANCH_PREFIX + (f"{model}/" if model else "")
        pulls = self._call(
            "listing pull requests", lambda: list(self.repo.get_pulls(state="all", base=self.base_branch))
        )
        newest: dict[str, PullRequest] = {}
        for pr in sorted(pulls, key=lambda p: (p.state == "open", p.number)):
            ref = pr.head.ref
            if ref.startswith(prefix):
                try:
                    parse_promotion_id(ref[len(BRANCH_PREFIX) :])
                except ValueError:
                    continue
                newest[ref] = pr  # open ones sort last, so an open pull request wins over closed ones
        records = [r for pr in newest.values() if (r := self._record(pr)) is not None]
        records = [r for r in records if model is None or r.model == model]
        return sorted(records, key=lambda r: (r.model, r.created_at, r.id))

    # -- proposing

    def open_promotion(self, record: PromotionRecord, files: Mapping[str, bytes]) -> PromotionRecord:
        from github import InputGitAuthor, InputGitTreeElement

        record, paths = checked_promotion(record, files, self.base_branch)
        branch = record.branch
        repo = self.repo

        base_sha = self.head()
        base_commit = self._call("reading a commit", repo.get_git_commit, base_sha)
        elements = []
        for path, data in sorted(paths.items()):
            blob = self._call("creating a blob", repo.create_git_blob, base64.b64encode(data).decode(), "base64")
            elements.append(InputGitTreeElement(path, "100644", "blob", sha=blob.sha))
        tree = self._call("creating a tree", repo.create_git_tree, elements, base_commit.tree)
        if tree.sha == base_commit.tree.sha:
            _, existing = self._find(record.id)
            if existing is not None and existing.status == "merged":
                return existing  # already merged with exactly this content: nothing to do
            raise GitOpsError(
                f"promotion {record.id}: the files already are on {self.base_branch} ({base_sha[:12]}); "
                "nothing to propose"
            )

        old_tip = self._ref_sha(branch)
        new_tip = None
        if old_tip is not None:
            old = self._call("reading a commit", repo.get_git_commit, old_tip)
            if old.tree.sha == tree.sha and [p.sha for p in old.parents] == [base_sha]:
                new_tip = old_tip  # same content on the same base: leave the branch alone
        created = False
        if new_tip is None:
            message = promotion_message(record)
            author = InputGitAuthor(self.author_name, self.author_email)
            commit = self._call("creating a commit", repo.create_git_commit, message, tree, [base_commit], author)
            new_tip = commit.sha
            created = self._move_branch(branch, new_tip, old_tip)
        try:
            pr = self._ensure_pull(branch, record)
        except BaseException:
            self._undo_branch(branch, created, old_tip, new_tip)
            raise
        return record.model_copy(update={"commit": new_tip, "status": "open", "url": pr.html_url})

    def _move_branch(self, branch: str, sha: str, old_tip: str | None) -> bool:
        """Point ``branch`` at ``sha``; True when this created the branch."""
        from github import GithubException

        repo = self.repo
        if old_tip is None:
            try:
                self._call("creating a branch", repo.create_git_ref, f"refs/heads/{branch}", sha)
                return True
            except GithubException as exc:
                if _status(exc) != 422 or "already exists" not in _message(exc):
                    raise PushRejectedError(f"GitHub refused to create {branch}: {_message(exc)}") from exc
                # created meanwhile (a retried request or a concurrent run): move it below
        try:
            ref = self._call("reading a branch", repo.get_git_ref, f"heads/{branch}")
            self._call("moving a branch", ref.edit, sha, force=True)
        except GithubException as exc:
            raise PushRejectedError(f"GitHub refused to move {branch}: {_message(exc)}") from exc
        return False

    def _undo_branch(self, branch: str, created: bool, old_tip: str | None, new_tip: str | None) -> None:
        try:
            ref = self.repo.get_git_ref(f"heads/{branch}")
            if created:
                ref.delete()
            elif old_tip is not None and new_tip != old_tip:
                ref.edit(old_tip, force=True)
        except Exception as exc:  # best effort; the original error is what matters
            log.warning("could not clean up branch %s after a failure: %s", branch, exc)

    def _ensure_pull(self, branch: str, record: PromotionRecord) -> PullRequest:
        from github import GithubException

        pulls = self._pulls(branch)
        pr = next((p for p in pulls if p.state == "open"), None)
        if pr is None:
            for closed in (p for p in pulls if p.state == "closed" and not p.merged):
                try:
                    self._call("reopening a pull request", closed.edit, state="open")
                    pr = closed
                    break
                except GithubException as exc:  # e.g. the branch was force-pushed since: open a new one
                    log.info("cannot reopen #%s: %s", closed.number, _message(exc))
        if pr is None:
            try:
                pr = self._call(
                    "opening a pull request",
                    self.repo.create_pull,
                    base=self.base_branch,
                    head=branch,
                    title=record.title,
                    body=record.body,
                )
            except GithubException as exc:
                if _status(exc) != 422 or "already exists" not in _message(exc):
                    raise GitOpsError(f"GitHub refused the pull request for {branch}: {_message(exc)}") from exc
                pr = next((p for p in self._pulls(branch, "open")), None)
                if pr is None:
                    raise GitOpsError(f"GitHub says a pull request for {branch} exists but lists none") from exc
        if pr.title != record.title or (pr.body or "") != record.body:
            self._call("updating a pull request", pr.edit, title=record.title, body=record.body)
        labels = [*self.cfg.labels, f"model:{record.model}", f"env:{record.environment}"]
        have = {label.name for label in pr.labels}
        if missing := [label for label in labels if label not in have]:
            self._call("labelling a pull request", pr.add_to_labels, *missing)
        return pr

    def close_promotion(self, promotion_id: str) -> PromotionRecord:
        pr, record = self._find(promotion_id)
        if pr is None or record is None:
            raise PromotionNotFoundError(f"no promotion {promotion_id!r} on {self.full_name}")
        if record.status == "merged":
            raise GitOpsError(f"promotion {promotion_id} is already merged; revert it instead of closing")
        if record.status == "closed":
            return record
        self._call("closing a pull request", pr.edit, state="closed")
        return record.model_copy(update={"status": "closed"})

    # -- merging

    def merge_promotion(self, promotion_id: str) -> str:
        from github import GithubException

        pr, record = self._find(promotion_id)
        if pr is None or record is None:
            raise PromotionNotFoundError(f"no promotion {promotion_id!r} on {self.full_name}")
        if record.status == "merged":
            raise GitOpsError(f"promotion {promotion_id} is already merged into {self.base_branch}")
        if record.status == "closed":
            raise GitOpsError(f"promotion {promotion_id} is closed; re-open it (promote again) to merge it")
        trailers = record_trailers(record)
        try:
            status = self._call(
                "merging a pull request",
                pr.merge,
                commit_title=f"Merge promotion {promotion_id}: {record.title}",
                commit_message=f"Merge pull request #{pr.number} ({pr.head.ref} at {record.commit}) into "
                f"{self.base_branch}.\n\n{trailers}\n",
                merge_method=self.merge_method,
                sha=record.commit,
            )
        except GithubException as exc:
            if _status(exc) == 405:
                raise MergeConflictError(
                    f"promotion {promotion_id} cannot be merged into {self.base_branch}: {_message(exc)} "
                    f"({pr.html_url}); {self.base_branch} is untouched. Promote again to rebuild it on the "
                    "current base, or close it."
                ) from None
            if _status(exc) == 409:
                raise GitOpsError(
                    f"promotion {promotion_id} changed while merging ({_message(exc)}); review it again"
                ) from None
            raise GitOpsError(f"merging promotion {promotion_id} failed: {_message(exc)}") from None
        return status.sha

    # -- history and reverts

    def _commits(self) -> tuple[list[CommitInfo], dict[str, str]]:
        """(first-parent chain of the base branch, newest first; sha -> message of every commit fetched)."""
        tip = self.head()
        listing = self._call("listing commits", self.repo.get_commits, sha=tip)
        by_sha: dict[str, Any] = {}
        for commit in listing:
            by_sha[commit.sha] = commit
            if len(by_sha) >= self.cfg.history_limit:
                break
        chain: list[CommitInfo] = []
        sha: str | None = tip
        while sha in by_sha:
            commit = by_sha[sha]
            date = commit.commit.committer.date
            parents = [p.sha for p in commit.parents]
            chain.append(
                CommitInfo(
                    sha=sha,
                    parents=parents,
                    at=date if date.tzinfo else date.replace(tzinfo=UTC),
                    message=commit.commit.message,
                )
            )
            sha = parents[0] if parents else None
        return chain, {sha: c.commit.message for sha, c in by_sha.items()}

    def _scan(self) -> list[GitOpsEvent]:
        chain, messages = self._commits()
        subjects = {c.sha: c.subject for c in chain}

        def changed_paths(sha: str) -> list[str] | None:
            # One request per commit, so only for what looks like a squashed pull request without trailers
            # (e.g. "default to pull request title and description"); cached, commits never change.
            if not _PR_SUBJECT_RE.search(subjects.get(sha, "")):
                return None
            if sha not in self._files:
                commit = self._call("reading a commit", self.repo.get_commit, sha)
                self._files[sha] = [f.filename for f in commit.files]
            return self._files[sha]

        return promotion_events(
            chain, messages.items(), lambda sha, path: self._read_bytes(path, sha), changed_paths=changed_paths
        )

    def history(self, model: str | None = None) -> list[GitOpsEvent]:
        return [e for e in self._scan() if model is None or e.model == model]

    def _tree_map(self, commit_sha: str) -> dict[str, tuple[str, str]]:
        commit = self._call("reading a commit", self.repo.get_git_commit, commit_sha)
        tree = self._call("reading a tree", self.repo.get_git_tree, commit.tree.sha, recursive=True)
        return {e.path: (e.sha, e.mode) for e in tree.tree if e.type == "blob"}

    def revert_last_promotion(self, model: str, environment: str) -> str:
        from github import GithubException, InputGitAuthor, InputGitTreeElement

        candidates = [
            e
            for e in self._scan()
            if e.kind == "promote" and e.model == model and e.environment == environment and not e.reverted_by
        ]
        if not candidates:
            raise NothingToRevertError(
                f"no promotion of {model} in {environment} on {self.base_branch} is left to revert"
            )
        target = candidates[0]
        repo = self.repo
        # The promotion commit against its first parent: what a merge brought in, or the squashed/rebased commit.
        promoted = self._call("reading a commit", repo.get_git_commit, target.commit)
        first_parent = promoted.parents[0].sha
        base_sha = self.head()
        before, after, now = self._tree_map(first_parent), self._tree_map(target.commit), self._tree_map(base_sha)
        changed = sorted(set(before) ^ set(after) | {p for p in set(before) & set(after) if before[p] != after[p]})
        elements, conflicts = [], []
        for path in changed:
            was, became, current = before.get(path), after.get(path), now.get(path)
            if current == became:
                if was is None:  # the promotion added the file: delete it (current is the added blob)
                    assert current is not None
                    elements.append(InputGitTreeElement(path, current[1], "blob", sha=None))
                else:
                    elements.append(InputGitTreeElement(path, was[1], "blob", sha=was[0]))
            elif current != was:
                conflicts.append(path)
        if conflicts:
            raise MergeConflictError(
                f"cannot revert promotion {target.promotion_id} ({target.commit[:12]}): later commits on "
                f"{self.base_branch} changed the same files ({', '.join(conflicts)}); {self.base_branch} is untouched"
            )
        if not elements:
            raise GitOpsError(
                f"promotion {target.promotion_id} ({target.commit[:12]}) has already been undone by hand "
                f"on {self.base_branch}; nothing to revert"
            )
        before_text = self._read_bytes(target.manifest_path, first_parent)
        try:
            prev = read_deployed(before_text.decode(), model, environment) if before_text else None
            restores = f"v{prev.version}" if prev else "nothing deployed"
        except ManifestError:
            restores = "its previous content"
        message = revert_message(target, model, environment, restores)
        base_commit = self._call("reading a commit", repo.get_git_commit, base_sha)
        tree = self._call("creating a tree", repo.create_git_tree, elements, base_commit.tree)
        author = InputGitAuthor(self.author_name, self.author_email)
        commit = self._call("creating a commit", repo.create_git_commit, message, tree, [base_commit], author)

        if self.cfg.revert_via == "push":
            try:
                ref = self._call("reading a branch", repo.get_git_ref, f"heads/{self.base_branch}")
                self._call("moving a branch", ref.edit, commit.sha, force=False)
            except GithubException as exc:
                raise PushRejectedError(
                    f"GitHub refused to move {self.base_branch} to the revert of {target.promotion_id}: {_message(exc)}"
                ) from None
            return commit.sha

        branch = f"{REVERT_PREFIX}{target.promotion_id}"
        old_tip = self._ref_sha(branch)
        created = self._move_branch(branch, commit.sha, old_tip)
        title = f"Revert promotion {target.promotion_id} in {environment}"
        body = (
            f"Rolls back **{target.promotion_id}** in {environment}: "
            f"`{target.manifest_path}` goes back to {restores}.\n\n"
            f'This reverts commit {target.commit} ("{target.subject}").\n'
        )
        try:
            pulls = self._pulls(branch, "open")
            if pulls:
                pr = pulls[0]
                self._call("updating a pull request", pr.edit, title=title, body=body)
            else:
                pr = self._call(
                    "opening a pull request",
                    repo.create_pull,
                    base=self.base_branch,
                    head=branch,
                    title=title,
                    body=body,
                )
            self._call("labelling a pull request", pr.add_to_labels, "rollback", f"model:{model}", f"env:{environment}")
        except BaseException:
            self._undo_branch(branch, created, old_tip, commit.sha)
            raise
        if self.merge_method == "squash":  # the squashed commit is the revert: it keeps the revert's message
            subject, _, rest = message.partition("\n")
            merge_title, merge_message = f"{subject} (#{pr.number})", rest.lstrip("\n")
        else:  # a merge commit names the revert only by a short sha (the revert commit is parent 2)
            merge_title = f"Merge rollback of {target.promotion_id} in {environment}"
            merge_message = f"Merge pull request #{pr.number} ({branch}): rolls back {target.commit[:12]}.\n"
        try:
            status = self._call(
                "merging a pull request",
                pr.merge,
                commit_title=merge_title,
                commit_message=merge_message,
                merge_method=self.merge_method,
                sha=commit.sha,
            )
        except GithubException as exc:
            raise RevertPendingError(
                f"the rollback of {target.promotion_id} is proposed as {pr.html_url} but GitHub did not merge it: "
                f"{_message(exc)}; merge it there (nothing changed on {self.base_branch} yet)",
                pr.html_url,
                commit.sha,
            ) from None
        try:
            repo.get_git_ref(f"heads/{branch}").delete()
        except GithubException:
            pass  # GitHub may have deleted it already (auto-delete head branches)
        return status.sha


__all__: Sequence[str] = (
    "DEFAULT_API_URL",
    "GitHubPublisher",
    "parse_github_remote",
    "api_url_for",
    "resolve_auth",
    "make_retry",
)
