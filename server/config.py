"""Typed settings of every subsystem, validated at start-up.

Environment variables use the prefix ``DESIDERATA_`` and ``__`` between
levels (``DESIDERATA_SERVER__PORT=50051``); a YAML file given with
``--config FILE`` may set the same keys. Precedence: explicit arguments >
environment > file > defaults. A bad value stops the boot with the field
named.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from desiderata.server.listener import ConnectionSettings, TlsSettings

__all__ = [
    "DEMO_KEYS",
    "ApiKey",
    "AuditSettings",
    "AuthSettings",
    "ExplainSettings",
    "LoggingSettings",
    "ModelsSettings",
    "PolicySettings",
    "PrivacySettings",
    "ServerSettings",
    "Settings",
    "StoreSettings",
    "TlsSettings",
    "default_state_dir",
]


def default_state_dir() -> Path:
    """Where the embedded stores live unless configured: $XDG_STATE_HOME/desiderata."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "desiderata"


class ServerSettings(BaseModel):
    """The gRPC listener."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    """Interface to bind; "0.0.0.0" or "[::]" for all."""
    port: int = Field(default=50051, ge=0, le=65535)
    """Port to bind; 0 picks a free port (printed and logged)."""
    max_receive_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """Largest request accepted; larger ones get RESOURCE_EXHAUSTED."""
    max_send_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    """Largest response sent."""
    workers: int = Field(default=2, ge=1, le=64)
    """Threads running model evaluations and explainers off the event loop."""
    max_concurrent_rpcs: int = Field(default=0, ge=0)
    """Most calls in progress at once (health and reflection not counted); a call beyond it gets
    RESOURCE_EXHAUSTED (code ``overloaded``, RetryInfo) at once instead of queueing behind the
    workers until its deadline. 0: no limit."""
    grace_period_s: float = Field(default=5.0, ge=0)
    """On SIGTERM/SIGINT, in-flight calls get this long to finish."""
    default_deadline_s: float = Field(default=30.0, gt=0)
    """Deadline applied to calls that arrive without one."""
    readiness_interval_s: float = Field(default=5.0, ge=0)
    """How often the stores (ledger, audit log, decisions, feedback) are probed; while one cannot be
    reached, gRPC health says NOT_SERVING (server/readiness.py). 0 disables the probes."""
    tls: TlsSettings = TlsSettings()
    """TLS / mTLS certificates."""
    connections: ConnectionSettings = ConnectionSettings()
    """HTTP/2 connection management: maximum age, idle limit, keepalive pings (server/listener.py)."""


class ApiKey(BaseModel):
    """One credential and the principal it authenticates."""

    model_config = ConfigDict(extra="forbid")

    principal: str
    """Principal id (appears in the audit log)."""
    role: str
    """Stakeholder role: ml_engineer, domain_expert, end_user, regulator, executive, or a declared one."""
    key: str | None = None
    """The key in clear text (demo and tests only)."""
    key_sha256: str | None = None
    """Hex SHA-256 of the key: the way to configure production keys."""
    subject_id: str = ""
    """For end users: the subject whose recorded decisions they may explain."""
    attributes: dict[str, str] = Field(default_factory=dict)
    """Principal attributes policies may test, e.g. {"domain": "credit"} for a loan officer."""

    @model_validator(mode="after")
    def _one_key(self) -> ApiKey:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError(f"api key of {self.principal!r}: set exactly one of key, key_sha256")
        return self

    @property
    def digest(self) -> str:
        if self.key_sha256 is not None:
            return self.key_sha256.lower()
        return hashlib.sha256((self.key or "").encode()).hexdigest()


DEMO_KEYS: tuple[ApiKey, ...] = tuple(
    ApiKey(
        principal=f"demo-{role}",
        role=role,
        key=f"demo-{role}-key",
        subject_id="applicant-0001" if role == "end_user" else "",
        attributes={"domain": "credit"} if role == "domain_expert" else {},
    )
    for role in ("ml_engineer", "domain_expert", "end_user", "regulator", "executive")
)
"""DEMO KEYS — public, for the built-in demo only. Never used unless `auth.demo_keys` is on."""


class AuthSettings(BaseModel):
    """Credentials: API keys / bearer tokens mapped to principals."""

    model_config = ConfigDict(extra="forbid")

    api_keys: list[ApiKey] = Field(default_factory=list)
    """Configured credentials (send as `authorization: Bearer <key>` or `x-api-key: <key>`)."""
    demo_keys: bool | None = None
    """Accept the public demo keys; default: on only when serving the built-in demo."""


class ModelsSettings(BaseModel):
    """The model repository."""

    model_config = ConfigDict(extra="forbid")

    path: Path | None = None
    """Folder of models (one sub-folder per model with card.yaml); None serves the built-in demo."""
    skip_broken: bool = False
    """Skip a model that fails to load at start-up (logged) instead of refusing to boot."""
    reload_interval_s: float = Field(default=0.0, ge=0)
    """Rescan the repository this often (seconds) and serve what changed without a restart: new
    version folders once their files stop changing, removed ones unloaded; a broken folder, or a
    version whose files change in place (versions are immutable), is refused and logged while the
    loaded models keep serving (server/model_repository.py). 0 (the default): loaded at start-up only."""
    torch_threads: int = Field(default=1, ge=1, le=64)
    """Intra-op threads per model evaluation and the cap on numpy BLAS threads (workers run in parallel)."""
    chunk_helpers: int = Field(default_factory=lambda: min(3, max(0, len(os.sched_getaffinity(0)) - 1)), ge=0, le=64)
    """Threads (shared by all requests) that evaluate chunks of one large batch beside the worker that
    asked for it, so a lone exact-Shapley request uses idle cores; 0: every chunk on the worker.
    Default: one less than the CPUs this process may run on (its affinity mask), at most 3."""
    fuse_rows: int = Field(default=0, ge=0, le=1 << 16)
    """Most rows in one batch fused from the small evaluations (predictions, input gradients) that
    concurrent requests make of one model (server/batch_fusion.py); a call runs at once when the
    model is idle, so fusion adds no wait. 0 (the default): every call evaluates alone. Off by
    default because it did not raise throughput where measured (IG, 16 clients, 2 cores; MLPs
    30→64→64→2 and 100→1024→1024→2; 2–8 workers: within the run-to-run noise): requests spend most
    of their time in Python under the GIL, so they seldom meet in the model (1.0–1.7 calls per
    batch). bench/attribution_grpc.py prints the comparison; measure before turning it on."""
    precompute: bool = True
    """Build (or load) sample-importance indexes in the background at start (see server/precompute.py)."""
    malloc_mmap_threshold_mb: int = Field(default=64, ge=0, le=1024)
    """glibc only: buffers smaller than this (MiB) are reused inside the process instead of being
    mapped and unmapped per call, which page-faulted every model chunk in again (server/allocator.py;
    −17% on permutation Shapley). 0 keeps glibc's default."""
    malloc_trim_threshold_mb: int = Field(default=32, ge=0, le=4096)
    """glibc only: free memory (MiB) kept at the top of each malloc arena (about one per busy
    thread) before it is returned to the kernel; resident memory may stay this far above the working
    set after a peak. 8, 32 and 256 removed the same page faults where measured. 0 keeps glibc's default."""


