"""BentoML 1.4 service serving one MLflow pyfunc model built by the ct-pipeline.

Everything model-specific comes from ``ct_model.json`` next to this file (written by
``ct_pipeline.adapters.bento.build_bento``): the bento model tag to load, the lineage (model, version,
MLflow run id, data hash), the task and the ordered features with their MLflow dtypes.

Endpoints (all BentoML APIs are POST):
- ``POST /predict``  ``{"rows": [{"feature": value, ...}, ...]}`` -> list of float scores
  (positive-class probability for binary classification, the prediction for regression).
  Adaptive batching: rows of concurrent requests are concatenated into one DataFrame.
- ``POST /metadata`` ``{}`` -> lineage + features (the gateway builds its request schema from it).
BentoML's own ``/healthz``, ``/livez``, ``/readyz`` and ``/metrics`` stay.

This file deliberately does not import ct_pipeline: it runs inside the bento / container. The request
contract it shares with the gateway (field types per MLflow dtype, the body's ``rows`` key, the batch size)
is ``ct_contract.py``, copied next to it into the bento by ``build_bento``.
"""

import contextlib
import gc
import json
import logging
import math
import operator
import os
from pathlib import Path
from typing import Annotated, Any

# Threads per model call (LightGBM/OpenMP, BLAS). One by default: on a small machine the gateway, the
# server's event loop and the model share a few cores, and OpenMP's spinning threads contend with them
# (measured: LightGBM 1-row predict 0.06 ms with 1 thread vs 0.6 ms with 2 on a busy 2-core machine).
# Set before numpy/lightgbm are imported; an explicit OMP_NUM_THREADS wins.
_MODEL_THREADS = os.environ.get("CT_MODEL_THREADS", "1")
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _MODEL_THREADS)

import bentoml  # noqa: E402
from bentoml.validators import ContentType  # noqa: E402
from ct_contract import DEFAULT_DTYPE, FIELD_TYPES, MAX_BATCH_ROWS, NUMPY_DTYPES, Number  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field, create_model  # noqa: E402

logger = logging.getLogger("ct_model_service")
CONFIG_PATH = Path(os.environ.get("CT_MODEL_CONFIG", Path(__file__).with_name("ct_model.json")))
if not CONFIG_PATH.is_file():
    raise FileNotFoundError(
        f"ct_model.json not found at {CONFIG_PATH}: this service is built by ct_pipeline.adapters.bento.build_bento "
        "(or point CT_MODEL_CONFIG at a config file)"
    )
CONFIG: dict[str, Any] = json.loads(CONFIG_PATH.read_text())
FEATURES: list[str] = list(CONFIG["features"])
FEATURE_DTYPES: dict[str, str] = dict(CONFIG.get("feature_dtypes") or {})
TASK: str = CONFIG["task"]

# Adaptive batching: a generous latency budget so the dispatcher batches instead of shedding load
# (platform notes: max_latency_ms=10 answered 70% "process is overloaded"; 200 ms held up).
# CT_BATCHING=false serves every request on its own (the bench's "batching off" baseline).
BATCHING = os.environ.get("CT_BATCHING", "true").strip().lower() not in ("0", "false", "no", "off")
MAX_BATCH_SIZE = int(os.environ.get("CT_MAX_BATCH_SIZE", str(MAX_BATCH_ROWS)))
MAX_LATENCY_MS = int(os.environ.get("CT_MAX_LATENCY_MS", "500"))
# Image the server runs from (set by the deployment, e.g. from the pushed image's digest); else ct_model.json.
IMAGE_DIGEST = os.environ.get("CT_IMAGE_DIGEST") or None


def _row_model() -> type[BaseModel]:
    # Internal field names f0..fn with the feature names as aliases: any column name works,
    # even ones that are not identifiers or clash with BaseModel attributes.
    fields = {
        f"f{i}": (FIELD_TYPES.get(FEATURE_DTYPES.get(name, DEFAULT_DTYPE), Number), Field(alias=name))
        for i, name in enumerate(FEATURES)
    }
    return create_model("Row", __config__=ConfigDict(extra="forbid", populate_by_name=False), **fields)


Row = _row_model()
# A fixed media type: without one BentoML derives it from the output's JSON schema on every response
# (a third of the server's CPU per 1-row call here).
_JsonScores = Annotated[list[float], ContentType("application/json")]


def _limit_model_threads(model: Any, threads: int) -> None:
    """Apply CT_MODEL_THREADS to an estimator's own ``n_jobs`` (it overrides OMP_NUM_THREADS).

    LightGBM's sklearn API with ``n_jobs=None`` predicts with every core: on a busy 2-core machine a 1-row
    call took 12 ms instead of 1.8 ms with ``n_jobs=1``. Only the thread count changes, never the scores.
    """
    if threads < 1:
        return
    try:
        raw = model.get_raw_model()
    except Exception:  # not every flavour exposes its raw model
        return
    get_params = getattr(raw, "get_params", None)
    if get_params is None:
        return
    with contextlib.suppress(Exception):
        names = [k for k in get_params(deep=True) if k == "n_jobs" or k.endswith("__n_jobs")]
        if names:
            raw.set_params(**dict.fromkeys(names, threads))


