"""One error root for everything ct-pipeline refuses or cannot do, in families by loop stage.

The CLI prints a :class:`CtPipelineError` as one line (the message names what is wrong); anything else is a bug
and keeps its traceback. Adapters translate their library's exceptions into these at the boundary.
"""

from __future__ import annotations


class CtPipelineError(Exception):
    """Root: a clear, user-facing failure (bad input, a refused operation, an unreachable service)."""


class ConfigError(CtPipelineError, ValueError):
    """A settings value or a model spec that cannot be used."""


class SpecError(ConfigError):
    """A model spec that cannot be used; the message names the file and the offending field(s)."""


class DataError(CtPipelineError, ValueError):
    """The data window cannot be read or is unusable (empty, missing columns, wrong types)."""


class TrainingError(CtPipelineError):
    """A candidate could not be trained, scored or logged."""


class TrackingError(CtPipelineError):
    """The MLflow tracking server / model registry refused or could not be reached."""


class RegistryError(TrackingError):
    """A registered model version cannot be read or loaded."""


class GateError(CtPipelineError):
    """The gate could not reach a decision (not: the gate said no; that is a normal outcome)."""


class PackageError(CtPipelineError):
    """The Bento could not be built."""


class ImageError(PackageError):
    """The model-service image could not be built, pushed or pinned."""


class EngineUnavailable(ImageError):
    """No usable container engine (the loop can continue with the Bento only)."""


class PromotionError(CtPipelineError):
    """A promotion cannot be proposed."""


class PromotionRefusedError(PromotionError):
    """The gate's decision and the package do not describe the same approved model."""


class AlreadyDeployedError(PromotionError):
    """The base branch already deploys this exact model."""


class GitOpsError(CtPipelineError):
    """A GitOps operation that could not be done; the remote is left as it was."""


class RemoteError(GitOpsError):
    """The remote cannot be read (missing, not a git repository, unreachable) or lacks the base branch."""


class PushRejectedError(GitOpsError):
    """The remote refused the push (a hook, a protected branch, or someone else pushed first)."""


class PromotionNotFoundError(GitOpsError, LookupError):
    """No promotion with that id exists on the remote."""


class MergeConflictError(GitOpsError):
    """The promotion does not merge cleanly into the base branch (which is left untouched)."""


class NothingToRevertError(GitOpsError):
    """No promotion merge of that model/environment on the base branch is left to revert."""


class RevertPendingError(GitOpsError):
    """The revert pull request is open but could not be merged (e.g. reviews required); ``url`` names it."""

    def __init__(self, message: str, url: str | None, commit: str):
        super().__init__(message)
        self.url, self.commit = url, commit


class ManifestError(GitOpsError, ValueError):
    """A values file that cannot be read or bumped safely."""


class RolloutError(CtPipelineError):
    """The serving runtime could not apply, report or stop a deployment."""


__all__ = [name for name, value in dict(globals()).items() if isinstance(value, type) and issubclass(value, Exception)]


class MonitoringError(CtPipelineError):
    """The monitor could not judge the served model (no predictions, no reference...)."""


class NoPredictionsError(MonitoringError, DataError):
    """No predictions were logged for the model in the window."""


class AlertPathDown(MonitoringError):
    """Prometheus, the Pushgateway or Alertmanager did not answer (the URL is in the message)."""


class TriggerError(MonitoringError):
    """A retrain request could not be posted to Airflow (the URL is in the message)."""
