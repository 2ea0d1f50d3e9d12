"""The desiderata vocabulary: principals with stakeholder roles, purposes and
consumption modes (Bhatt et al. 2020, sections 3.3 and 5.1).

The role of a principal comes from its credential, never from a request; the
purpose and consumption mode are declared by the caller and checked by policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["BUILTIN_PURPOSES", "BUILTIN_ROLES", "Consumption", "Principal"]

BUILTIN_ROLES = ("ml_engineer", "domain_expert", "end_user", "regulator", "executive")
"""Stakeholder roles every policy knows; a policy may declare more."""

BUILTIN_PURPOSES = ("debugging", "monitoring", "audit", "transparency", "recourse", "contest")
"""Purposes every policy knows; a policy may declare more."""


class Consumption(StrEnum):
    """How an explanation is consumed."""

    STATIC = "static"
    """A one-off sanity check, or reasons shown for a decision."""
    DYNAMIC = "dynamic"
    """Feedback that may change the model."""


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    Args:
        id: stable principal id from the credential configuration.
        role: stakeholder role, from the credential.
        subject_id: for end users, the subject whose decisions they may see.
        attributes: extra attributes from configuration (e.g. team).
    """

    id: str
    role: str
    subject_id: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