@bentoml.service(
    name=CONFIG.get("service_name", "ct_model_service"),
    workers=int(os.environ.get("CT_WORKERS", "1")),
    traffic={"timeout": 60},
    labels={k: str(v) for k, v in (CONFIG.get("labels") or {}).items()},
)
class CTModelService:
    bento_model = bentoml.models.BentoModel(CONFIG["bento_model_tag"])

    def __init__(self) -> None:
        import numpy as np
        import pandas as pd

        self._np, self._pd = np, pd
        # Loaded once per worker process.
        self.model = bentoml.mlflow.load_model(self.bento_model)
        _limit_model_threads(self.model, int(_MODEL_THREADS))
        self._dtypes = [NUMPY_DTYPES.get(FEATURE_DTYPES.get(f, DEFAULT_DTYPE), "float64") for f in FEATURES]
        # one shared non-object dtype: every frame is a single 2-D block (decided once, not per call)
        self._block_dtype = self._dtypes[0] if len(set(self._dtypes)) == 1 and self._dtypes[0] != "object" else None
        self._columns = pd.Index(FEATURES)
        self._row_values = operator.attrgetter(*(f"f{i}" for i in range(len(FEATURES))))
        self._predict = self._choose_predict()
        # The model, MLflow and BentoML leave ~10^6 long-lived objects: without freezing them every full
        # collection walks them all, a ~150 ms pause that showed up as the 1-row p99.
        gc.collect()
        gc.freeze()

    def _frame(self, rows: list[BaseModel]):
        """The model input for validated rows: typed columns, built without per-cell pandas work."""
        values = [self._row_values(row) for row in rows]
        if len(FEATURES) == 1:
            values = [(v,) for v in values]
        return self._frame_from_values(values)

    def _frame_from_values(self, values: list[tuple]):
        np, pd = self._np, self._pd
        if self._block_dtype is not None:
            # one 2-D block: ~10 us for 1 or 64 rows, where DataFrame(list).astype(dict) took ~2 ms
            block = np.array(values, dtype=self._block_dtype).reshape(len(values), len(FEATURES))
            return pd.DataFrame(block, columns=self._columns, copy=False)
        columns = zip(*values, strict=True) if values else [()] * len(FEATURES)
        return pd.DataFrame(
            {f: np.array(col, dtype=dt) for f, dt, col in zip(FEATURES, self._dtypes, columns, strict=True)},
            columns=self._columns,
        )

    def _choose_predict(self):
        """The function scoring a frame: the estimator's own method when that is provably the same answer.

        MLflow's pyfunc ``predict`` re-checks every frame against the signature (~1.2 ms a call here) before
        calling the sklearn flavour's ``predict_fn``. Rows reaching ``_frame`` are already validated against
        that signature by the request model and typed from it, so for the sklearn flavour the estimator's
        method is called directly (LightGBM 200 trees, 1 row: 1.9 ms -> 0.66 ms). It is used only if it
        gives exactly the pyfunc's scores on the model's logged input example; otherwise, and for other
        flavours, or with CT_PREDICT_PATH=pyfunc, every call goes through pyfunc ``predict``.
        """
        pyfunc_predict = self.model.predict
        self.predict_path = "pyfunc"
        if os.environ.get("CT_PREDICT_PATH", "auto").strip().lower() == "pyfunc":
            return pyfunc_predict
        pyfunc_conf = self.model.metadata.flavors.get("python_function", {})
        if pyfunc_conf.get("loader_module") != "mlflow.sklearn":
            return pyfunc_predict
        try:
            method = getattr(self.model.get_raw_model(), pyfunc_conf.get("predict_fn") or "predict")
            example = self.model.metadata.load_input_example(self.bento_model.path_of("mlflow_model"))
            probe = self._frame_from_values(list(example[FEATURES].itertuples(index=False, name=None)))
            same = self._np.array_equal(
                self._np.asarray(method(probe)), self._np.asarray(pyfunc_predict(probe)), equal_nan=True
            )
        except Exception as exc:  # no example, missing columns, an estimator that refuses frames...
            logger.warning("scoring through MLflow pyfunc predict: direct estimator call not verified (%s)", exc)
            return pyfunc_predict
        if not same:
            logger.warning("scoring through MLflow pyfunc predict: the estimator's scores differ from pyfunc's")
            return pyfunc_predict
        self.predict_path = f"estimator.{method.__name__}"
        return method

    def _scores(self, raw: Any) -> list[float]:
        arr = self._np.asarray(raw, dtype="float64")
        if TASK == "binary_classification" and arr.ndim == 2:
            arr = arr[:, -1] if arr.shape[1] >= 2 else arr[:, 0]
        return [float(v) if math.isfinite(v) else None for v in arr.reshape(-1)]

    @bentoml.api(batchable=BATCHING, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def predict(self, rows: list[Row]) -> _JsonScores:  # type: ignore[valid-type]
        """Scores for a list of rows, one float per row, in order."""
        if not rows:
            return []
        return self._scores(self._predict(self._frame(rows)))

    @bentoml.api
    def metadata(self) -> dict[str, Any]:
        """Lineage of the served model and its ordered features with MLflow dtypes."""
        keys = ("model", "version", "run_id", "data_hash", "task", "bento_model_tag", "model_uri", "built_at")
        return {
            **{k: CONFIG.get(k) for k in keys},
            "image_digest": IMAGE_DIGEST or CONFIG.get("image_digest"),
            "features": FEATURES,
            "feature_dtypes": {f: FEATURE_DTYPES.get(f, DEFAULT_DTYPE) for f in FEATURES},
            "predict_path": self.predict_path,
        }
