"""The alerting stack on one machine: a real Prometheus, Alertmanager and Pushgateway (Debian's binaries, installed
by ``scripts/monitoring-setup.sh``), for the demo and the tests.

:class:`LocalMonitoringStack` writes the configurations under ``<CTPIPE_HOME>/monitoring/`` (``prometheus.yml``,
one generated rule file per model under ``rules/``, ``alertmanager.yml``), starts the three as detached process
groups bound to 127.0.0.1 on free ports, waits until each answers ``/-/ready``, and records pids and URLs in
``state.json`` (logs in ``logs/``). Prometheus scrapes the Pushgateway (``honor_labels``, so the monitor's
``job``/``model`` labels stay) and each model's gateway (``/metrics``, labelled with the model), evaluates the
rules and sends what fires to Alertmanager, which routes ``ct_action="retrain"`` to a webhook (the retrain bridge)
and everything else to a receiver that drops it.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ct_pipeline.adapters.local_runtime import free_port, pid_alive, stop_process_group
from ct_pipeline.adapters.prometheus import AlertmanagerAPI, PrometheusAPI, Pushgateway
from ct_pipeline.adapters.state_file import locked, read_state, write_state
from ct_pipeline.domain.alert_rules import GATEWAY_JOB, alert_rules_yaml, dump_yaml
from ct_pipeline.errors import MonitoringError

if TYPE_CHECKING:
    from ct_pipeline.domain.spec import ModelSpec
    from ct_pipeline.settings import Settings

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
PUSHGATEWAY_JOB = "ct-pushgateway"
RETRAIN_RECEIVER = "ct-retrain"
NULL_RECEIVER = "null"
SETUP_HINT = (
    "run scripts/monitoring-setup.sh (apt-get install prometheus prometheus-alertmanager prometheus-pushgateway)"
)
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
# component -> (binary, first port tried)
COMPONENTS = {
    "pushgateway": ("prometheus-pushgateway", 9091),
    "alertmanager": ("prometheus-alertmanager", 9093),
    "prometheus": ("prometheus", 9090),
}


@dataclass(frozen=True)
class MonitoringEndpoints:
    prometheus_url: str
    alertmanager_url: str
    pushgateway_url: str


def find_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MonitoringError(f"{name} not found on PATH: {SETUP_HINT}")
    return path


def promtool_check(path: str | Path, what: str = "rules") -> str:
    """``promtool check rules FILE`` (or ``check config``); returns its output, raises MonitoringError with it."""
    promtool = find_binary("promtool")
    proc = subprocess.run([promtool, "check", what, str(path)], capture_output=True, text=True, timeout=60)
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise MonitoringError(f"promtool check {what} {path} failed:\n{output}")
    return output


def normalize_target(target: str) -> tuple[str, str]:
    """``http://127.0.0.1:8700`` / ``127.0.0.1:8700`` -> (``127.0.0.1:8700``, scheme)."""
    parts = urlsplit(target if "://" in target else f"http://{target}")
    if not parts.hostname or not parts.port:
        raise MonitoringError(f"scrape target {target!r} needs a host and a port")
    return f"{parts.hostname}:{parts.port}", parts.scheme


