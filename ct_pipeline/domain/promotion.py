"""What a promotion is in a GitOps repository, independent of who hosts it (pure: no I/O).

A promotion ``<model>/v<version>`` is a branch ``promote/<model>/v<version>`` that starts at the base branch and
carries one commit: the bumped values file plus the promotion record next to it
(``promotions/<model>/v<version>/record.json`` and ``PR.md``). Its commit message ends in trailers
(``Promotion-Id: ...``) that survive every way of landing it on the base branch (merge commit, squash, rebase), so
the history can be read back from git alone. Every publisher builds its commits and messages with these helpers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ct_pipeline.domain.records import PromotionRecord
from ct_pipeline.errors import GitOpsError

if TYPE_CHECKING:
    from ct_pipeline.domain.history import GitOpsEvent
    from ct_pipeline.domain.spec import ModelSpec

BRANCH_PREFIX = "promote/"
REVERT_PREFIX = "revert/"
RECORDS_DIR = "promotions"
RECORD_FORMAT = "ct-pipeline/promotion-record/v1"

# The trailer names, named once: keyword of trailers()/parse_trailers() -> the line in the commit message.
TRAILER_KEYS: dict[str, str] = {
    "promotion_id": "Promotion-Id",
    "model": "Promotion-Model",
    "environment": "Promotion-Environment",
    "manifest": "Promotion-Manifest",
    "reverts": "Reverts-Commit",
}
# Anywhere in the message, not only in the final block: a squash merge nests the branch commit's message in its
# own (git indents it by four spaces, GitHub prefixes the subject with "* ").
_TRAILER_RE = re.compile(
    r"^[ \t]*(?:\*[ \t]+)?(" + "|".join(map(re.escape, TRAILER_KEYS.values())) + r"):[ \t]*(\S+)[ \t]*$", re.M
)
_KEY_OF = {name: key for key, name in TRAILER_KEYS.items()}

_MODEL_RE = r"[a-z0-9][a-z0-9-]{0,62}"
_VERSION_RE = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_ID_RE = re.compile(rf"^(?P<model>{_MODEL_RE})/v(?P<version>{_VERSION_RE})$")
_RECORD_PATH_RE = re.compile(rf"^{re.escape(RECORDS_DIR)}/(?P<pid>.+)/record\.json$")


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


def record_path_id(path: str) -> str | None:
    """The promotion id of a ``promotions/<id>/record.json`` path, None for any other path."""
    m = _RECORD_PATH_RE.match(path)
    return m.group("pid") if m else None


def valid_repo_path(path: str) -> str:
    """``path`` normalised, or GitOpsError when it would leave the repository (or touch ``.git``)."""
    p = PurePosixPath(path)
    if not path or p.is_absolute() or ".." in p.parts or p.parts[0] == ".git" or "\\" in path:
        raise GitOpsError(f"refusing to write {path!r}: paths must be relative, inside the repository")
    return str(p)


def remote_for(spec: ModelSpec | None, default_remote: str, default_branch: str) -> tuple[str, str]:
    """(remote url, base branch) of ``spec``: its gitops.remote / base_branch when set explicitly, else the
    defaults (the settings' CTPIPE_GITOPS_REMOTE / CTPIPE_GITOPS_BRANCH)."""
    remote = (spec.gitops.remote if spec is not None else None) or default_remote
    base = default_branch
    if spec is not None and "base_branch" in spec.gitops.model_fields_set:
        base = spec.gitops.base_branch
    return remote, base


# --------------------------------------------------------------------------------------------- records


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
    paths = {valid_repo_path(p): data for p, data in files.items()}
    if record_path(record.id) not in paths:
        record = record.model_copy(update={"files": sorted({*paths, record_path(record.id), body_path(record.id)})})
        paths.update(promotion_files(record))
    return record.model_copy(update={"files": sorted(paths)}), paths


# --------------------------------------------------------------------------------------------- messages


def trailers(**values: str | None) -> str:
    """Trailer lines for the given keys of :data:`TRAILER_KEYS` (empty values left out)."""
    unknown = set(values) - set(TRAILER_KEYS)
    if unknown:
        raise ValueError(f"unknown trailer(s): {sorted(unknown)}")
    return "\n".join(f"{TRAILER_KEYS[k]}: {v}" for k, v in values.items() if v)


def record_trailers(record: PromotionRecord) -> str:
    """The trailers of a promotion's own commit (and of its merge commit)."""
    return trailers(
        promotion_id=record.id, model=record.model, environment=record.environment, manifest=record.manifest_path
    )


def parse_trailers(message: str) -> dict[str, str]:
    """Trailers found anywhere in ``message``, keyed like :func:`trailers` (the first occurrence of each wins)."""
    found: dict[str, str] = {}
    for name, value in _TRAILER_RE.findall(message):
        found.setdefault(_KEY_OF[name], value)
    return found


def promotion_message(record: PromotionRecord) -> str:
    """The message of a promotion branch's commit: title, body, trailers."""
    return f"{record.title}\n\n{record.body.rstrip()}\n\n{record_trailers(record)}\n"


def revert_message(target: GitOpsEvent, model: str, environment: str, restores: str) -> str:
    """The commit message of a rollback, the same from every publisher (its trailers make it findable)."""
    lines = trailers(
        promotion_id=target.promotion_id,
        model=model,
        environment=environment,
        manifest=target.manifest_path,
        reverts=target.commit,
    )
    return (
        f"Revert promotion {target.promotion_id} in {environment}\n\n"
        f"This reverts commit {target.commit}.\n"
        f'{target.manifest_path} goes back to {restores} (before "{target.subject}").\n\n' + lines + "\n"
    )


__all__ = [
    "BRANCH_PREFIX",
    "RECORDS_DIR",
    "RECORD_FORMAT",
    "REVERT_PREFIX",
    "TRAILER_KEYS",
    "body_path",
    "checked_promotion",
    "parse_promotion_id",
    "parse_record_file",
    "parse_trailers",
    "promotion_branch",
    "promotion_files",
    "promotion_id",
    "promotion_message",
    "record_path",
    "record_path_id",
    "record_trailers",
    "remote_for",
    "revert_message",
    "trailers",
    "valid_repo_path",
]
