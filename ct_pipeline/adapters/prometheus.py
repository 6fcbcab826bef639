"""Thin adapters to the alerting side: the Pushgateway (the monitor's numbers go in), Prometheus' and
Alertmanager's HTTP APIs (what fired comes out). Any of them unreachable is :class:`AlertPathDown` naming the URL:
the report is still written, but nobody would be paged.
"""

from __future__ import annotations

import urllib.error
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx

from ct_pipeline.domain.monitor_report import PUSH_JOB
from ct_pipeline.errors import AlertPathDown

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

DEFAULT_TIMEOUT = 10.0


def _base(url: str) -> str:
    if not url or not url.startswith(("http://", "https://")):
        raise AlertPathDown(f"not an http(s) URL: {url!r}")
    return url.rstrip("/")


class Pushgateway:
    """The :class:`~ct_pipeline.ports.MetricsPusher`: one group per model, ``{job="ct_monitor", model}``, replaced
    whole on every push (so a monitor that stopped judging something leaves no stale series behind)."""

    def __init__(self, url: str, *, job: str = PUSH_JOB, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url = _base(url)
        self.job = job
        self.timeout = timeout

    @property
    def target(self) -> str | None:
        return self.url

    def push(self, model: str, registry: CollectorRegistry) -> None:
        from prometheus_client import push_to_gateway

        try:
            push_to_gateway(
                self.url, job=self.job, grouping_key={"model": model}, registry=registry, timeout=self.timeout
            )
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace").strip()
            raise AlertPathDown(f"Pushgateway at {self.url} refused the push for {model}: {exc.code} {body}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AlertPathDown(f"Pushgateway at {self.url} is unreachable: {reason}") from None

    def delete(self, model: str) -> None:
        """Remove this model's group (a retired model must not keep firing on its last numbers)."""
        from prometheus_client import delete_from_gateway

        try:
            delete_from_gateway(self.url, job=self.job, grouping_key={"model": model}, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise AlertPathDown(f"Pushgateway at {self.url} refused to delete {model}: {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AlertPathDown(f"Pushgateway at {self.url} is unreachable: {reason}") from None


class _HttpAPI:
    what = "service"

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT, transport: httpx.BaseTransport | None = None):
        self.url = _base(url)
        self.timeout = timeout
        self._transport = transport

    @property
    def target(self) -> str:
        return self.url

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            with httpx.Client(timeout=self.timeout, transport=self._transport) as client:
                resp = client.request(method, self.url + path, **kwargs)
        except httpx.HTTPError as exc:
            raise AlertPathDown(f"{self.what} at {self.url} is unreachable: {exc}") from None
        if resp.status_code >= 400:
            raise AlertPathDown(
                f"{self.what} at {self.url} answered {resp.status_code} to {method} {path}: {resp.text.strip()[:300]}"
            )
        return resp

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self._request(method, path, **kwargs)
        try:
            return resp.json()
        except ValueError:
            raise AlertPathDown(f"{self.what} at {self.url}: {method} {path} did not answer JSON") from None

    def ready(self) -> bool:
        """``/-/ready`` answers 200; False when not (yet) ready or unreachable (a probe never raises)."""
        try:
            with httpx.Client(timeout=min(self.timeout, 2.0), transport=self._transport) as client:
                return client.get(self.url + "/-/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def reload(self) -> None:
        """POST ``/-/reload``: re-read the configuration (and Prometheus' rule files)."""
        self._request("POST", "/-/reload")


class PrometheusAPI(_HttpAPI):
    """Prometheus' HTTP API v1: what it evaluates and what fires."""

    what = "Prometheus"

    def _data(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        body = self._json("GET", path, params=params)
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else body
            raise AlertPathDown(f"Prometheus at {self.url}: {path} failed: {error}")
        return body.get("data")

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (``state`` pending or firing), each with labels, annotations, activeAt, value."""
        return list((self._data("/api/v1/alerts") or {}).get("alerts", []))

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result: ``[{"metric": {...}, "value": [ts, "v"]}, ...]`` (a scalar: one entry)."""
        data = self._data("/api/v1/query", {"query": expr}) or {}
        result = data.get("result", [])
        if data.get("resultType") in ("scalar", "string"):
            return [{"metric": {}, "value": result}]
        return list(result)

    def rules(self) -> list[dict[str, Any]]:
        """The loaded rule groups, each with its rules' health, state and last error."""
        return list((self._data("/api/v1/rules") or {}).get("groups", []))

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets with their health and last error."""
        return list((self._data("/api/v1/targets") or {}).get("activeTargets", []))


class AlertmanagerAPI(_HttpAPI):
    """Alertmanager's API v2: what it holds (deduplicated, grouped) and a way in for alerts raised elsewhere
    (the DAG's failure callback)."""

    what = "Alertmanager"

    def alerts(self, filters: Sequence[str] = (), *, active: bool = True) -> list[dict[str, Any]]:
        """Alerts it holds; ``filters`` are label matchers such as ``'model="fraud-detector"'``."""
        params: list[tuple[str, str]] = [("filter", f) for f in filters]
        if active:
            params.append(("active", "true"))
        body = self._json("GET", "/api/v2/alerts", params=params)
        return list(body or [])

    def post_alerts(self, alerts: Sequence[Mapping[str, Any]]) -> None:
        """Raise alerts directly: each ``{"labels": {...}, "annotations": {...}, "startsAt"?, "endsAt"?}``."""
        self._request("POST", "/api/v2/alerts", json=[dict(a) for a in alerts])
