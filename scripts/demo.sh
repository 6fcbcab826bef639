#!/usr/bin/env bash
# The whole loop on one machine, with the commands a user would type. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=fraud-detector
DAG=ct_fraud_detector
TODAY=$(date -u +%Y-%m-%dT00:00:00+00:00)
# The data drifts in its last two days; the first champion is trained on the 30 days before that.
END=$(date -u -d "$(date -u +%Y-%m-%d) -2 days" +%Y-%m-%dT00:00:00+00:00)
# The local gateway closes a prediction-log part (what the monitor can read) after this many seconds.
export CTPIPE_PREDICTION_LOG_ROLL_SECONDS=${CTPIPE_PREDICTION_LOG_ROLL_SECONDS:-5}
say() { printf '\n\033[1;34m==> %s\033[0m\n' "$*"; }
run() { printf '\033[2m$ %s\033[0m\n' "$*"; "$@"; }

say "Model specs"
run ctpipe validate

say "Embedded defaults: local GitOps remote (bare git repo), MLflow on SQLite under $CTPIPE_HOME"
run ctpipe init

say "Container engine for the model-service image: podman + a local registry (make containers)"
if [ -f "$CTPIPE_HOME/containers/env" ]; then
  . "$CTPIPE_HOME/containers/env"
  echo "the package step builds the Bento's OCI image, pushes it to $CTPIPE_IMAGE_REGISTRY and pins it by digest"
else
  export CTPIPE_IMAGE_ENGINE=none
  echo "no container engine here: $(cat "$CTPIPE_HOME/containers/unavailable" 2>/dev/null || echo 'make containers did not run')"
  echo "the demo continues with the Bento only (no image in the GitOps manifest)"
fi

say "Demo data: 60 days of card transactions, partitioned by day; fraudsters change tactics in the last 2 days"
run ctpipe demo-data --days 60 --drift-days 2

say "Airflow metadata DB (SQLite) and the DAG generated from models/$MODEL.yaml"
airflow db migrate >"$CTPIPE_HOME/airflow-migrate.log" 2>&1 || { cat "$CTPIPE_HOME/airflow-migrate.log"; exit 1; }
run airflow dags reserialize >/dev/null 2>&1
run airflow dags list 2>/dev/null | grep -E "dag_id|ct_" || true

say "Run the DAG: sync -> pull -> train -> gate -> package -> promote (window ends $END)"
before=$(ctpipe promotions list --model "$MODEL" --json | python -c 'import json,sys; print(len([p for p in json.load(sys.stdin) if p["status"]=="open"]))')
log="$CTPIPE_HOME/dag-test.log"
if ! airflow dags test "$DAG" -c "{\"end\": \"$END\"}" >"$log" 2>&1; then
  tail -50 "$log"; echo "the DAG run failed; full log: $log"; exit 1
fi
grep -E "PROMOTE:|NOT PROMOTED:|promotion .* on branch" "$log" | sed -E 's/^.*(PROMOTE:|NOT PROMOTED:|promotion )/\1/' || true

say "Promotions (the pull requests) on the GitOps remote"
run ctpipe promotions list --model "$MODEL"
open_id=$(ctpipe promotions list --model "$MODEL" --json | python -c 'import json,sys; o=[p for p in json.load(sys.stdin) if p["status"]=="open"]; print(o[-1]["id"] if o else "")')
if [ -n "$open_id" ]; then
  say "A reviewer reads the promotion and merges it"
  run ctpipe promotions show "$open_id" | head -30
  run ctpipe promotions merge "$open_id"
else
  echo "no open promotion this time (the gate did not promote): the current model stays in production"
fi

say "Reconcile: the local stand-in for Flux serves what main's manifest names"
run ctpipe reconcile

say "Status: git, registry and serving side by side"
run ctpipe status "$MODEL"

say "A prediction through the gateway"
sample='[{"amount": 912.5, "hour": 3, "is_weekend": 1, "merchant_risk": 0.71, "distance_from_home_km": 240.0, "card_age_days": 12, "txn_count_24h": 9, "is_foreign": 1}, {"amount": 23.4, "hour": 14, "is_weekend": 0, "merchant_risk": 0.08, "distance_from_home_km": 3.2, "card_age_days": 1800, "txn_count_24h": 2, "is_foreign": 0}]'
run ctpipe predict "$sample"

