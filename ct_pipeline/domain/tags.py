"""Every key ct-pipeline writes into another system's metadata, named once.

MLflow run / model-version / registered-model tags (``ct.*``), registry aliases, and the OCI labels of the
model-service image (the pre-defined ``org.opencontainers.image.*`` keys plus ours, reverse-DNS).
"""

from __future__ import annotations

# -- MLflow registry aliases
CHAMPION = "champion"  # what the GitOps base branch deploys (the registry follows Git)
CHALLENGER = "challenger"  # the best candidate of the newest run

# -- MLflow run tags (one run per candidate)
RUN_MODEL = "ct.model"
RUN_CANDIDATE = "ct.candidate"
RUN_CANDIDATE_KIND = "ct.candidate_kind"
RUN_DATA_HASH = "ct.data_hash"
RUN_WINDOW_START = "ct.window_start"
RUN_WINDOW_END = "ct.window_end"
RUN_GIT_COMMIT = "mlflow.source.git.commit"  # MLflow's own key: its UI links it

# -- model-version tags
VERSION_CANDIDATE = RUN_CANDIDATE
VERSION_DATA_HASH = RUN_DATA_HASH
FINGERPRINT = "ct.fingerprint"  # same data + same candidate definition = the same model
ROLLED_BACK = "ct.rolled_back"
ROLLED_BACK_COMMIT = "ct.rolled_back.commit"
DEPLOYED_ENVIRONMENT = "ct.deployed.environment"
DEPLOYED_COMMIT = "ct.deployed.commit"
GATE_DECISION = "ct.gate.decision"
GATE_REASON = "ct.gate.reason"
GATE_FORCED = "ct.gate.forced"
GATE_DELTA = "ct.gate.delta"
GATE_CI = "ct.gate.ci"
GATE_CHAMPION_VERSION = "ct.gate.champion_version"

# -- registered-model tags
PRODUCTION_HISTORY_PREFIX = "ct.production_history."


def production_history_tag(environment: str) -> str:
    return f"{PRODUCTION_HISTORY_PREFIX}{environment}"


# -- MLflow artifact paths on the challenger's run
GATE_DECISION_ARTIFACT = "gate/decision.json"
GATE_PLOTS_DIR = "gate/plots"
# The monitor's reference, logged by the gate on the challenger's run (used once it is the champion).
MONITOR_REFERENCE_DIR = "monitoring/reference"
REFERENCE_FEATURES = "features.parquet"  # a sample of the training snapshot's rows (features)
REFERENCE_SCORES = "scores.parquet"  # the gate's holdout: the model's scores and the labels
REFERENCE_PROMISE = "promise.json"  # the metric on the holdout with its CI: what the gate promised
MONITOR_REPORTS_DIR = "monitoring/reports"  # one folder per report: report.json, report.html, report.png
# -- model-version tags written by the monitor
MONITOR_LAST_REPORT = "ct.monitor.last_report"
MONITOR_LAST_STATUS = "ct.monitor.last_status"

# -- OCI image labels
OCI = "org.opencontainers.image"
OCI_TITLE = f"{OCI}.title"
OCI_DESCRIPTION = f"{OCI}.description"
OCI_VERSION = f"{OCI}.version"
OCI_SOURCE = f"{OCI}.source"
OCI_REVISION = f"{OCI}.revision"
OCI_CREATED = f"{OCI}.created"
OCI_BASE_NAME = f"{OCI}.base.name"

CT_LABEL = "io.ct-pipeline"
LABEL_MODEL = f"{CT_LABEL}.model"
LABEL_MODEL_VERSION = f"{CT_LABEL}.model-version"
LABEL_RUN_ID = f"{CT_LABEL}.mlflow-run-id"
LABEL_DATA_HASH = f"{CT_LABEL}.data-hash"
LABEL_BENTO_TAG = f"{CT_LABEL}.bento-tag"
LABEL_BENTO_MODEL_TAG = f"{CT_LABEL}.bento-model-tag"
IDENTITY_LABELS = (LABEL_MODEL, LABEL_MODEL_VERSION, LABEL_RUN_ID)  # what makes two images the same model
