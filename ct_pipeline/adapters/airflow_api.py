"""Airflow's REST API v2 as the :class:`~ct_pipeline.ports.RetrainTrigger` port: asset events start DAG runs.

Endpoints (Airflow 3.3, ``airflow/api_fastapi``):

- ``POST {api_url}/auth/token`` ``{"username", "password"}`` -> ``201 {"access_token": JWT}`` (simple auth
  manager's login router, mounted under ``/auth``); the JWT is sent as ``Authorization: Bearer``.
- ``GET /api/v2/assets?uri_pattern=<uri>`` -> ``{"assets": [{"id", "uri", ...}]}`` (``uri_pattern`` is a
  case-insensitive substring match, so the exact URI is picked from the answer; only active assets, i.e. ones a
  parsed DAG references, are listed).
- ``POST /api/v2/assets/events`` ``{"asset_id": id, "extra": {...}}`` -> the created ``AssetEventResponse``.
- ``GET /api/v2/assets/events?asset_id=<id>&order_by=-timestamp&limit=1`` -> ``{"asset_events": [...]}``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ct_pipeline.errors import TriggerError

if TYPE_CHECKING:
    import httpx

    from ct_pipeline.settings import AirflowSettings


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:200]
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])[:300]
    return str(body)[:200]


class AirflowAPI:
    """:class:`~ct_pipeline.ports.RetrainTrigger` over Airflow's REST API v2 (asset events)."""

    def __init__(self, settings: AirflowSettings, *, transport: httpx.BaseTransport | None = None) -> None:
        import httpx

        if not settings.api_url:
            raise TriggerError(
                "the Airflow API is not configured: set CTPIPE_AIRFLOW_API_URL (e.g. http://127.0.0.1:8080)"
            )
        self.api_url = settings.api_url.rstrip("/")
        if self.api_url.endswith("/api/v2"):
            self.api_url = self.api_url[: -len("/api/v2")]
        self._username = settings.username
        self._password = settings.password.get_secret_value() if settings.password else None
        self._static_token = settings.token.get_secret_value() if settings.token else None
        if not self._static_token and not (self._username and self._password):
            raise TriggerError(
                f"no credentials for the Airflow API at {self.api_url}: set CTPIPE_AIRFLOW_TOKEN, or "
                "CTPIPE_AIRFLOW_USERNAME and CTPIPE_AIRFLOW_PASSWORD"
            )
        self._token: str | None = self._static_token
        self._client = httpx.Client(base_url=self.api_url, timeout=settings.timeout, transport=transport)
        self._asset_ids: dict[str, int] = {}

    @property
    def target(self) -> str | None:
        return self.api_url

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AirflowAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- HTTP

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        import httpx

        try:
            return self._client.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise TriggerError(
                f"Airflow API at {self.api_url} is unreachable: {method} {path} timed out ({exc})"
            ) from None
        except httpx.HTTPError as exc:
            raise TriggerError(f"Airflow API at {self.api_url} is unreachable: {exc}") from None

    def _login(self) -> str:
        resp = self._send("POST", "/auth/token", json={"username": self._username, "password": self._password})
        if resp.status_code in (401, 403):
            raise TriggerError(
                f"Airflow API at {self.api_url} refused the login of {self._username!r} "
                f"(POST /auth/token: {resp.status_code} {_detail(resp)})"
            )
        if resp.status_code == 404:
            raise TriggerError(
                f"Airflow API at {self.api_url} has no POST /auth/token (404): not Airflow 3 with the simple auth "
                "manager? Use CTPIPE_AIRFLOW_TOKEN with a JWT from your auth manager"
            )
        if resp.status_code not in (200, 201):
            raise TriggerError(
                f"Airflow API at {self.api_url}: POST /auth/token answered {resp.status_code} {_detail(resp)}"
            )
        token = resp.json().get("access_token")
        if not token:
            raise TriggerError(f"Airflow API at {self.api_url}: POST /auth/token returned no access_token")
        return str(token)

    @staticmethod
    def _token_refused(resp: httpx.Response) -> bool:
        # Airflow answers 401 without a token, and 403 "Invalid JWT token" for a bad or expired one.
        return resp.status_code == 401 or (resp.status_code == 403 and "jwt" in _detail(resp).lower())

    def _request(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        if self._token is None:
            self._token = self._login()
        resp = self._send(method, path, headers={"Authorization": f"Bearer {self._token}"}, **kwargs)
        if self._token_refused(resp) and self._static_token is None:  # an expired JWT: log in once more
            self._token = self._login()
            resp = self._send(method, path, headers={"Authorization": f"Bearer {self._token}"}, **kwargs)
        if self._token_refused(resp):
            source = "CTPIPE_AIRFLOW_TOKEN" if self._static_token else f"the JWT of {self._username!r}"
            raise TriggerError(
                f"Airflow API at {self.api_url} rejected the credentials ({source}) while trying to {what} "
                f"({method} {path}: {resp.status_code} {_detail(resp)})"
            )
        if resp.status_code == 403:
            who = f"user {self._username!r}" if self._username and not self._static_token else "the token"
            raise TriggerError(
                f"Airflow API at {self.api_url}: {who} may not {what} ({method} {path}: 403 {_detail(resp)})"
            )
        return resp

    # -- the port

    def asset_id(self, asset_uri: str) -> int | None:
        """Airflow's id of the (active) asset with exactly this URI, None when no parsed DAG references it."""
        if asset_uri in self._asset_ids:
            return self._asset_ids[asset_uri]
        resp = self._request("GET", "/api/v2/assets", f"look up asset {asset_uri}", params={"uri_pattern": asset_uri})
        if resp.status_code != 200:
            raise TriggerError(
                f"Airflow API at {self.api_url}: GET /api/v2/assets answered {resp.status_code} {_detail(resp)}"
            )
        for asset in resp.json().get("assets", []):
            if asset.get("uri") == asset_uri:
                self._asset_ids[asset_uri] = int(asset["id"])
                return self._asset_ids[asset_uri]
        return None

    def _require_asset(self, asset_uri: str) -> int:
        found = self.asset_id(asset_uri)
        if found is None:
            raise TriggerError(
                f"Airflow at {self.api_url} has no asset {asset_uri}: no parsed DAG is scheduled on it "
                "(is the DAG file in the dags folder, and has the dag-processor parsed it?)"
            )
        return found

    def post_event(self, asset_uri: str, extra: Mapping[str, Any]) -> int:
        """Record one event of ``asset_uri`` carrying ``extra``; returns the event's id."""
        asset_id = self._require_asset(asset_uri)
        path = "/api/v2/assets/events"
        resp = self._request(
            "POST", path, f"create an event of {asset_uri}", json={"asset_id": asset_id, "extra": dict(extra)}
        )
        if resp.status_code == 404:
            self._asset_ids.pop(asset_uri, None)
            raise TriggerError(
                f"Airflow at {self.api_url} has no asset {asset_uri} (id {asset_id}) any more: {_detail(resp)}"
            )
        if resp.status_code not in (200, 201):
            raise TriggerError(
                f"Airflow API at {self.api_url}: POST {path} answered {resp.status_code} {_detail(resp)}"
            )
        return int(resp.json()["id"])

    def last_event(self, asset_uri: str) -> datetime | None:
        """When the newest event of ``asset_uri`` was recorded (None if never, or no DAG references it)."""
        asset_id = self.asset_id(asset_uri)
        if asset_id is None:
            return None
        path = "/api/v2/assets/events"
        for attempt in range(5):
            resp = self._request(
                "GET",
                path,
                f"read the events of {asset_uri}",
                params={"asset_id": asset_id, "order_by": "-timestamp", "limit": 1},
            )
            # Airflow 3.3 answers 500 while a run the event created is queued but not started (its response
            # model requires the run's start_date); a second or two later it answers. Seen in `make demo`.
            if resp.status_code < 500 or attempt == 4:
                break
            time.sleep(1.0 + attempt)
        if resp.status_code != 200:
            raise TriggerError(f"Airflow API at {self.api_url}: GET {path} answered {resp.status_code} {_detail(resp)}")
        events = resp.json().get("asset_events") or []
        if not events:
            return None
        stamp = datetime.fromisoformat(str(events[0]["timestamp"]).replace("Z", "+00:00"))
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


__all__ = ["AirflowAPI"]
