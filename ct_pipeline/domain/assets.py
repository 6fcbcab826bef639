"""The Airflow assets of a model: what the training DAG is scheduled on besides its cron. No I/O, no Airflow import.

Two assets per model:

- ``x-ct-pipeline://models/<model>/retrain``: a retrain was requested (by the monitor DAG's outlet, the alert
  bridge or ``ctpipe retrain`` through the REST API); the event's ``extra`` carries ``reason``, ``source`` and
  ``requested_by``.
- ``x-ct-pipeline://models/<model>/data``: a new data partition arrived (posted by whatever lands the data).

The scheme starts with ``x-``: Airflow (``airflow.sdk.definitions.asset._sanitize_uri``) returns such URIs
untouched, with no normalizer lookup and no warning; ``airflow`` is the one reserved scheme, and schemes of
providers (``s3``, ``file``, ``postgres``...) carry semantics the URI would have to honour. So the URI stored by
Airflow is exactly the string below, and the REST lookups compare it verbatim.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

SCHEME = "x-ct-pipeline"
ASSET_GROUP = "ct-pipeline"
AssetKind = Literal["retrain", "data"]
KINDS: tuple[AssetKind, ...] = ("retrain", "data")


def asset_uri(model: str, kind: AssetKind) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown asset kind {kind!r}; expected one of {KINDS}")
    if not model or "/" in model:
        raise ValueError(f"not a model name: {model!r}")
    return f"{SCHEME}://models/{model}/{kind}"


def retrain_asset_uri(model: str) -> str:
    """The asset whose events request retraining of ``model``."""
    return asset_uri(model, "retrain")


def data_asset_uri(model: str) -> str:
    """The asset whose events announce a new data partition of ``model``."""
    return asset_uri(model, "data")


def asset_name(model: str, kind: AssetKind) -> str:
    """The asset's human-readable name in Airflow (unique, like the URI)."""
    asset_uri(model, kind)  # validates
    return f"ct.{model}.{kind}"


def retrain_asset_name(model: str) -> str:
    return asset_name(model, "retrain")


def data_asset_name(model: str) -> str:
    return asset_name(model, "data")


def parse_asset_uri(uri: str) -> tuple[str, AssetKind] | None:
    """(model, kind) of one of our asset URIs, None for any other URI."""
    prefix = f"{SCHEME}://models/"
    if not uri.startswith(prefix):
        return None
    model, _, kind = uri[len(prefix) :].partition("/")
    if not model or kind not in KINDS:
        return None
    return model, kind


@dataclass(frozen=True)
class TriggerEvent:
    """One asset event that started a run (read from Airflow's ``triggering_asset_events``)."""

    uri: str
    extra: Mapping[str, Any]
    timestamp: Any = None


def describe_trigger(model: str, events: Iterable[TriggerEvent]) -> tuple[str | None, str | None]:
    """(trigger line, requested_by) of a run started by ``model``'s assets; (None, None) when none did.

    The line is what the promotion body says about why this run happened, e.g. ``retrained because `amount`
    drifted: PSI 0.31 > 0.2 over 48,210 predictions (source: monitor)``.
    """
    lines: list[str] = []
    requested_by: str | None = None
    for event in events:
        parsed = parse_asset_uri(event.uri)
        if parsed is None or parsed[0] != model:
            continue
        extra = dict(event.extra or {})
        source = extra.get("source")
        who = extra.get("requested_by")
        requested_by = requested_by or (str(who) if who else None)
        if parsed[1] == "retrain":
            reason = str(extra.get("reason") or "retrain requested (no reason given)")
        else:
            what = extra.get("partition") or extra.get("reason")
            reason = f"new data arrived: {what}" if what else "new data arrived"
        details = ", ".join(f"{k}: {v}" for k, v in (("source", source), ("requested by", who)) if v)
        line = f"{reason} ({details})" if details else reason
        if line not in lines:
            lines.append(line)
    if not lines:
        return None, None
    return "; ".join(lines), requested_by


__all__ = [
    "ASSET_GROUP",
    "KINDS",
    "SCHEME",
    "TriggerEvent",
    "asset_name",
    "asset_uri",
    "data_asset_name",
    "data_asset_uri",
    "describe_trigger",
    "parse_asset_uri",
    "retrain_asset_name",
    "retrain_asset_uri",
]
