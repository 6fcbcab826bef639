#!/usr/bin/env bash
# The whole loop on one machine, with the commands a user would type. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=fraud-detector
DAG=ct_fraud_detector
END=$(date -u +%Y-%m-%dT00:00:00+00:00)
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

say "Demo data: 60 days of card transactions, partitioned by day"
run ctpipe demo-data --days 60

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
say "Done"
echo "promotion branch : ${branch:-none} (remote $CTPIPE_HOME/gitops.git)"
echo "served model     : $served"
echo "model image      : $image"
echo "prediction API   : curl -s -X POST $gw/predict -H 'content-type: application/json' -d '{\"rows\": $sample}'"
echo "MLflow UI        : mlflow ui --backend-store-uri sqlite:///$CTPIPE_HOME/mlflow.db --host 127.0.0.1"
echo "roll back        : .venv/bin/ctpipe rollback $MODEL && .venv/bin/ctpipe reconcile"
echo "stop the stack   : make stop"
