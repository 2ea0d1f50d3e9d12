"""The Cedar PDP: highest allowed tier, reasons, default deny, fail closed."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import cedarpy
import pytest

from desiderata.explainers.base import Kind
from desiderata.policy.cedar_pdp import DEFAULT_DENY, EVALUATION_ERROR, CedarPDP
from desiderata.policy.decision import PolicyDecisionPoint, PolicyInput
from desiderata.policy.model import Consumption, Principal
from desiderata.policy.policy_bundle import parse_bundle
from desiderata.policy.store import default_bundle_dir, load_bundle
from desiderata.server.errors import InvalidArgument, UnknownPurpose

CREDIT = {"domain": "credit", "dp_trained": False}
ENGINEER = Principal("eve", "ml_engineer")
OFFICER = Principal("lou", "domain_expert", attributes={"domain": "credit"})
SUBJECT = Principal("u1", "end_user", subject_id="s1")


@pytest.fixture(scope="module")
def pdp() -> CedarPDP:
    return CedarPDP(load_bundle(default_bundle_dir()))


def _ask(principal: Principal, kind: Kind, purpose: str, **kw: bool) -> PolicyInput:
    return PolicyInput(principal, "credit", CREDIT, kind, purpose, Consumption.STATIC, **kw)


def test_implements_the_protocol(pdp: CedarPDP) -> None:
    checked: PolicyDecisionPoint = pdp
    assert checked.version == pdp.bundle.version
    assert {"debugging", "contest"} <= checked.known_purposes()


def test_allowed_decision_carries_profile_reasons_and_fresh_ids(pdp: CedarPDP) -> None:
    a = pdp.decide(_ask(OFFICER, Kind.FEATURE_ATTRIBUTION, "transparency"))
    b = pdp.decide(_ask(OFFICER, Kind.FEATURE_ATTRIBUTION, "transparency"))
    assert a.allowed and a.tier == "feature_attribution/summary"
    assert a.profile is not None and a.profile.top_k == 5 and a.profile.rounding == 0.01
    assert a.reasons == ("domain_expert.summary",)
    assert a.policy_version == pdp.version
    assert a.decision_id.startswith("dec_") and a.decision_id != b.decision_id


def test_highest_allowed_tier_is_served(bundle_dir: Path) -> None:
    # Give engineers the summary tier too: they must still be served full.
    extra = bundle_dir / "extra.cedar"
    extra.write_text(
        '@id("engineer.summary_too")\npermit (principal in Role::"ml_engineer", '
        'action == Action::"feature_attribution/summary", resource) when { context.purpose == "audit" };\n'
    )
    local = CedarPDP(load_bundle(bundle_dir))
    d = local.decide(_ask(ENGINEER, Kind.FEATURE_ATTRIBUTION, "debugging"))
    assert d.tier == "feature_attribution/full" and d.reasons == ("engineer.full_fidelity",)
    d = local.decide(_ask(ENGINEER, Kind.FEATURE_ATTRIBUTION, "audit"))
    assert d.tier == "feature_attribution/summary" and d.reasons == ("engineer.summary_too",)


def test_forbid_overrides_permit_and_is_the_reason(pdp: CedarPDP) -> None:
    d = pdp.decide(_ask(SUBJECT, Kind.FEATURE_ATTRIBUTION, "transparency", own_decision=True))
    assert not d.allowed and d.profile is None and d.tier == ""
    assert d.reasons == ("end_user.no_submitted_instances",)


def test_default_deny(pdp: CedarPDP) -> None:
    d = pdp.decide(_ask(Principal("x", "executive"), Kind.ROBUSTNESS, "monitoring"))
    assert not d.allowed and d.reasons == (DEFAULT_DENY,)


def test_unknown_purpose_is_invalid_argument(pdp: CedarPDP) -> None:
    with pytest.raises(UnknownPurpose) as info:
        pdp.decide(_ask(ENGINEER, Kind.FEATURE_ATTRIBUTION, "curiosity"))
    assert isinstance(info.value, InvalidArgument) and info.value.violations[0].field == "purpose"


def test_missing_model_attribute_fails_closed(pdp: CedarPDP) -> None:
    # The schema requires dp_trained; without it entity validation errors -> deny.
    d = pdp.decide(
        PolicyInput(
            ENGINEER,
            "credit",
            {"domain": "credit"},
            Kind.FEATURE_ATTRIBUTION,
            "debugging",
            Consumption.STATIC,
        )
    )
    assert not d.allowed and d.reasons == (EVALUATION_ERROR,) and d.errors


def test_engine_exception_fails_closed() -> None:
    pdp = CedarPDP(load_bundle(default_bundle_dir()))  # fresh: nothing remembered yet
    with mock.patch.object(cedarpy, "is_authorized_batch", side_effect=RuntimeError("boom")):
        d = pdp.decide(_ask(ENGINEER, Kind.FEATURE_ATTRIBUTION, "debugging"))
    assert not d.allowed and d.reasons == (EVALUATION_ERROR,)


def test_unguarded_optional_attribute_is_refused_at_load(bundle_dir: Path) -> None:
    (bundle_dir / "extra.cedar").write_text(
        '@id("needs_domain")\nforbid (principal, action, resource) when { principal.domain == "x" };\n'
    )
    with pytest.raises(ValueError, match=r"extra\.cedar:1: .*optional attribute `domain`"):
        load_bundle(bundle_dir)


def test_forbid_that_errors_at_runtime_denies_instead_of_being_skipped(bundle_dir: Path) -> None:
    # Cedar skips a policy whose evaluation errors; for a forbid that would
    # open access. Long overflow passes validation and errors at runtime.
    (bundle_dir / "extra.cedar").write_text(
        '@id("overflowing_guard")\nforbid (principal, action, resource)\n'
        "when { 9223372036854775807 + (if context.own_decision then 1 else 0) > 0 };\n"
    )
    local = CedarPDP(parse_bundle(bundle_dir))
    ok = local.decide(_ask(ENGINEER, Kind.FEATURE_ATTRIBUTION, "debugging"))
    erroring = local.decide(_ask(ENGINEER, Kind.FEATURE_ATTRIBUTION, "debugging", own_decision=True))
    assert not ok.allowed and ok.reasons == ("overflowing_guard",)  # 2^63-1 + 0 > 0: forbid holds
    assert not erroring.allowed and erroring.reasons == (EVALUATION_ERROR,) and erroring.errors


def test_capabilities_from_the_same_engine(pdp: CedarPDP) -> None:
    caps = {c.kind: c for c in pdp.capabilities(SUBJECT, "credit", CREDIT, "transparency", Consumption.STATIC)}
    assert set(caps) == {Kind.FEATURE_ATTRIBUTION, Kind.COUNTERFACTUAL}
    fa = caps[Kind.FEATURE_ATTRIBUTION]
    assert fa.tier == "feature_attribution/narrative" and fa.profile.narrative_only and fa.profile.top_k == 3
    assert not fa.may_submit_instances
    eng = {c.kind: c for c in pdp.capabilities(ENGINEER, "credit", CREDIT, "debugging", Consumption.STATIC)}
    assert {c.tier for c in eng.values()} == {
        "feature_attribution/full",
        "counterfactual/full",
        "sample_importance/full",
        "robustness/full",
    }
    assert all(c.may_submit_instances for c in eng.values())
    assert pdp.capabilities(Principal("m", "intern"), "credit", CREDIT, "debugging", Consumption.STATIC) == []


def test_global_actions(pdp: CedarPDP) -> None:
    reg = Principal("r", "regulator")
    assert pdp.authorize(reg, "audit/read", "credit", CREDIT, "audit").allowed
    assert not pdp.authorize(Principal("e", "executive"), "audit/read", "credit", CREDIT, "audit").allowed
    with pytest.raises(InvalidArgument):
        pdp.authorize(reg, "feature_attribution/full", "credit", CREDIT, "audit")


def test_the_store_log_is_a_resource_of_audit_reads_only(pdp: CedarPDP, bundle_dir: Path) -> None:
    reg = Principal("r", "regulator")
    store = pdp.authorize(reg, "audit/read", "", {}, "audit")
    assert store.allowed and store.reasons == ("regulator.audit",)
    assert not pdp.authorize(ENGINEER, "audit/read", "", {}, "debugging").allowed
    with pytest.raises(InvalidArgument, match="model"):
        pdp.authorize(reg, "global/summary", "", {}, "audit")
    # A bundle written before the Log type existed cannot decide it: denied, not skipped.
    schema = bundle_dir / "schema.cedarschema.json"
    doc = json.loads(schema.read_text())
    space = next(iter(doc))
    del doc[space]["entityTypes"]["Log"]
    doc[space]["actions"]["audit/read"]["appliesTo"]["resourceTypes"] = ["Model"]
    schema.write_text(json.dumps(doc))
    older = CedarPDP(parse_bundle(bundle_dir))
    assert older.authorize(reg, "audit/read", "credit", CREDIT, "audit").allowed
    refused = older.authorize(reg, "audit/read", "", {}, "audit")
    assert not refused.allowed and refused.reasons == (EVALUATION_ERROR,)


def test_listing_decisions_is_decided_on_the_callers_own_subject(pdp: CedarPDP, bundle_dir: Path) -> None:
    own = pdp.authorize(SUBJECT, "decisions/list", "credit", CREDIT, "transparency", own_decision=True)
    assert own.allowed and own.reasons == ("end_user.own_decisions_list",)
    other = pdp.authorize(SUBJECT, "decisions/list", "credit", CREDIT, "transparency")
    assert not other.allowed and other.reasons == ("end_user.own_decisions_only",)
    # A bundle written before the action existed still loads, and denies it.
    policies = bundle_dir / "stakeholders.cedar"
    text = policies.read_text()
    policies.write_text(text[: text.index("// End users list the decisions recorded about them")])
    (bundle_dir / "stakeholders_test.yaml").unlink()
    schema = bundle_dir / "schema.cedarschema.json"
    doc = json.loads(schema.read_text())
    del doc[next(iter(doc))]["actions"]["decisions/list"]
    schema.write_text(json.dumps(doc))
    older = CedarPDP(parse_bundle(bundle_dir))
    refused = older.authorize(SUBJECT, "decisions/list", "credit", CREDIT, "transparency", own_decision=True)
    assert not refused.allowed and refused.reasons == (EVALUATION_ERROR,)


def test_remembered_decisions_equal_evaluated_ones_and_errors_are_not_remembered() -> None:
    bundle = load_bundle(default_bundle_dir())
    cached, fresh = CedarPDP(bundle), CedarPDP(bundle, cache_size=0)
    asks = [
        _ask(ENGINEER, Kind.FEATURE_ATTRIBUTION, "debugging"),
        _ask(OFFICER, Kind.COUNTERFACTUAL, "recourse"),
        _ask(SUBJECT, Kind.FEATURE_ATTRIBUTION, "transparency", own_decision=True, submitted_instance=False),
        _ask(SUBJECT, Kind.FEATURE_ATTRIBUTION, "transparency", own_decision=False, submitted_instance=False),
    ]
    for ask in asks * 2:
        a, b = cached.decide(ask), fresh.decide(ask)
        assert (a.allowed, a.tier, a.reasons) == (b.allowed, b.tier, b.reasons)
        assert a.decision_id != b.decision_id
    with mock.patch.object(cedarpy, "is_authorized_batch", side_effect=AssertionError("must not evaluate")):
        other_engineer = Principal("zed", "ml_engineer")  # same role and attributes: shared answer
        assert cached.decide(_ask(other_engineer, Kind.FEATURE_ATTRIBUTION, "debugging")).allowed
    broken = PolicyInput(
        ENGINEER, "credit", {"domain": "credit"}, Kind.FEATURE_ATTRIBUTION, "debugging", Consumption.STATIC
    )
    assert cached.decide(broken).reasons == (EVALUATION_ERROR,)
    assert cached.decide(broken).reasons == (EVALUATION_ERROR,)  # errors are evaluated again, never stored


def test_a_policy_naming_a_user_makes_the_principal_id_part_of_the_key(bundle_dir: Path) -> None:
    (bundle_dir / "banned.cedar").write_text(
        '@id("banned.eve")\nforbid (principal == User::"eve", action, resource);\n'
    )
    pdp = CedarPDP(parse_bundle(bundle_dir))
    assert pdp.decide(_ask(Principal("zed", "ml_engineer"), Kind.FEATURE_ATTRIBUTION, "debugging")).allowed
    denied = pdp.decide(_ask(ENGINEER, Kind.FEATURE_ATTRIBUTION, "debugging"))
    assert not denied.allowed and denied.reasons == ("banned.eve",)
