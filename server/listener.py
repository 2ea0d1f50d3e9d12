"""The listening port's settings: TLS, and how the server manages its HTTP/2 connections.

`TlsSettings` secures the port (mTLS with a client CA); `ConnectionSettings`
sets maximum age, idle limit and keepalive pings. Why the latter: gRPC keeps
one connection per client channel for as long as it can, which two things in
production do not survive unmanaged. Behind a Kubernetes Service (an L4
balancer), a long-lived client stays on the replica it first reached, so
replicas added by a scale-up get none of its calls until it reconnects; a
maximum connection age makes clients reconnect, and re-resolve the address,
on a schedule (gRPC proposal A9). And clients that send keepalive pings more
often than the server accepts (5 minutes by default) are cut off with GOAWAY
``too_many_pings``; the interval the server accepts must match what the
clients' SDK configuration sends (A8). These settings map onto gRPC core's
channel arguments; every default is gRPC's own.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["ConnectionSettings", "TlsSettings", "channel_options"]


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


class ConnectionSettings(BaseModel):
    """HTTP/2 connection management of the listening port (`server.connections`)."""

    model_config = ConfigDict(extra="forbid")

    max_age_s: float = Field(default=0.0, ge=0)
    """A connection older than this is closed gracefully (GOAWAY): calls in flight finish, and the
    client reconnects and resolves the address again, so replicas added by a scale-up get their
    share of long-lived clients. 0: never (gRPC's default). A few minutes suits most deployments."""
    max_age_grace_s: float = Field(default=0.0, ge=0)
    """How long calls still in flight on a connection past `max_age_s` may run before it is closed
    anyway. 0: no limit (gRPC's default); set it at or above the longest deadline you serve."""
    max_idle_s: float = Field(default=0.0, ge=0)
    """A connection with no call for this long is closed (the client reconnects on its next call).
    0: never (gRPC's default)."""
    keepalive_time_s: float = Field(default=7200.0, gt=0)
    """The server pings a connection that has been quiet this long, to find clients that vanished
    without closing it (a crashed pod, a dropped NAT entry). gRPC's default: 2 hours."""
    keepalive_timeout_s: float = Field(default=20.0, gt=0)
    """A ping unanswered for this long closes the connection. gRPC's default: 20 s."""
    min_client_ping_interval_s: float = Field(default=300.0, ge=0)
    """Shortest interval between a client's keepalive pings that the server accepts while no data
    flows; a client pinging more often is sent GOAWAY ``too_many_pings``. Set it at or below the
    keepalive time your clients use. gRPC's default: 5 minutes."""
    permit_pings_without_calls: bool = False
    """Accept client keepalive pings on connections with no call in flight (clients that keep idle
    connections warm need it). gRPC's default: refuse them as abuse."""


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def channel_options(c: ConnectionSettings) -> list[tuple[str, int]]:
    """gRPC core channel arguments of the settings; a 0 that means "never" is left unset."""
    options = [
        ("grpc.keepalive_time_ms", _ms(c.keepalive_time_s)),
        ("grpc.keepalive_timeout_ms", _ms(c.keepalive_timeout_s)),
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(c.min_client_ping_interval_s)),
        ("grpc.keepalive_permit_without_calls", int(c.permit_pings_without_calls)),
    ]
    for name, seconds in (
        ("grpc.max_connection_age_ms", c.max_age_s),
        ("grpc.max_connection_age_grace_ms", c.max_age_grace_s),
        ("grpc.max_connection_idle_ms", c.max_idle_s),
    ):
        if seconds > 0:
            options.append((name, _ms(seconds)))
    return options