class StoreSettings(BaseModel):
    """Embedded stores."""

    model_config = ConfigDict(extra="forbid")

    state_dir: Path = Field(default_factory=default_state_dir)
    """Folder of the embedded SQLite stores."""
    decisions_path: Path | None = None
    """Decision store file; default `<state_dir>/decisions.sqlite`."""
    decisions_backend: Literal["sqlite", "postgres"] = "sqlite"
    """Where Predict records decisions: SQLite (embedded, one replica) or PostgreSQL, which
    every replica shares, so an end user's ExplainDecision finds the decision on any replica."""
    decisions_postgres_dsn: str = ""
    """libpq connection string of the PostgreSQL decision store."""
    decisions_retention_days: float = Field(default=0.0, ge=0)
    """Delete recorded decisions (and the end users' feature values they hold) this many days after
    they were made, at start and every `retention_check_s`; they can no longer be explained after
    that (server/retention.py). 0 (the default): kept until deleted by hand."""
    feedback_retention_days: float = Field(default=0.0, ge=0)
    """Delete feedback (its givers' free text and subject ids) this many days after it was given, at
    start and every `retention_check_s`; it is no longer exported after that. 0 (the default): kept
    until deleted by hand."""
    retention_check_s: float = Field(default=3600.0, gt=0)
    """How often expired decisions and feedback are deleted, with a retention period set."""
    feedback_path: Path | None = None
    """Feedback store file; default `<state_dir>/feedback.sqlite`."""
    feedback_backend: Literal["sqlite", "postgres"] = "sqlite"
    """Where SubmitFeedback stores feedback: SQLite (embedded, one replica) or PostgreSQL, which
    every replica shares, so the export holds all of it and it outlives any replica."""
    feedback_postgres_dsn: str = ""
    """libpq connection string of the PostgreSQL feedback store."""

    @model_validator(mode="after")
    def _dsn(self) -> StoreSettings:
        if self.decisions_backend == "postgres" and not self.decisions_postgres_dsn:
            raise ValueError("store.decisions_postgres_dsn is required with store.decisions_backend=postgres")
        if self.feedback_backend == "postgres" and not self.feedback_postgres_dsn:
            raise ValueError("store.feedback_postgres_dsn is required with store.feedback_backend=postgres")
        return self


