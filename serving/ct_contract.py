"""The request contract the gateway and the model service share: one file, imported by both.

- The gateway imports it from ``serving/`` (``--app-dir serving``; the gateway image copies it next to
  ``gateway/``).
- The model service imports it from its bento: ``ct_pipeline.adapters.bento.build_bento`` copies this file next to
  ``service.py`` and includes it in the bento.

So it must not import ct_pipeline, and nothing heavier than pydantic: both sides validate rows with exactly
these types, so a body the gateway accepts is one the model server accepts.

- ``POST /predict`` body: ``{ROWS_FIELD: [{feature: value, ...}, ...]}``, every feature of the model's MLflow
  signature required, unknown fields refused.
- ``FIELD_TYPES``: MLflow signature dtype -> pydantic field type. Numbers are strict (no strings, no booleans)
  and finite; integer features take whole-number floats (converted to int); boolean ones take 0/1.
- ``NUMPY_DTYPES``: MLflow signature dtype -> the numpy dtype the model service builds the model's input with.
- ``DEFAULT_DTYPE``: a feature without a dtype in the metadata is a double.
- ``MAX_BATCH_ROWS``: the rows per model-server call both sides default to (the gateway's
  ``CT_GATEWAY_BATCH_MAX_ROWS``, the model server's adaptive-batching ``CT_MAX_BATCH_SIZE``), so one gateway
  batch fits one BentoML batch.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StrictFloat, StrictStr

__all__ = [
    "DEFAULT_DTYPE",
    "FIELD_TYPES",
    "MAX_BATCH_ROWS",
    "NUMPY_DTYPES",
    "ROWS_FIELD",
    "Boolean",
    "Integer",
    "Number",
]

# The request body's one key (the model service's predict parameter is named after it: BentoML maps the
# JSON body's keys to the API's parameters).
ROWS_FIELD = "rows"
MAX_BATCH_ROWS = 256
DEFAULT_DTYPE = "double"


def _whole_number(value: float) -> int:
    if not float(value).is_integer():
        raise ValueError("Input should be a whole number")
    return int(value)


def _bool_or_01(value: Any) -> Any:
    if isinstance(value, bool) or (type(value) in (int, float) and value in (0, 1)):
        return bool(value)
    raise ValueError("Input should be a boolean, 0 or 1")


Number = Annotated[StrictFloat, Field(allow_inf_nan=False)]
Integer = Annotated[Number, AfterValidator(_whole_number)]
Boolean = Annotated[bool, BeforeValidator(_bool_or_01)]

# MLflow signature dtype -> field type. Numbers are strict: strings and booleans are refused.
FIELD_TYPES: dict[str, Any] = {
    "double": Number,
    "float": Number,
    "long": Integer,
    "integer": Integer,
    "boolean": Boolean,
    "string": StrictStr,
}

# MLflow signature dtype -> numpy dtype of the model's input (the model service's frame)
NUMPY_DTYPES: dict[str, str] = {
    "double": "float64",
    "float": "float32",
    "long": "int64",
    "integer": "int32",
    "boolean": "bool",
    "string": "object",
}