branch=$(git --git-dir="$CTPIPE_HOME/gitops.git" branch --list 'promote/*' --sort=-committerdate --format='%(refname:short)' | head -1)
gw=$(python -c 'from ct_pipeline.settings import Settings; s=Settings(); print(f"http://{s.serving.bind_host}:{s.serving.gateway_port}")')
served=$(curl -s -X POST "$gw/predict" -H 'content-type: application/json' -d "{\"rows\": $sample}" | python -c '
import json, sys
b = json.load(sys.stdin)
print("%s v%s (MLflow run %s), predictions %s" % (b["model"], b["version"], b["run_id"], [round(p, 4) for p in b["predictions"]]))')
image=$(python - "$MODEL" <<'PY'
import sys
from ct_pipeline.adapters.publishers import deployed_model, publisher_for
from ct_pipeline.settings import load_settings
from ct_pipeline.domain.spec import find_spec
s = load_settings()
spec = find_spec(s.paths.models_dir, sys.argv[1])
d = deployed_model(publisher_for(s, spec), spec)
print(f"{d.image_repository}@{d.image_digest} (tag {d.image_tag})" if d and d.image_digest else "none (Bento only)")
PY
)
say "The feedback loop: a real Airflow scheduler, Prometheus + Alertmanager + Pushgateway, the alert bridge"
run ctpipe airflow up
# `airflow dags test` above registered the DAGs paused; the scheduler runs them once unpaused
run airflow dags unpause "$DAG" >/dev/null
run airflow dags unpause "${DAG}_monitor" >/dev/null
run ctpipe monitoring up --interval 5s

say "Traffic from before the drift through the gateway (the prediction log), and the monitor's report"
t0=$(date -u +%s)
run ctpipe traffic "$MODEL" --end "$END" --days 2 --rows 3000
sleep 8   # the gateway closes its prediction-log part; the monitor reads closed parts only
run ctpipe monitor "$MODEL" --window "$(( $(date -u +%s) - t0 + 5 ))s" --no-trigger

say "The drift arrives: today's rows through the gateway, then the monitor (it pushes its numbers to Prometheus)"
t1=$(date -u +%s); drift_at=$(date -u +%H:%M:%S)
run ctpipe traffic "$MODEL" --end "$TODAY" --days 2 --rows 3000
sleep 8
run ctpipe monitor "$MODEL" --window "$(( $(date -u +%s) - t1 + 2 ))s" --no-trigger
report_dir="$CTPIPE_HOME/reports/$MODEL/latest"

say "Prometheus fires the alert; Alertmanager's webhook asks Airflow to retrain (an asset event)"
python - "$MODEL" "$drift_at" <<'PY'
import sys, time
from datetime import UTC, datetime
from ct_pipeline.adapters.airflow_api import AirflowAPI
from ct_pipeline.adapters.local_airflow import LocalAirflow
from ct_pipeline.adapters.local_monitoring import LocalMonitoringStack
from ct_pipeline.adapters.prometheus import PrometheusAPI
from ct_pipeline.domain.assets import retrain_asset_uri
from ct_pipeline.settings import AirflowSettings, load_settings

model, drift_at = sys.argv[1], sys.argv[2]
s = load_settings()
prom = PrometheusAPI(LocalMonitoringStack(s).endpoints().prometheus_url)
af = LocalAirflow(s).endpoints()
api = AirflowAPI(AirflowSettings(api_url=af.url, username=af.username, password=af.password))
print(f"{drift_at}  drifted traffic starts")
deadline = time.time() + 120
alert = None
while time.time() < deadline and alert is None:
    alert = next((a for a in prom.alerts() if a["labels"].get("model") == model and a["state"] == "firing"
                  and a["labels"].get("ct_action") == "retrain"), None)
    time.sleep(2)
if alert is None:
    sys.exit("no retrain alert fired within 120 s (see ctpipe monitoring status)")
print(f"{alert['activeAt'][11:19]}  Prometheus: {alert['labels']['alertname']} firing: {alert['annotations'].get('reason')}")
event = None
while time.time() < deadline + 60 and event is None:
    event = api.last_event(retrain_asset_uri(model))
    time.sleep(2)
print(f"{event:%H:%M:%S}  Airflow: retrain asset event recorded" if event else "no asset event (cooldown? see the bridge log)")
PY

say "Airflow's scheduler runs the training DAG on that event; the promotion carries the reason"
python - "$DAG" <<'PY'
import sys, time
from ct_pipeline.adapters.airflow_api import AirflowAPI
from ct_pipeline.adapters.local_airflow import LocalAirflow
from ct_pipeline.settings import AirflowSettings, load_settings
dag = sys.argv[1]
af = LocalAirflow(load_settings()).endpoints()
api = AirflowAPI(AirflowSettings(api_url=af.url, username=af.username, password=af.password))
deadline = time.time() + 900
while time.time() < deadline:
    runs = api._request("GET", f"/api/v2/dags/{dag}/dagRuns", "list runs", params={"order_by": "-run_after"}).json()["dag_runs"]
    runs = [r for r in runs if r["run_type"] == "asset_triggered"]
    if runs and runs[0]["state"] in ("success", "failed"):
        r = runs[0]
        print(f"{r['start_date'][11:19]} -> {r['end_date'][11:19]}  {dag} {r['dag_run_id']}: {r['state']}")
        sys.exit(0 if r["state"] == "success" else 1)
    time.sleep(5)
sys.exit("the asset-triggered training run did not finish within 15 minutes")
PY
retrained=$(ctpipe promotions list --model "$MODEL" --json | python -c 'import json,sys; o=[p for p in json.load(sys.stdin) if p["status"]=="open"]; print(o[-1]["id"] if o else "")')
if [ -n "$retrained" ]; then
  run ctpipe promotions show "$retrained" | head -12
fi

say "Done"
echo "promotion branch : ${branch:-none} (remote $CTPIPE_HOME/gitops.git)"
echo "served model     : $served"
echo "model image      : $image"
echo "prediction API   : curl -s -X POST $gw/predict -H 'content-type: application/json' -d '{\"rows\": $sample}'"
echo "MLflow UI        : mlflow ui --backend-store-uri sqlite:///$CTPIPE_HOME/mlflow.db --host 127.0.0.1"
echo "roll back        : .venv/bin/ctpipe rollback $MODEL && .venv/bin/ctpipe reconcile"
echo "monitor report   : $report_dir/report.html (and in MLflow, on the champion's run)"
echo "airflow UI       : $(ctpipe airflow status 2>/dev/null | grep -Eo 'http://[^ ]+' | head -1)  (login: ctpipe airflow status)"
echo "prometheus       : $(ctpipe monitoring status 2>/dev/null | grep -Eo 'http://127.0.0.1:[0-9]+' | head -1)"
echo "retrained model  : ${retrained:-none} (merge it: ctpipe promotions merge ${retrained:-<id>} && ctpipe reconcile)"
echo "stop the stack   : make stop"