class ExplainSettings(BaseModel):
    """Limits and defaults of explainers."""

    model_config = ConfigDict(extra="forbid")

    max_steps: int = Field(default=4096, ge=2)
    """Largest integration step count a caller may ask for."""
    max_samples: int = Field(default=4_000_000, ge=1)
    """Largest model-row budget a caller may ask of a sampling method."""
    max_exact_players: int = Field(default=14, ge=1, le=20)
    """Most players exact Shapley enumerates (2^d coalitions)."""
    max_batch_instances: int = Field(default=256, ge=1, le=100_000)
    """Most instances one ExplainBatch call may carry. Each is admitted and charged as a
    call of its own, and the whole batch is answered in one response, so this also bounds
    the response size and how long one call holds a worker."""
    coalesce_max_calls: int = Field(default=32, ge=1, le=1024)
    """Most concurrent unary calls of a method whose instances share model passes (the
    gradient methods) that a worker explains together when they queue for it (see
    `server.coalescing`); each is still decided, admitted, charged and audited alone.
    1 explains every call alone."""
    background_size: int = Field(default=100, ge=1, le=10_000)
    """Rows of the k-means background summarised from the training reference."""
    answer_cache_size: int = Field(default=1024, ge=0)
    """Raw explanations kept for identical requests (LRU); 0 disables the answer cache."""
    cache_max_age_s: float = Field(default=3600.0, ge=0)
    """Seconds an answer-cache entry, or a recorded decision's attributions kept for drift
    checks, is reused after it was computed; 0: no age limit. They derive from end users'
    features, so this bounds how long a running server keeps them in memory after their
    decision expires or is erased (the erasure CLI cannot reach a server's memory). Expired
    entries are dropped every quarter of this, at most a minute apart."""


class PolicySettings(BaseModel):
    """The policy bundle (Cedar access + disclosure profiles)."""

    model_config = ConfigDict(extra="forbid")

    bundle_dir: Path | None = None
    """Policy bundle folder; None uses the shipped bundle (desiderata.policy/bundle)."""
    reload_interval_s: float = Field(default=0.5, gt=0)
    """How often the bundle's files are checked for changes (hot reload)."""


