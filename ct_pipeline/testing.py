"""In-memory fakes of every port, for unit tests of the steps (as httpx ships MockTransport).

    ctx = make_context(spec, tmp_path, frame=df)      # a StepContext wired to the fakes below
    outcome = run_pipeline(ctx)

They keep the contracts the real adapters keep (one branch per promotion id, merges recorded on the base
branch, reverts of the newest promotion, aliases and tags per version), without git, MLflow, BentoML or a
container engine. Integration tests use the real adapters.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ct_pipeline.context import StepContext
from ct_pipeline.domain.history import GitOpsEvent
from ct_pipeline.domain.records import (
    BentoRef,
    DeployedModel,
    GateDecision,
    ModelRef,
    PromotionRecord,
    RunRequest,
    ServedState,
)
from ct_pipeline.errors import (
    DataError,
    GitOpsError,
    NothingToRevertError,
    PromotionNotFoundError,
    RegistryError,
)
from ct_pipeline.ports import DataReader
from ct_pipeline.settings import Settings, load_settings

if TYPE_CHECKING:
    import pandas as pd

    from ct_pipeline.domain.spec import DataSource, ModelSpec


def _sha(*parts: object) -> str:
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()


class FixedClock:
    """A clock that advances by ``step`` on every call (deterministic timestamps in records)."""

    def __init__(self, start: datetime | None = None, step: timedelta = timedelta(seconds=1)) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._step = step

    def now(self) -> datetime:
        self._now += self._step
        return self._now


class InMemoryPublisher:
    """:class:`~ct_pipeline.ports.GitPublisher` over dicts: branches of files, a base branch of commits."""

    def __init__(self, files: Mapping[str, str] | None = None, base_branch: str = "main") -> None:
        self.base_branch = base_branch
        self._clock = FixedClock()
        root = _sha("root")
        # trees hold bytes (evidence plots are PNGs); read_file decodes text files
        self._commits: dict[str, dict[str, bytes]] = {root: {p: t.encode() for p, t in (files or {}).items()}}
        self._log: list[str] = [root]  # the base branch, oldest first
        self._branches: dict[str, tuple[PromotionRecord, dict[str, bytes]]] = {}
        self._events: list[GitOpsEvent] = []  # newest last

    @property
    def remote_url(self) -> str:
        return "memory://gitops"

    def _tree(self, ref: str | None) -> dict[str, bytes]:
        if ref is None or ref == self.base_branch:
            return self._commits[self._log[-1]]
        if ref in self._commits:
            return self._commits[ref]
        for record, files in self._branches.values():
            if ref == record.branch:
                return files
        raise GitOpsError(f"unknown ref {ref!r}")

    def read_file(self, path: str, ref: str | None = None) -> str | None:
        data = self._tree(ref).get(path)
        return data.decode() if data is not None else None

    def head(self, ref: str | None = None) -> str:
        if ref is None or ref == self.base_branch:
            return self._log[-1]
        return _sha(ref, sorted(self._tree(ref).items()))

    def _commit(self, files: dict[str, bytes]) -> str:
        sha = _sha(self._log[-1], sorted(files.items()), len(self._log))
        self._commits[sha] = files
        self._log.append(sha)
        return sha

    def open_promotion(self, record: PromotionRecord, files: Mapping[str, bytes]) -> PromotionRecord:
        tree = {**self._tree(None), **files}
        opened = record.model_copy(update={"status": "open", "commit": _sha(record.id, sorted(tree.items()))})
        self._branches[record.id] = (opened, tree)
        return opened

    def list_promotions(self, model: str | None = None) -> list[PromotionRecord]:
        return [r for r, _ in self._branches.values() if model is None or r.model == model]

    def get_promotion(self, promotion_id: str) -> PromotionRecord | None:
        found = self._branches.get(promotion_id)
        return found[0] if found else None

    def merge_promotion(self, promotion_id: str) -> str:
        if promotion_id not in self._branches:
            raise PromotionNotFoundError(f"no promotion {promotion_id!r} on {self.remote_url}")
        record, tree = self._branches[promotion_id]
        if record.status != "open":
            raise GitOpsError(f"promotion {promotion_id} is {record.status}")
        sha = self._commit(dict(tree))
        self._branches[promotion_id] = (record.model_copy(update={"status": "merged"}), tree)
        self._events.append(
            GitOpsEvent(
                kind="promote",
                commit=sha,
                promotion_id=promotion_id,
                model=record.model,
                version=record.version,
                environment=record.environment,
                manifest_path=record.manifest_path,
                at=self._clock.now(),
                subject=f"Merge promotion {promotion_id}",
            )
        )
        return sha

    def close_promotion(self, promotion_id: str) -> PromotionRecord:
        record, tree = self._branches[promotion_id]
        closed = record.model_copy(update={"status": "closed"})
        self._branches[promotion_id] = (closed, tree)
        return closed

    def revert_last_promotion(self, model: str, environment: str) -> str:
        live = [e for e in self.history(model) if e.kind == "promote" and not e.reverted_by]
        live = [e for e in live if e.environment == environment]
        if not live:
            raise NothingToRevertError(f"no promotion of {model} in {environment} is left to revert")
        target = live[0]
        before = self._commits[self._log[self._log.index(target.commit) - 1]]
        tree = dict(self._tree(None))
        if target.manifest_path in before:
            tree[target.manifest_path] = before[target.manifest_path]
        else:
            tree.pop(target.manifest_path, None)
        sha = self._commit(tree)
        self._events.append(
            target.model_copy(
                update={"kind": "revert", "commit": sha, "at": self._clock.now(), "reverts": target.commit}
            )
        )
        return sha

    def history(self, model: str | None = None) -> list[GitOpsEvent]:
        reverted = {e.reverts: e.commit for e in self._events if e.kind == "revert"}
        events = [e.model_copy(update={"reverted_by": reverted.get(e.commit)}) for e in self._events]
        return [e for e in reversed(events) if model is None or e.model == model]


@dataclass
class _Version:
    run_id: str
    model: Any
    tags: dict[str, str] = field(default_factory=dict)


class _PyfuncOf:
    """What ``mlflow.pyfunc.load_model`` returns for a logged sklearn model: ``predict`` = the logged method."""

    def __init__(self, model: Any, method: str) -> None:
        self._predict = getattr(model, method)
        self.metadata = None

    def predict(self, frame: Any) -> Any:
        return self._predict(frame)


class InMemoryTracker:
    """:class:`~ct_pipeline.ports.Tracker`: experiments, runs and a registry of model objects, in memory."""

    tracking_uri = "memory://mlflow"

    def __init__(self) -> None:
        self.experiments: dict[str, str] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, dict[str, _Version]] = {}
        self.aliases: dict[tuple[str, str], str] = {}
        self.model_tags: dict[str, dict[str, str]] = {}
        self.artifacts: dict[tuple[str, str], bytes] = {}
        self._active: str | None = None
        self._ids = itertools.count(1)

    # -- tracking
    def ensure_experiment(self, name: str, artifact_location: str) -> str:
        return self.experiments.setdefault(name, str(len(self.experiments) + 1))

    @contextmanager
    def start_run(self, experiment_id: str, run_name: str, tags: Mapping[str, str]) -> Iterator[str]:
        run_id = f"run{next(self._ids):04d}"
        self.runs[run_id] = {"name": run_name, "tags": dict(tags), "params": {}, "metrics": {}, "inputs": []}
        self._active = run_id
        try:
            yield run_id
        finally:
            self._active = None

    def _run(self) -> dict[str, Any]:
        if self._active is None:
            raise RuntimeError("no active run")
        return self.runs[self._active]

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._run()["params"].update({k: str(v) for k, v in params.items()})

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        self._run()["metrics"].update(metrics)

    def dataset(self, frame: pd.DataFrame, *, source: str, targets: str, name: str) -> Any:
        return {"name": name, "source": source, "rows": len(frame)}

    def log_dataset(self, dataset: Any, context: str) -> None:
        self._run()["inputs"].append({**dataset, "context": context})

    def log_model(
        self,
        flavor: str,
        model: Any,
        *,
        registered_model_name: str,
        input_example: pd.DataFrame,
        output_example: Any,
        pip_requirements: list[str],
        **flavor_options: Any,
    ) -> str:
        method = flavor_options.get("pyfunc_predict_fn", "predict")
        versions = self.versions.setdefault(registered_model_name, {})
        version = str(len(versions) + 1)
        assert self._active is not None
        versions[version] = _Version(self._active, _PyfuncOf(model, method))
        return version

    def log_dict(self, run_id: str, data: dict[str, Any], artifact_path: str) -> None:
        import json

        self.artifacts[(run_id, artifact_path)] = json.dumps(data).encode()

    def log_files(self, run_id: str, files: Mapping[str, bytes], artifact_dir: str) -> None:
        for name, data in files.items():
            self.artifacts[(run_id, f"{artifact_dir}/{name}")] = data

    def read_artifact(self, run_id: str, artifact_path: str) -> bytes:
        try:
            return self.artifacts[(run_id, artifact_path)]
        except KeyError:
            raise RegistryError(f"no artifact {artifact_path} on run {run_id}") from None

    def input_dtypes(self, model_dir: Path) -> dict[str, str] | None:
        return None

    def download_model(self, model: str, version: str, dst: Path) -> Path:
        raise RegistryError("the in-memory tracker keeps model objects, not model directories")

    # -- registry
    def _version(self, model: str, version: str) -> _Version:
        try:
            return self.versions[model][str(version)]
        except KeyError:
            raise RegistryError(f"registered model {model!r} version {version!r} not found") from None

    def get_alias(self, model: str, alias: str) -> ModelRef | None:
        version = self.aliases.get((model, alias))
        return ModelRef(version=version, run_id=self._version(model, version).run_id) if version else None

    def set_alias(self, model: str, alias: str, version: str) -> None:
        self._version(model, version)
        self.aliases[(model, alias)] = str(version)

    def delete_alias(self, model: str, alias: str) -> None:
        self.aliases.pop((model, alias), None)

    def set_version_tags(self, model: str, version: str, tags: Mapping[str, str]) -> None:
        self._version(model, version).tags.update({k: str(v) for k, v in tags.items()})

    def get_version_tags(self, model: str, version: str) -> dict[str, str]:
        return dict(self._version(model, version).tags)

    def version_exists(self, model: str, version: str) -> bool:
        return str(version) in self.versions.get(model, {})

    def model_version_run(self, model: str, version: str) -> str:
        return self._version(model, version).run_id

    def versions_tagged(self, model: str, key: str, value: str) -> list[str]:
        found = [v for v, info in self.versions.get(model, {}).items() if info.tags.get(key) == value]
        return sorted(found, key=int)

    def set_model_tag(self, model: str, key: str, value: str) -> None:
        self.model_tags.setdefault(model, {})[key] = value

    def load_pyfunc(self, model: str, version: str) -> Any:
        return self._version(model, version).model


class FrameReader:
    """:class:`~ct_pipeline.ports.DataReader` over one DataFrame (filtered to the window like a real source)."""

    def __init__(self, frame: pd.DataFrame, uri: str = "memory://frame") -> None:
        self.frame, self.uri = frame, uri

    def read(self, source: DataSource, spec: ModelSpec, start: datetime, end: datetime) -> tuple[pd.DataFrame, str]:
        import pandas as pd

        t = pd.to_datetime(self.frame[spec.data.time_column], utc=True)
        missing = [c for c in (spec.data.time_column, *spec.data.features, spec.data.target) if c not in self.frame]
        if missing:
            raise DataError(f"{spec.name}: column(s) {missing} not found in {self.uri}")
        return self.frame[(t >= pd.Timestamp(start)) & (t < pd.Timestamp(end))].copy(), self.uri


class FakeBentoStore:
    """:class:`~ct_pipeline.ports.BentoStore` that records what it was asked to package."""

    def __init__(self) -> None:
        self.built: list[BentoRef] = []

    def build(self, spec: ModelSpec, decision: GateDecision) -> BentoRef:
        version, run_id = decision.challenger.version, decision.challenger.run_id
        ref = BentoRef(
            model=spec.name,
            version=version,
            run_id=run_id,
            bento_tag=f"{spec.name}:v{version}-{run_id[:12]}",
            bento_model_tag=f"{spec.name}:v{version}-{run_id[:12]}",
            data_hash=decision.snapshot.content_hash,
        )
        self.built.append(ref)
        return ref

    def path_of(self, bento_tag: str) -> Path | None:
        return None


class FakeRuntime:
    """:class:`~ct_pipeline.ports.Runtime` that only remembers what it serves."""

    def __init__(self) -> None:
        self.served: dict[str, ServedState] = {}

    def apply(self, desired: DeployedModel) -> ServedState:
        from ct_pipeline.domain.records import ProcessInfo

        now = datetime.now(UTC)
        server = ProcessInfo(pid=0, port=0, url="memory://model", log="", started_at=now)
        state = ServedState(
            model=desired.model,
            environment=desired.environment,
            version=desired.version,
            run_id=desired.run_id,
            bento_tag=desired.bento_tag or "",
            model_server=server,
            started_at=now,
            action="started",
        )
        self.served[desired.model] = state
        return state

    def status(self) -> list[ServedState]:
        return list(self.served.values())

    def stop(self, model: str | None = None) -> list[ServedState]:
        stopped = [s for m, s in self.served.items() if model in (None, m)]
        for s in stopped:
            self.served.pop(s.model)
        return stopped


def make_context(
    spec: ModelSpec,
    home: Path | None = None,
    *,
    settings: Settings | None = None,
    data: DataReader | None = None,
    frame: pd.DataFrame | None = None,
    request: RunRequest | None = None,
    publisher: InMemoryPublisher | None = None,
    tracker: InMemoryTracker | None = None,
    image_engine: Any = None,
    image_registry: Any = None,
    predictions: Any = None,
    labels: Any = None,
    metrics: Any = None,
    retrain: Any = None,
) -> StepContext:
    """A StepContext on the fakes (state under ``home``, or the given ``settings``); pass the same publisher /
    tracker to chain runs, ``data`` (e.g. the real SourceReader) or ``frame`` for the window's rows."""
    if settings is None:
        if home is None:
            raise ValueError("make_context needs home or settings")
        settings = load_settings(paths={"home": home}, image={"engine": "none" if image_engine is None else "auto"})
    return StepContext(
        spec=spec,
        settings=settings,
        request=request or RunRequest(end=datetime(2026, 1, 1, tzinfo=UTC)),
        publisher=publisher or InMemoryPublisher(),
        tracker=tracker or InMemoryTracker(),
        data=data or (FrameReader(frame) if frame is not None else FrameReader(_empty_frame(spec))),
        bentos=FakeBentoStore(),
        runtime=FakeRuntime(),
        clock=FixedClock(),
        engine_factory=(lambda: image_engine) if image_engine is not None else None,
        image_registry_factory=(lambda: image_registry) if image_registry is not None else None,
        predictions=predictions,
        labels=labels,
        metrics=metrics,
        retrain=retrain,
    )