class LocalMonitoringStack:
    """Prometheus + Alertmanager + Pushgateway under ``<CTPIPE_HOME>/monitoring``.

    ``scrape_interval``/``evaluation_interval`` are Prometheus' global ones (tests use 1s); ``group_wait``,
    ``group_interval`` and ``repeat_interval`` shape Alertmanager's notifications (one retrain webhook per
    alert group, repeated at most every ``repeat_interval``: the monitor's cooldown guards the rest).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        scrape_interval: str = "15s",
        evaluation_interval: str = "15s",
        group_wait: str = "10s",
        group_interval: str = "1m",
        repeat_interval: str = "12h",
        gateway_job: str = GATEWAY_JOB,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        self.settings = settings
        self.dir = settings.paths.home_dir / "monitoring"
        self.logs = self.dir / "logs"
        self.rules_dir = self.dir / "rules"
        self.state_path = self.dir / "state.json"
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.group_wait = group_wait
        self.group_interval = group_interval
        self.repeat_interval = repeat_interval
        self.gateway_job = gateway_job
        self.ready_timeout = ready_timeout

    # -- public ------------------------------------------------------------------------------------------

    def up(
        self,
        specs: Sequence[ModelSpec],
        scrape_targets: Sequence[str] | Mapping[str, Sequence[str]] = (),
        webhook_url: str | None = None,
    ) -> MonitoringEndpoints:
        """Write the configurations and start (or, when running, reload) the stack.

        ``scrape_targets``: the gateways' addresses (``host:port`` or URLs), per model (``{model: [targets]}``),
        or a plain list when there is one spec. ``webhook_url``: where Alertmanager posts ``ct_action="retrain"``
        alerts (None: nowhere, they are only shown).
        """
        targets = self._targets(specs, scrape_targets)
        binaries = {name: find_binary(binary) for name, (binary, _) in COMPONENTS.items()}
        with self._locked():
            state = self._read_state()
            if state and all(self._alive(state, name) for name in COMPONENTS):
                ports = state["ports"]
                state.update(models=[s.name for s in specs], targets=targets, webhook_url=webhook_url)
                self._write_configs(specs, ports, targets, webhook_url)
                self._write_state(state)
                self._reload(state)
                return self._endpoints(ports)
            if state:
                self._stop_all(state)
            return self._start(specs, targets, webhook_url, binaries)

    def reload(self, specs: Sequence[ModelSpec] | None = None) -> None:
        """Rewrite the rule files (when ``specs`` are given) and the configurations, then POST ``/-/reload`` to
        Prometheus and Alertmanager."""
        with self._locked():
            state = self._read_state()
            if not state or not all(self._alive(state, name) for name in COMPONENTS):
                raise MonitoringError(f"the local monitoring stack is not running ({self.state_path})")
            if specs is not None:
                state["models"] = [s.name for s in specs]
                self._write_configs(specs, state["ports"], state["targets"], state.get("webhook_url"))
                self._write_state(state)
            self._reload(state)

    def down(self) -> bool:
        """Stop the three processes; False when nothing was running."""
        with self._locked():
            state = self._read_state()
            if not state:
                return False
            stopped = self._stop_all(state)
            state["pids"] = {}
            state["stopped_at"] = datetime.now(UTC).isoformat()
            self._write_state(state)
            return stopped

    def status(self) -> dict[str, dict[str, Any]]:
        """Per component: pid, url, alive, ready (``/-/ready`` answers 200)."""
        state = self._read_state() or {}
        out: dict[str, dict[str, Any]] = {}
        for name in COMPONENTS:
            port = (state.get("ports") or {}).get(name)
            url = f"http://{HOST}:{port}" if port else None
            alive = self._alive(state, name)
            ready = bool(alive and url and PrometheusAPI(url, timeout=2.0).ready())
            out[name] = {"pid": (state.get("pids") or {}).get(name), "url": url, "alive": alive, "ready": ready}
        return out

    def endpoints(self) -> MonitoringEndpoints | None:
        """The running stack's URLs, None when it is not running."""
        state = self._read_state()
        if not state or not all(self._alive(state, name) for name in COMPONENTS):
            return None
        return self._endpoints(state["ports"])

    # -- configuration -----------------------------------------------------------------------------------

    def _targets(
        self, specs: Sequence[ModelSpec], scrape_targets: Sequence[str] | Mapping[str, Sequence[str]]
    ) -> dict[str, list[str]]:
        names = [s.name for s in specs]
        if isinstance(scrape_targets, Mapping):
            unknown = sorted(set(scrape_targets) - set(names))
            if unknown:
                raise MonitoringError(f"scrape targets for models without a spec: {unknown}")
            per_model = {model: list(t) for model, t in scrape_targets.items()}
        elif isinstance(scrape_targets, str):
            raise MonitoringError("scrape_targets must be a list of targets, not one string")
        elif scrape_targets:
            if len(names) != 1:
                raise MonitoringError(
                    f"{len(names)} specs: give the gateway scrape targets per model ({{model: [targets]}}), "
                    "so the SLO rules can tell the models apart"
                )
            per_model = {names[0]: list(scrape_targets)}
        else:
            per_model = {}
        for targets in per_model.values():
            for target in targets:
                normalize_target(target)
        return per_model

    def _prometheus_config(
        self, models: Sequence[str], ports: Mapping[str, int], targets: Mapping[str, Sequence[str]]
    ) -> dict[str, Any]:
        scrape: list[dict[str, Any]] = [
            {
                "job_name": PUSHGATEWAY_JOB,
                "honor_labels": True,
                "static_configs": [{"targets": [f"{HOST}:{ports['pushgateway']}"]}],
            }
        ]
        gateway_groups: dict[str, list[dict[str, Any]]] = {}
        for model, model_targets in targets.items():
            for target in model_targets:
                address, scheme = normalize_target(target)
                gateway_groups.setdefault(scheme, []).append({"targets": [address], "labels": {"model": model}})
        for scheme, groups in sorted(gateway_groups.items()):
            job = self.gateway_job if scheme == "http" else f"{self.gateway_job}-{scheme}"
            scrape.append({"job_name": job, "scheme": scheme, "metrics_path": "/metrics", "static_configs": groups})
        return {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.evaluation_interval},
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"{HOST}:{ports['alertmanager']}"]}]}]},
            "rule_files": [str(self.rules_dir / f"{model}.yml") for model in models],
            "scrape_configs": scrape,
        }

    def _alertmanager_config(self, webhook_url: str | None) -> dict[str, Any]:
        receivers: list[dict[str, Any]] = [{"name": NULL_RECEIVER}]
        route: dict[str, Any] = {
            "receiver": NULL_RECEIVER,
            "group_by": ["alertname", "model", "monitor"],
            "group_wait": self.group_wait,
            "group_interval": self.group_interval,
            "repeat_interval": self.repeat_interval,
        }
        if webhook_url:
            receivers.append(
                {
                    "name": RETRAIN_RECEIVER,
                    "webhook_configs": [{"url": webhook_url, "send_resolved": False, "max_alerts": 0}],
                }
            )
            route["routes"] = [{"matchers": ['ct_action="retrain"'], "receiver": RETRAIN_RECEIVER}]
        return {"route": route, "receivers": receivers}

    def _write_configs(
        self,
        specs: Sequence[ModelSpec],
        ports: Mapping[str, int],
        targets: Mapping[str, Sequence[str]],
        webhook_url: str | None,
    ) -> None:
        self.rules_dir.mkdir(parents=True, exist_ok=True)
        wanted = {f"{s.name}.yml" for s in specs}
        for old in self.rules_dir.glob("*.yml"):
            if old.name not in wanted:
                old.unlink()
        for spec in specs:
            path = self.rules_dir / f"{spec.name}.yml"
            _write_atomic(path, alert_rules_yaml(spec, job_gateway=self.gateway_job))
            promtool_check(path)
        prometheus_yml = self.dir / "prometheus.yml"
        _write_atomic(prometheus_yml, dump_yaml(self._prometheus_config([s.name for s in specs], ports, targets)))
        promtool_check(prometheus_yml, "config")
        _write_atomic(self.dir / "alertmanager.yml", dump_yaml(self._alertmanager_config(webhook_url)))

    # -- processes ---------------------------------------------------------------------------------------

    def _commands(self, binaries: Mapping[str, str], ports: Mapping[str, int]) -> dict[str, list[str]]:
        data = self.dir / "data"
        return {
            "pushgateway": [
                binaries["pushgateway"],
                f"--web.listen-address={HOST}:{ports['pushgateway']}",
                f"--persistence.file={data / 'pushgateway' / 'metrics.store'}",
                "--persistence.interval=5s",
            ],
            "alertmanager": [
                binaries["alertmanager"],
                f"--config.file={self.dir / 'alertmanager.yml'}",
                f"--storage.path={data / 'alertmanager'}",
                f"--web.listen-address={HOST}:{ports['alertmanager']}",
                "--cluster.listen-address=",  # no gossip: a single instance
            ],
            "prometheus": [
                binaries["prometheus"],
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={data / 'prometheus'}",
                f"--web.listen-address={HOST}:{ports['prometheus']}",
                "--web.enable-lifecycle",
                f"--web.external-url=http://{HOST}:{ports['prometheus']}",
            ],
        }

    def _start(
        self,
        specs: Sequence[ModelSpec],
        targets: dict[str, list[str]],
        webhook_url: str | None,
        binaries: Mapping[str, str],
    ) -> MonitoringEndpoints:
        taken: set[int] = set()
        ports: dict[str, int] = {}
        for name, (_, start) in COMPONENTS.items():
            ports[name] = free_port(HOST, start, taken)
            taken.add(ports[name])
        for sub in ("pushgateway", "alertmanager", "prometheus"):
            (self.dir / "data" / sub).mkdir(parents=True, exist_ok=True)
        self._write_configs(specs, ports, targets, webhook_url)
        state: dict[str, Any] = {
            "ports": ports,
            "pids": {},
            "binaries": dict(binaries),
            "models": [s.name for s in specs],
            "targets": targets,
            "webhook_url": webhook_url,
            "started_at": datetime.now(UTC).isoformat(),
        }
        commands = self._commands(binaries, ports)
        try:
            for name in COMPONENTS:  # pushgateway, alertmanager, then prometheus (it sends to alertmanager)
                log = self.logs / f"{name}.log"
                proc = self._spawn(commands[name], log)
                state["pids"][name] = proc.pid
                self._write_state(state)
                self._wait_ready(proc, f"http://{HOST}:{ports[name]}", log, name)
        except BaseException:
            self._stop_all(state)
            state["pids"] = {}
            self._write_state(state)
            raise
        logger.info("local monitoring stack up: %s", self._endpoints(ports))
        return self._endpoints(ports)

    def _spawn(self, cmd: list[str], log: Path) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            out.write(f"\n=== {datetime.now(UTC).isoformat()} {' '.join(cmd)}\n".encode())
            out.flush()
            return subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
                close_fds=True,
            )

    def _wait_ready(self, proc: subprocess.Popen, url: str, log: Path, name: str) -> None:
        api = PrometheusAPI(url, timeout=2.0)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise MonitoringError(
                    f"{name} exited with code {proc.returncode} before it was ready at {url}; log {log}:\n"
                    f"{_log_tail(log)}"
                )
            if api.ready():
                return
            time.sleep(0.2)
        raise MonitoringError(
            f"{name} not ready at {url} after {self.ready_timeout:.0f}s; log {log}:\n{_log_tail(log)}"
        )

    def _alive(self, state: Mapping[str, Any], name: str) -> bool:
        pid = (state.get("pids") or {}).get(name)
        return pid_alive(pid, COMPONENTS[name][0])

    def _stop_all(self, state: Mapping[str, Any]) -> bool:
        stopped = False
        for name in reversed(list(COMPONENTS)):  # prometheus first: it would alert on the others going away
            pid = (state.get("pids") or {}).get(name)
            if pid and stop_process_group(pid, COMPONENTS[name][0], timeout=STOP_TIMEOUT):
                stopped = True
        return stopped

    def _reload(self, state: Mapping[str, Any]) -> None:
        ports = state["ports"]
        AlertmanagerAPI(f"http://{HOST}:{ports['alertmanager']}").reload()
        PrometheusAPI(f"http://{HOST}:{ports['prometheus']}").reload()

    def _endpoints(self, ports: Mapping[str, int]) -> MonitoringEndpoints:
        return MonitoringEndpoints(
            prometheus_url=f"http://{HOST}:{ports['prometheus']}",
            alertmanager_url=f"http://{HOST}:{ports['alertmanager']}",
            pushgateway_url=Pushgateway(f"http://{HOST}:{ports['pushgateway']}").url,
        )

    # -- state -------------------------------------------------------------------------------------------

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return locked(self.dir)

    def _read_state(self) -> dict[str, Any] | None:
        return read_state(self.state_path)

    def _write_state(self, state: Mapping[str, Any]) -> None:
        write_state(self.state_path, state)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