class AuditSettings(BaseModel):
    """The hash-chained audit log of every decision."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["sqlite", "postgres"] = "sqlite"
    """SQLite (embedded) or PostgreSQL (production)."""
    sqlite_path: Path | None = None
    """SQLite file; default `<state_dir>/audit.sqlite`."""
    postgres_dsn: str = ""
    """libpq connection string of the PostgreSQL backend."""

    @model_validator(mode="after")
    def _dsn(self) -> AuditSettings:
        if self.backend == "postgres" and not self.postgres_dsn:
            raise ValueError("audit.postgres_dsn is required with audit.backend=postgres")
        return self


class PrivacySettings(BaseModel):
    """Budget ledger and output noise."""

    model_config = ConfigDict(extra="forbid")

    ledger: Literal["sqlite", "redis"] = "sqlite"
    """SQLite (one replica) or Redis (several replicas share one budget)."""
    sqlite_path: Path | None = None
    """SQLite ledger file; default `<state_dir>/ledger.sqlite`."""
    redis_url: str = ""
    """redis:// URL of the shared ledger."""
    secret_file: Path | None = None
    """File holding the key of the deterministic output noise (≥ 16 bytes, stable across
    restarts and replicas); default `<state_dir>/noise.key`, created with mode 0600."""

    @model_validator(mode="after")
    def _url(self) -> PrivacySettings:
        if self.ledger == "redis" and not self.redis_url:
            raise ValueError("privacy.redis_url is required with privacy.ledger=redis")
        return self


class LoggingSettings(BaseModel):
    """Structured logs (structlog)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["json", "console"] = "json"
    """JSON lines in production; console for humans."""
    level: Literal["debug", "info", "warning", "error"] = "info"
    """Minimum level."""


class MetricsSettings(BaseModel):
    """Prometheus metrics on their own HTTP port (server/metrics.py)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    """Serve metrics; off by default so that a server binds no port it was not asked to."""
    host: str = "127.0.0.1"
    """Interface of the metrics endpoint; "0.0.0.0" to let a Prometheus in the cluster scrape it."""
    port: int = Field(default=9464, ge=0, le=65535)
    """Port of the metrics endpoint (9464, the usual Prometheus exporter port); 0 picks a free one."""


class DriftSettings(BaseModel):
    """Scheduled attribution-drift checks of every served model (server/drift_watch.py)."""

    model_config = ConfigDict(extra="forbid")

    interval_s: float = Field(default=0.0, ge=0)
    """Seconds between checks; 0 (the default) never checks. Each check explains the decisions
    recorded since the last one and exports the result as metrics and a log event."""
    decisions: int = Field(default=500, ge=20, le=5000)
    """Newest recorded decisions of each model version compared with its training reference."""


class Settings(BaseSettings):
    """All settings of a desiderata server."""

    model_config = SettingsConfigDict(env_prefix="DESIDERATA_", env_nested_delimiter="__", extra="forbid")

    server: ServerSettings = ServerSettings()
    """The gRPC listener."""
    auth: AuthSettings = AuthSettings()
    """Credentials."""
    models: ModelsSettings = ModelsSettings()
    """The model repository."""
    store: StoreSettings = StoreSettings()
    """Embedded stores."""
    explain: ExplainSettings = ExplainSettings()
    """Explainer limits."""
    policy: PolicySettings = PolicySettings()
    """The policy bundle."""
    audit: AuditSettings = AuditSettings()
    """The audit log."""
    privacy: PrivacySettings = PrivacySettings()
    """Budgets and noise."""
    logging: LoggingSettings = LoggingSettings()
    """Logs."""
    metrics: MetricsSettings = MetricsSettings()
    """Prometheus metrics."""
    drift: DriftSettings = DriftSettings()
    """Scheduled attribution-drift checks."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _FileSource(settings_cls))

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> Settings:
        """Settings from defaults, an optional YAML file, the environment and overrides."""
        _FileSource.path = config_file
        try:
            return cls(**overrides)
        finally:
            _FileSource.path = None


class _FileSource(PydanticBaseSettingsSource):
    """The YAML file given with --config (lowest precedence above defaults)."""

    path: Path | None = None

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        data = yaml.safe_load(self.path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{self.path}: the config file must be a mapping")
        return data
