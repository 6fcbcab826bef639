"""The request schema, generated from the model server's ``/metadata`` (the model's MLflow signature).

The field types per MLflow dtype are the shared contract's (:mod:`ct_contract`), the ones the model server
validates with.

``{"rows": [Row, ...]}``: 1..max_rows rows, every feature required with its signature type, unknown fields
refused. Rows are TypedDicts, so validating a body (``model_validate_json``: parse + validate in one pass
in pydantic-core) yields plain ``{feature: value}`` dicts ready to forward, no model objects to dump.
"""

from __future__ import annotations

from typing import Any

from ct_contract import DEFAULT_DTYPE, FIELD_TYPES, ROWS_FIELD
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator
from typing_extensions import TypedDict

__all__ = ["FIELD_TYPES", "UpstreamMetadata", "build_request_model", "validation_errors"]


class UpstreamMetadata(BaseModel):
    """What the model server's ``POST /metadata`` answers (extra keys kept)."""

    model_config = ConfigDict(extra="allow")

    model: str
    version: str
    run_id: str | None = None
    data_hash: str | None = None
    image_digest: str | None = None
    task: str | None = None
    features: list[str] = Field(min_length=1)
    feature_dtypes: dict[str, str] = Field(default_factory=dict)

    @field_validator("version", mode="before")
    @classmethod
    def _str_version(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value


def build_request_model(meta: UpstreamMetadata, max_rows: int) -> type[BaseModel]:
    """``{"rows": [Row, ...]}`` with 1..max_rows rows; every feature required, extra fields forbidden.

    ``Model.model_validate_json(body).rows`` is a list of ``{feature: value}`` dicts (values converted:
    whole-number floats to int for integer features, 0/1 to bool for boolean ones).
    """
    unknown = {f: d for f, d in meta.feature_dtypes.items() if d not in FIELD_TYPES}
    if unknown:
        raise ValueError(f"unsupported feature dtypes {unknown}")
    # Functional TypedDict: any column name works as a key, even non-identifiers or "model_config".
    row = TypedDict("Row", {name: FIELD_TYPES[meta.feature_dtypes.get(name, DEFAULT_DTYPE)] for name in meta.features})
    row.__pydantic_config__ = ConfigDict(extra="forbid", title=f"{meta.model} row")  # type: ignore[attr-defined]
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid", title=f"{meta.model} v{meta.version} request"),
        **{ROWS_FIELD: (list[row], Field(min_length=1, max_length=max_rows))},  # type: ignore[valid-type]
    )


def validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """FastAPI-style error list: ``loc`` starts with "body", JSON-safe ``ctx``, no echo of large inputs."""
    errors = []
    for err in exc.errors(include_url=False):
        err["loc"] = ["body", *err["loc"]]
        if "ctx" in err:
            err["ctx"] = {k: str(v) for k, v in err["ctx"].items()}
        if isinstance(err.get("input"), dict | list):
            err["input"] = _preview(err["input"])
        errors.append(err)
    return errors


def _preview(value: Any) -> Any:
    # A missing feature's "input" is the whole row, a bad "rows" the whole list: keep errors small.
    if isinstance(value, list):
        return value[:3] + (["..."] if len(value) > 3 else [])
    if isinstance(value, dict) and len(value) > 50:
        return {k: value[k] for k in list(value)[:50]}
    return value
