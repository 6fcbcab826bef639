"""The gateway's settings: ``CT_GATEWAY_*`` environment variables (see serving/README.md)."""

from __future__ import annotations

from ct_contract import MAX_BATCH_ROWS
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["GatewaySettings"]


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CT_GATEWAY_", extra="ignore")

    upstream_url: str | None = Field(default=None, description="Model server base URL, e.g. http://127.0.0.1:3700")
    admin_token: SecretStr | None = Field(default=None, description="Bearer token for /admin/*; unset = open")
    # -- request limits
    max_rows: int = Field(default=1000, ge=1, description="Rows per request")
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Request body size (413 beyond)")
    # -- upstream connections
    connect_timeout: float = Field(default=2.0, gt=0)
    request_timeout: float = Field(default=30.0, gt=0, description="Per upstream request (read/write/pool)")
    metadata_timeout: float = Field(default=5.0, gt=0)
    readiness_timeout: float = Field(default=2.0, gt=0)
    drain_timeout: float = Field(default=30.0, ge=0, description="Wait for in-flight requests after a swap")
    metadata_retry_interval: float = Field(default=1.0, gt=0)
    max_connections: int = Field(default=100, ge=1)
    max_keepalive_connections: int = Field(default=20, ge=0)
    # Below the model server's 5 s (uvicorn) keep-alive: never reuse a socket the server is closing.
    keepalive_expiry: float = Field(default=2.0, ge=0)
    # -- micro-batching (see gateway.batcher)
    batching: bool = Field(default=True, description="Micro-batch concurrent requests into one upstream call")
    batch_max_rows: int = Field(default=MAX_BATCH_ROWS, ge=1, description="Rows per upstream call")
    batch_max_wait_ms: float = Field(default=0.0, ge=0, le=1000, description="Linger for a fuller batch")
    # One call out at a time gives the largest batches and the fewest model-server calls (its per-call cost is
    # fixed, ~1 row or 60 rows alike): best measured on 2 shared cores. Raise it when the model server has
    # cores (workers) of its own, so a slow call does not hold the queue.
    batch_max_inflight: int = Field(default=1, ge=1, description="Upstream calls out at once")
    batch_max_queue_rows: int = Field(default=20_000, ge=1, description="Queued rows before shedding (503)")
    # -- retries and circuit breaker
    retries: int = Field(default=2, ge=0, description="Retries of an upstream call on 503/429/connection errors")
    retry_backoff: float = Field(default=0.05, ge=0, description="First retry delay (s), doubling, jittered")
    retry_backoff_max: float = Field(default=1.0, ge=0)
    breaker_failures: int = Field(default=5, ge=1, description="Consecutive failed calls that open the circuit")
    breaker_reset: float = Field(default=2.0, gt=0, description="Seconds open before a probe call")
    # -- prediction log (Parquet by hour; off when neither is set): a local directory or file:// URL, or an object
    # store URL such as s3://bucket/prefix (endpoint/region/credentials from the standard AWS_* variables).
    # prediction_log_dir is the older name of the same setting (prediction_log_uri wins when both are set).
    prediction_log_uri: str | None = Field(default=None, description="Where the prediction log goes")
    prediction_log_dir: str | None = Field(default=None, description="Alias of prediction_log_uri (a directory)")
    prediction_log_writer: str | None = Field(
        default=None, description="Names this replica's files (the chart sets the pod name); default: host name"
    )
    prediction_log_flush_interval: float = Field(default=2.0, gt=0)
    prediction_log_flush_rows: int = Field(default=5_000, ge=1)
    prediction_log_max_pending_rows: int = Field(default=50_000, ge=1)
    prediction_log_roll_seconds: float = Field(default=300.0, gt=0)

    @property
    def prediction_log_location(self) -> str | None:
        """The prediction log's location: prediction_log_uri, else prediction_log_dir; None = off."""
        return self.prediction_log_uri or self.prediction_log_dir or None
