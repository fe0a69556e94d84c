"""The service's settings, read from `SECATEUR_*` environment variables; no configuration = embedded."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["EMBEDDED_BROKER_SCHEME", "Settings", "get_settings"]

# The embedded broker: kombu's SQLAlchemy transport over a SQLite file in data_dir (no server; every local
# process shares it; each fetch is one locked transaction). Measured with a real worker under a concurrent
# producer: 3000 of 3000 wake-ups delivered, where kombu's filesystem transport lost 3 and its empty
# message file stopped the worker (see service/serve.py).
EMBEDDED_BROKER_SCHEME = "sqla+sqlite"

_MiB = 1024 * 1024


class Settings(BaseSettings):
    """Every knob of the API and the workers; empty URLs resolve to the embedded default under data_dir."""

    model_config = SettingsConfigDict(env_prefix="SECATEUR_", extra="ignore")

    data_dir: Path = Path(".secateur")
    database_url: str = ""  # default sqlite:///{data_dir}/secateur.db
    broker_url: str = ""  # default sqla+sqlite:///{data_dir}/broker.sqlite; redis://host:6379/0 in production
    storage_url: str = ""  # default file://{data_dir}/objects; s3://bucket/prefix for S3
    s3_endpoint_url: str | None = None  # MinIO / SeaweedFS; credentials come from the usual AWS_* env
    s3_region: str = "us-east-1"
    s3_presign_endpoint_url: str | None = None  # the endpoint clients reach, when not s3_endpoint_url
    auth: Literal["open", "keys"] = "open"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    auto_migrate: bool | None = None  # None: migrate at startup only for SQLite (the embedded default)

    # Limits: the whole multipart body is counted as it streams in, whatever Content-Length says.
    max_upload_bytes: int = Field(default=4096 * _MiB, ge=1)
    max_config_bytes: int = Field(default=64 * 1024, ge=1)
    max_zip_directory_bytes: int = Field(default=64 * _MiB, ge=1)

    # Timeouts keep a dead dependency a fast 503 instead of a hung request.
    db_connect_timeout_s: float = Field(default=5.0, gt=0)
    db_statement_timeout_s: float = Field(default=15.0, gt=0)
    broker_timeout_s: float = Field(default=2.0, gt=0)
    presign_expires_s: int = Field(default=300, ge=1, le=3600)

    # Uploads are parsed at submit time in a sandboxed child (service/jobs/sandbox.py, docs/security.md).
    validate_uploads: bool = True  # off: only the cheap head sniff at submit; the worker still validates
    sandbox_timeout_s: float = Field(default=120.0, gt=0)  # wall clock, whole child
    sandbox_cpu_s: int = Field(default=120, ge=1)  # RLIMIT_CPU of the child
    sandbox_memory_bytes: int = Field(default=4096 * _MiB, ge=256 * _MiB)  # RLIMIT_AS of the child
    sandbox_concurrency: int = Field(default=2, ge=1)  # children at once per API process; more wait

    # Per-tenant abuse limits (service/limits.py).
    rate_limit_url: str = ""  # default: a redis:// broker (one budget for all replicas), else memory://
    submit_rate_per_minute: float = Field(default=30.0, gt=0)  # token bucket refill on POST /jobs
    submit_burst: int = Field(default=10, ge=1)  # bucket size
    max_active_jobs_per_tenant: int = Field(default=4, ge=1)  # queued + running + cancelling
    max_stored_bytes_per_tenant: int = Field(default=50 * 1024 * _MiB, ge=1)  # inputs of kept jobs
    poll_interval_s: int = Field(default=2, ge=1)  # Retry-After on the status of an unfinished job

    # Hostile clients pay for themselves (docs/security.md): bounded bodies, lists and waits, fair shares.
    max_json_body_bytes: int = Field(default=_MiB, ge=1)  # an application/json request body: 413 beyond
    max_list_bytes: int = Field(default=_MiB, ge=1)  # one page of a list (GET /jobs): fewer items beyond
    header_read_timeout_s: float = Field(default=10.0, gt=0)  # request line + headers, else disconnected
    body_read_timeout_s: float = Field(default=30.0, gt=0)  # gap between two body chunks: 408 beyond
    sandbox_concurrency_per_tenant: int = Field(default=1, ge=1)  # of sandbox_concurrency, per tenant
    max_streams: int = Field(default=200, ge=1)  # open event streams per API process: 429 beyond
    max_streams_per_tenant: int = Field(default=8, ge=1)  # of max_streams, per tenant
    stream_max_s: float = Field(default=300.0, gt=0)  # a stream then ends; clients resume (Last-Event-ID)
    stream_auth_recheck_s: float = Field(default=5.0, gt=0)  # an open stream re-checks its key this often

    # Worker-side knobs (read by workers/, kept here so one place documents every setting).
    progress_write_interval_s: float = Field(default=2.0, ge=0)
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    stale_after_s: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    torch_threads: int = Field(default=1, ge=1)

    # Reliability (service/reaper.py, workers/heartbeat.py, docs/reliability.md): seconds in tests, minutes in
    # production.
    reaper_enabled: bool = True  # run the reaper loop in this process (the API and every worker parent)
    reaper_interval_s: float = Field(default=15.0, gt=0)  # between two sweeps
    wakeup_resend_after_s: float = Field(default=60.0, gt=0)  # a job queued this long unclaimed is re-sent
    max_runtime_s: float = Field(default=24 * 3600.0, gt=0)  # since the job first started: failed/max_runtime
    stop_grace_s: float = Field(default=30.0, gt=0)  # cancel/lost lease/max runtime, then the job exits
    shutdown_grace_s: float = Field(default=30.0, gt=0)  # SIGTERM: checkpoint and release within this
    db_outage_retry_s: float = Field(default=120.0, ge=0)  # a worker retries its final writes this long
    oom_retries: int = Field(default=3, ge=0)  # CUDA out of memory: halve the batch size this many times

    # Webhooks (service/webhooks): a job's `webhook_url` gets its JSON, signed, when it ends.
    webhook_secret: str = ""  # signs callbacks when auth is open (keyed tenants have their own, in the DB)
    webhook_allow_private: bool = False  # allow loopback/private/link-local callback hosts (development)
    webhook_sender_enabled: bool = True  # run the sender loop in this API process
    webhook_interval_s: float = Field(default=2.0, gt=0)  # between two sweeps of the sender
    webhook_timeout_s: float = Field(default=10.0, gt=0)  # one POST, connect to last byte
    webhook_backoff_s: float = Field(default=10.0, gt=0)  # the first retry's delay; doubles each time
    webhook_max_backoff_s: float = Field(default=3600.0, gt=0)  # the longest delay between two attempts
    webhook_retry_for_s: float = Field(default=3 * 24 * 3600.0, gt=0)  # then the delivery is `failed`

    # Pre-flight (POST /preflight): the engine checks a model in a sandboxed child, answered, not queued.
    preflight_timeout_s: float = Field(default=120.0, gt=0)  # wall clock, whole child
    preflight_memory_bytes: int = Field(default=8192 * _MiB, ge=256 * _MiB)  # RLIMIT_AS (torch maps a lot)
    preflight_threads: int = Field(default=2, ge=1)  # torch threads of the child
    # Keep one child waiting with the engine imported (~6 of a 25 M-param model's ~10 CPU s), so a request
    # pays only for its checks; it costs one idle process (~1 GB resident) per API process running it.
    preflight_spare: bool = True
    # Where the engine is not installed (the API image), POST /preflight is forwarded to a service that has
    # it (docker-compose.yml's `preflight`); empty: run it here.
    preflight_url: str = Field(default="", pattern=r"^(https?://[^\s/?#]+(/[^\s?#]*)?)?$")

    # A job's cost (docs/security.md): estimated at submit and refused beyond these (model_too_costly; the
    # engine's own limits, workers/compression/onnx_cost.CostLimits, are the upper bounds), then capped
    # while it runs (workers/ceiling.py: resources_exceeded).
    max_model_params_bytes: int = Field(default=4096 * _MiB, ge=1, le=4096 * _MiB)
    max_activation_bytes_per_sample: int = Field(default=2048 * _MiB, ge=1, le=2048 * _MiB)
    max_flops_per_sample: int = Field(default=10**12, ge=1, le=10**12)
    job_memory_bytes: int = Field(default=0, ge=0)  # a job's memory ceiling; 0: 3/4 of the machine's memory
    job_step_cpu_s: float = Field(default=1800.0, gt=0)  # CPU seconds between two progress events, at least
    job_cpu_flops_per_s: float = Field(default=1e9, gt=0)  # a pessimistic speed the CPU budget assumes

    @model_validator(mode="after")
    def _embedded_defaults(self) -> Settings:
        """Fills empty URLs with embedded defaults: SQLite, SQLite broker, local objects, limits in memory."""
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'secateur.db'}"
        if not self.broker_url:
            self.broker_url = f"{EMBEDDED_BROKER_SCHEME}:///{(self.data_dir / 'broker.sqlite').absolute()}"
        if not self.storage_url:
            self.storage_url = f"file://{(self.data_dir / 'objects').absolute()}"
        if not self.rate_limit_url:
            shared = self.broker_url.startswith(("redis://", "rediss://"))
            self.rate_limit_url = self.broker_url if shared else "memory://"
        return self

    @property
    def is_sqlite(self) -> bool:
        """Tells whether the database is SQLite (embedded) rather than a server."""
        return self.database_url.startswith("sqlite")

    @property
    def migrate_at_startup(self) -> bool:
        """Tells whether the API runs `alembic upgrade head` itself (default: only for SQLite)."""
        return self.is_sqlite if self.auto_migrate is None else self.auto_migrate


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Returns the process's settings, read from the environment once, on first use (never at import)."""
    return Settings()
