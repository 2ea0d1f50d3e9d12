"""Typed privacy settings of one disclosure tier (`PrivacyParams`).

The disclosure profile says *how much* a tier reveals; these fields say how
the privacy guards (`desiderata.policy.guard`) protect it: the output noise
(clip C, noise multiplier z), the lifetime privacy loss (ε, δ) composed by an
RDP accountant, the lifetime query budget K, the short-window rate, and what
the extraction monitor does on alarm. They live in their own module so that
the profile can carry them as a ``privacy`` field without the guard code
depending on the profile schema. Validation here is what lets the server
refuse to boot on a nonsensical tier (e.g. an ε budget without noise).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["ExtractionMonitorParams", "PrivacyParams"]


class ExtractionMonitorParams(BaseModel):
    """PRADA-style extraction monitor settings (Juuti et al. 2019)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    """Whether the monitor runs for this tier."""
    window: int = Field(default=50, ge=3, le=5000)
    """Number of most recent minimum distances tested (Shapiro–Wilk needs ≥ 3)."""
    threshold: float = Field(default=0.80, gt=0.0, lt=1.0)
    """Alarm when the Shapiro–Wilk statistic W of the distances falls below this. Measured
    on i.i.d. Gaussian queries (d = 10…50, window 50, 200 queries) the lowest W over all
    windows had a 5% quantile of ≈ 0.89; axis probing and seed perturbation gave W ≈ 0.1–0.4."""
    action: Literal["downgrade", "block"] = "block"
    """What happens to an alarmed principal: served a stricter tier, or refused."""
    downgrade_to: str = ""
    """Tier served after a "downgrade" alarm, e.g. "feature_attribution/summary"."""
    per_class: bool = False
    """Measure distances to earlier queries of the same predicted class only (PRADA's variant)."""
    history: int = Field(default=1000, ge=1, le=100_000)
    """Earlier queries kept per principal (per class) to measure distances against."""

    @model_validator(mode="after")
    def _downgrade_needs_a_tier(self) -> ExtractionMonitorParams:
        if self.action == "downgrade" and not self.downgrade_to:
            raise ValueError("extraction monitor action 'downgrade' needs downgrade_to (a tier name)")
        return self


class PrivacyParams(BaseModel):
    """How one tier is protected against extraction and inference."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    clip_norm: float = Field(default=1.0, gt=0.0)
    """C: attribution vectors are clipped to ‖·‖₂ ≤ C (in the attribution's units) before noise."""
    noise_multiplier: float = Field(default=0.0, ge=0.0)
    """z: per-coordinate Gaussian noise has standard deviation z·C; 0 disables noise."""
    delta: float = Field(default=1e-5, gt=0.0, lt=1.0)
    """δ of the (ε, δ) guarantee reported for the lifetime privacy loss."""
    lifetime_epsilon: float | None = Field(default=None, gt=0.0)
    """Lifetime ε per (principal, model) at `delta`; None means no ε budget (query budget only)."""
    lifetime_queries: int | None = Field(default=None, ge=0)
    """K: lifetime number of charged answers per (principal, model); None means unlimited."""
    rate_per_minute: float | None = Field(default=None, gt=0.0)
    """Token-bucket refill rate in requests per minute; None disables the rate limit."""
    burst: int = Field(default=10, ge=1)
    """Token-bucket capacity: requests that may arrive at once after an idle period."""
    reservation_ttl_s: float = Field(default=30.0, gt=0.0)
    """Seconds a reservation lives if never committed (a crashed request returns it then)."""
    monitor: ExtractionMonitorParams = Field(default_factory=lambda: ExtractionMonitorParams(enabled=False))
    """Extraction monitor settings; disabled by default."""

    @model_validator(mode="after")
    def _epsilon_needs_noise(self) -> PrivacyParams:
        if self.lifetime_epsilon is not None and self.noise_multiplier == 0.0:
            raise ValueError("lifetime_epsilon needs noise_multiplier > 0: noiseless answers have no finite ε")
        return self

    @property
    def noisy(self) -> bool:
        """Whether answers get output noise."""
        return self.noise_multiplier > 0.0

    @property
    def rho_per_query(self) -> float:
        """RDP coefficient ρ of one answer: the Gaussian mechanism with sensitivity C and
        std z·C has RDP ε(α) = α/(2z²) = ρ·α; 0 when there is no noise (not accounted)."""
        return 0.0 if self.noise_multiplier == 0.0 else 1.0 / (2.0 * self.noise_multiplier**2)
