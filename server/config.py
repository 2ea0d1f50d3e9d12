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

__all__ = [
    "DEMO_KEYS",
    "ApiKey",
    "AuthSettings",
    "ExplainSettings",
    "LoggingSettings",
    "ModelsSettings",
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


class TlsSettings(BaseModel):
    """TLS for the listening port; mTLS when a client CA is given."""

    model_config = ConfigDict(extra="forbid")

    cert_file: Path | None = None
    """PEM server certificate chain; TLS is on when this and `key_file` are set."""
    key_file: Path | None = None
    """PEM private key of the server certificate."""
    client_ca_file: Path | None = None
    """PEM CA bundle of client certificates; when set, clients must present one (mTLS)."""

    @model_validator(mode="after")
    def _pair(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file must be set together")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("tls.client_ca_file (mTLS) needs tls.cert_file and tls.key_file")
        for p in (self.cert_file, self.key_file, self.client_ca_file):
            if p is not None and not p.is_file():
                raise ValueError(f"TLS file {p} does not exist")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


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
    grace_period_s: float = Field(default=5.0, ge=0)
    """On SIGTERM/SIGINT, in-flight calls get this long to finish."""
    default_deadline_s: float = Field(default=30.0, gt=0)
    """Deadline applied to calls that arrive without one."""
    tls: TlsSettings = TlsSettings()
    """TLS / mTLS certificates."""


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
    """Skip a model that fails to load (logged) instead of refusing to boot."""
    torch_threads: int = Field(default=1, ge=1, le=64)
    """Intra-op threads per model evaluation (workers run evaluations in parallel)."""


class StoreSettings(BaseModel):
    """Embedded stores."""

    model_config = ConfigDict(extra="forbid")

    state_dir: Path = Field(default_factory=default_state_dir)
    """Folder of the embedded SQLite stores."""
    decisions_path: Path | None = None
    """Decision store file; default `<state_dir>/decisions.sqlite`."""


class ExplainSettings(BaseModel):
    """Limits and defaults of explainers."""

    model_config = ConfigDict(extra="forbid")

    max_steps: int = Field(default=4096, ge=2)
    """Largest integration step count a caller may ask for."""
    max_samples: int = Field(default=200_000, ge=1)
    """Largest model-row budget a caller may ask of a sampling method."""


class LoggingSettings(BaseModel):
    """Structured logs (structlog)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["json", "console"] = "json"
    """JSON lines in production; console for humans."""
    level: Literal["debug", "info", "warning", "error"] = "info"
    """Minimum level."""


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
    logging: LoggingSettings = LoggingSettings()
    """Logs."""

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
