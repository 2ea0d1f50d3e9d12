"""Policy test cases beside the policies (``*_test.yaml``) and their runner.

Why: policy owners change who sees what; the cases are their proof that the
change does what they meant, and a bundle whose cases fail is never loaded.
A case file:

    models:                      # resource attributes by model name
      credit: {domain: credit, dp_trained: false}
    cases:
      - name: end user gets a narrative of their own decision
        principal: {id: u1, role: end_user, subject: s1}
        request: {model: credit, kind: feature_attribution, purpose: transparency,
                  consumption: static, own_decision: true, submitted_instance: false}
        expect: {allowed: true, tier: feature_attribution/narrative,
                 reasons: [end_user.own_decision]}

``request.action`` (``global/summary``, ``global/drift``, ``audit/read``, ``decisions/list``) may replace
``kind`` (``own_decision`` then says the request is about the caller's own subject);
``model: ""`` with ``action: audit/read`` reads the records that concern no model (``Log::"store"``);
``expect.error: unknown_purpose`` expects the request to be refused as bad input;
``expect.reasons`` is compared as a set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from desiderata.explainers.base import Kind
from desiderata.policy.cedar_pdp import CedarPDP
from desiderata.policy.decision import Decision, PolicyInput
from desiderata.policy.model import Consumption, Principal
from desiderata.policy.policy_bundle import BundleProblem, PolicyBundle, compose_yaml, yaml_line
from desiderata.server.errors import UnknownPurpose

__all__ = ["CaseOutcome", "PolicyCase", "TestReport", "load_cases", "run_bundle_tests", "run_case"]


class CasePrincipal(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    role: str
    subject: str = ""
    attributes: dict[str, str] = Field(default_factory=dict)


class CaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    kind: Kind | None = None
    action: Literal["global/summary", "global/drift", "audit/read", "decisions/list"] | None = None
    purpose: str
    consumption: Consumption = Consumption.STATIC
    own_decision: bool = False
    submitted_instance: bool = True

    @model_validator(mode="after")
    def _one_target(self) -> CaseRequest:
        if (self.kind is None) == (self.action is None):
            raise ValueError("give exactly one of 'kind' or 'action'")
        return self


class CaseExpect(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed: bool | None = None
    tier: str | None = None
    reasons: tuple[str, ...] | None = None
    error: Literal["unknown_purpose"] | None = None

    @model_validator(mode="after")
    def _something(self) -> CaseExpect:
        if self.allowed is None and self.error is None:
            raise ValueError("expect needs 'allowed' or 'error'")
        return self


class PolicyCase(BaseModel):
    """One case: principal + request -> expected decision."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    principal: CasePrincipal
    request: CaseRequest
    expect: CaseExpect


class _CaseFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: dict[str, dict[str, str | bool | int | float]] = Field(default_factory=dict)
    cases: list[PolicyCase]


@dataclass(frozen=True)
class CaseOutcome:
    """Result of one case: `failure` is '' when it passed."""

    file: str
    line: int
    name: str
    failure: str
    decision: Decision | None


@dataclass(frozen=True)
class TestReport:
    """All outcomes of a bundle's cases, plus problems reading the files."""

    outcomes: tuple[CaseOutcome, ...]
    problems: tuple[BundleProblem, ...]

    @property
    def passed(self) -> bool:
        return not self.problems and all(not o.failure for o in self.outcomes)

    @property
    def failures(self) -> list[BundleProblem]:
        """Failures as bundle problems (file, line, reason)."""
        return list(self.problems) + [
            BundleProblem(o.file, o.line, f"case {o.name!r}: {o.failure}") for o in self.outcomes if o.failure
        ]


def load_cases(
    path: Path,
) -> tuple[list[tuple[int, PolicyCase]], dict[str, dict[str, str | bool | int | float]]]:
    """Reads one case file; raises `ValueError` with file and line on bad input.

    Args:
        path: a ``*_test.yaml`` file.
    """
    text = path.read_text()
    try:
        raw = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        parsed = _CaseFile.model_validate(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ValueError(f"{path.name}:{mark.line + 1 if mark else 0}: YAML error: {exc}") from exc
    except ValidationError as exc:
        err = exc.errors()[0]
        line = yaml_line(text, tuple(err["loc"]))
        where = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"{path.name}:{line}: {where}: {err['msg']}") from exc
    tree = compose_yaml(text)
    lines = [yaml_line(tree, ("cases", i)) for i in range(len(parsed.cases))]
    return list(zip(lines, parsed.cases, strict=True)), parsed.models


def run_case(
    pdp: CedarPDP, case: PolicyCase, models: dict[str, dict[str, str | bool | int | float]]
) -> tuple[str, Decision | None]:
    """Runs one case; returns (failure or '', decision).

    Args:
        pdp: the decision point under test.
        case: the case.
        models: resource attributes by model name.
    """
    p, r = case.principal, case.request
    principal = Principal(p.id, p.role, p.subject, dict(p.attributes))
    attrs = models.get(r.model, {})
    try:
        if r.kind is not None:
            decision = pdp.decide(
                PolicyInput(
                    principal,
                    r.model,
                    attrs,
                    r.kind,
                    r.purpose,
                    r.consumption,
                    r.own_decision,
                    r.submitted_instance,
                )
            )
        else:
            action = r.action or ""  # CaseRequest guarantees one of kind / action
            decision = pdp.authorize(principal, action, r.model, attrs, r.purpose, r.consumption, r.own_decision)
    except UnknownPurpose:
        if case.expect.error == "unknown_purpose":
            return "", None
        return "refused as unknown purpose", None
    e = case.expect
    problems: list[str] = []
    if e.error is not None:
        problems.append(f"expected error {e.error}, got a decision")
    if e.allowed is not None and decision.allowed != e.allowed:
        problems.append(f"expected {'allow' if e.allowed else 'deny'}, got {'allow' if decision.allowed else 'deny'}")
    if e.tier is not None and decision.tier != e.tier:
        problems.append(f"expected tier {e.tier!r}, got {decision.tier!r}")
    if e.reasons is not None and set(decision.reasons) != set(e.reasons):
        problems.append(f"expected reasons {sorted(e.reasons)}, got {sorted(decision.reasons)}")
    if decision.errors:
        problems.append(f"evaluation errors: {list(decision.errors)}")
    return "; ".join(problems), decision


def run_bundle_tests(bundle: PolicyBundle) -> TestReport:
    """Runs every ``*_test.yaml`` case of a parsed bundle.

    Args:
        bundle: the parsed bundle.
    """
    pdp = CedarPDP(bundle)
    outcomes: list[CaseOutcome] = []
    problems: list[BundleProblem] = []
    if not bundle.test_files:
        problems.append(BundleProblem(str(bundle.directory), 0, "no *_test.yaml cases"))
    for path in bundle.test_files:
        try:
            cases, models = load_cases(path)
        except ValueError as exc:
            problems.append(BundleProblem(path.name, 0, str(exc)))
            continue
        for line, case in cases:
            failure, decision = run_case(pdp, case, models)
            outcomes.append(CaseOutcome(path.name, line, case.name, failure, decision))
    return TestReport(tuple(outcomes), tuple(problems))
