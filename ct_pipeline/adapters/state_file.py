"""The state file of a local stack (Airflow, the alerting stack, the alert bridge): a JSON file written
atomically, and a lock file serializing the commands that change it."""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ct_pipeline.errors import MonitoringError


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "state.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_state(path: Path) -> dict[str, Any] | None:
    """The state, None when there is none; a corrupt file is one clear error."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise MonitoringError(f"{path} is not valid JSON ({exc}): remove it") from None
    return data if isinstance(data, dict) else None


def write_state(path: Path, state: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(dict(state), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