def _empty_frame(spec: ModelSpec) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(columns=[spec.data.time_column, *spec.data.features, spec.data.target])


# -- the feedback half


class TablePredictionLog:
    """:class:`~ct_pipeline.ports.PredictionLogReader` over an in-memory frame with the log's flattened columns
    (``ts``, ``request_id``, ``row``, ``version``, ``prediction`` and one column per feature)."""

    def __init__(self, frame: pd.DataFrame, model: str | None = None) -> None:
        self.frame, self.model = frame, model

    @property
    def location(self) -> str:
        return "memory://predictions"

    def scan(
        self, model: str, start: datetime, end: datetime, features: Any, batch_size: int = 65_536
    ) -> Iterator[Any]:
        import pandas as pd
        import pyarrow as pa

        if self.model is not None and model != self.model:
            return
        ts = pd.to_datetime(self.frame["ts"], utc=True)
        window = self.frame[(ts >= pd.Timestamp(start)) & (ts < pd.Timestamp(end))]
        columns = ["ts", "request_id", "row", "version", "prediction", *features]
        table = pa.Table.from_pandas(window[columns], preserve_index=False)
        yield from table.to_batches(max_chunksize=batch_size)


class FrameLabels:
    """:class:`~ct_pipeline.ports.LabelsReader` over one frame of labels."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame

    def read(self, source: Any, start: datetime, end: datetime) -> pd.DataFrame:
        missing = [c for c in (source.key, source.label) if c not in self.frame]
        if missing:
            raise DataError(f"labels source memory://labels has no column(s) {missing}")
        return self.frame.copy()


class RecordingPusher:
    """:class:`~ct_pipeline.ports.MetricsPusher` that keeps what was pushed; ``down=True`` fails like a dead URL."""

    def __init__(self, target: str = "memory://pushgateway", down: bool = False) -> None:
        self._target, self.down = target, down
        self.pushed: list[tuple[str, Any]] = []

    @property
    def target(self) -> str | None:
        return self._target

    def push(self, model: str, registry: Any) -> None:
        from ct_pipeline.errors import AlertPathDown

        if self.down:
            raise AlertPathDown(f"Pushgateway at {self._target} is unreachable: connection refused")
        self.pushed.append((model, registry))


class RecordingTrigger:
    """:class:`~ct_pipeline.ports.RetrainTrigger` keeping its asset events in memory."""

    def __init__(self, clock: Any = None) -> None:
        self.events: list[tuple[str, dict[str, Any], datetime]] = []
        self.clock = clock or FixedClock()

    @property
    def target(self) -> str | None:
        return "memory://airflow"

    def last_event(self, asset_uri: str) -> datetime | None:
        times = [at for uri, _, at in self.events if uri == asset_uri]
        return max(times) if times else None

    def post_event(self, asset_uri: str, extra: Mapping[str, Any]) -> int:
        self.events.append((asset_uri, dict(extra), self.clock.now()))
        return len(self.events)
