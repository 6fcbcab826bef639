"""Choosing the GitOps publisher for a model, and what its base branch deploys.

GitHub pull requests (:class:`~ct_pipeline.adapters.github.GitHubPublisher`) when the remote names a GitHub
repository (``github.com/owner/repo``, ``https://github.com/owner/repo``, or a repository URL on the host of
``settings.github.api_url``: GitHub Enterprise, the test stand-in), else the git CLI publisher
(:class:`~ct_pipeline.adapters.git_local.LocalGitPublisher`: local paths, ``file://``, ssh remotes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ct_pipeline.adapters.git_local import LocalGitPublisher
from ct_pipeline.adapters.github import GitHubPublisher, parse_github_remote
from ct_pipeline.domain.manifest import read_deployed
from ct_pipeline.domain.promotion import remote_for

if TYPE_CHECKING:
    from ct_pipeline.domain.records import DeployedModel
    from ct_pipeline.domain.spec import ModelSpec
    from ct_pipeline.ports import GitPublisher
    from ct_pipeline.settings import Settings


def resolve_remote(settings: Settings, spec: ModelSpec | None = None) -> tuple[str, str]:
    """(remote url, base branch) for ``spec``: the spec's gitops.remote / base_branch when set explicitly,
    else CTPIPE_GITOPS_REMOTE (default HOME/gitops.git) / CTPIPE_GITOPS_BRANCH."""
    return remote_for(spec, settings.gitops_remote_url, settings.gitops.branch)


def publisher_for(settings: Settings, spec: ModelSpec | None = None) -> GitPublisher:
    """The publisher of ``spec``'s GitOps remote (the settings' default remote without a spec)."""
    remote, _ = resolve_remote(settings, spec)
    if parse_github_remote(remote, settings.github.api_url) is not None:
        return GitHubPublisher.from_settings(settings, spec)
    return LocalGitPublisher.from_settings(settings, spec)


def deployed_model(publisher: GitPublisher, spec: ModelSpec) -> DeployedModel | None:
    """What the base branch's values file says is deployed (None if nothing is, or there is no file)."""
    sha = publisher.head()
    text = publisher.read_file(spec.manifest_path, ref=sha)
    if text is None:
        return None
    return read_deployed(text, spec, commit=sha)


__all__ = ["deployed_model", "publisher_for", "resolve_remote"]
