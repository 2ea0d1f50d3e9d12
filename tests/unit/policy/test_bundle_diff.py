"""`desiderata policy diff`: the questions two bundles answer differently and the profile
fields that differ, on the shipped bundle and edited copies of it."""

from __future__ import annotations

import io
from pathlib import Path

from desiderata.policy.bundle_diff import decision_changes, profile_changes, questions
from desiderata.policy.cli import run_diff
from desiderata.policy.policy_bundle import parse_bundle
from desiderata.policy.store import default_bundle_dir

CREDIT = {"domain": "credit", "dp_trained": False, "name": "credit"}


def _diff(argv: list[str]) -> tuple[int, str]:
    buf = io.StringIO()
    return run_diff(argv, buf), buf.getvalue()


def test_a_bundle_against_itself_changes_nothing() -> None:
    code, out = _diff([str(default_bundle_dir()), str(default_bundle_dir())])
    # 6 purposes x 2 modes for each role; per pair 4 kinds x 2 origins + 4 actions,
    # twice over for end users (their own decision or not).
    staff, end_users = 4 * 6 * 2 * (4 * 2 + 4), 6 * 2 * (4 * 2 + 4) * 2
    assert f"decisions: 0 of {staff + end_users} change" in out
    assert "profiles: 0 field(s) change" in out and code == 0


def test_narrowing_a_permit_lists_exactly_the_questions_it_answered(bundle_dir: Path) -> None:
    # Loan officers lose summary attributions (the permit keeps their counterfactuals),
    # and the summary tier shows 8 attributions instead of 5.
    cedar = bundle_dir / "stakeholders.cedar"
    text = cedar.read_text()
    old_actions = 'action in [Action::"feature_attribution/summary", Action::"counterfactual/full"],'
    assert old_actions in text
    cedar.write_text(text.replace(old_actions, 'action in [Action::"counterfactual/full"],'))
    profiles = bundle_dir / "profiles.yaml"
    profiles.write_text(profiles.read_text().replace("    top_k: 5\n", "    top_k: 8\n", 1))
    old, new = parse_bundle(default_bundle_dir()), parse_bundle(bundle_dir)

    changes, asked = decision_changes(old, new, "credit", CREDIT, {"domain": "credit"})
    assert asked == len(list(questions(old.roles, old.purposes)))
    # The permit's condition: a domain expert of the model's domain, purpose transparency,
    # recourse or contest; either consumption mode, submitted or recorded instance.
    want = {
        (purpose, consumption, submitted)
        for purpose in ("transparency", "recourse", "contest")
        for consumption in ("static", "dynamic")
        for submitted in (True, False)
    }
    got = {(c.question.purpose, c.question.consumption.value, c.question.submitted) for c in changes}
    assert got == want and len(changes) == len(want)
    for c in changes:
        assert (c.question.role, c.question.ask) == ("domain_expert", "feature_attribution")
        assert (c.old.tier, c.new.tier) == ("feature_attribution/summary", "")
        assert c.old.reasons == ("domain_expert.summary",)
    assert [(p.tier, p.field, p.old, p.new) for p in profile_changes(old, new)] == [
        ("feature_attribution/summary", "top_k", 5, 8)
    ]
    # A loan officer of another domain never had the permit: nothing changes for them.
    assert decision_changes(old, new, "credit", CREDIT, {"domain": "insurance"})[0] == []

    code, out = _diff([str(default_bundle_dir()), str(bundle_dir)])
    assert code == 1 and f"decisions: 12 of {asked} change" in out
    assert "feature_attribution/summary -> DENY" in out and "top_k: 5 -> 8" in out
    code, out = _diff([str(bundle_dir), str(default_bundle_dir())])  # and back
    assert code == 1 and "DENY -> feature_attribution/summary  (domain_expert.summary)" in out


def test_a_purpose_only_the_new_bundle_declares_is_asked_of_both(bundle_dir: Path) -> None:
    (bundle_dir / "purposes.yaml").write_text("purposes: [research]\n")
    cedar = bundle_dir / "stakeholders.cedar"
    cedar.write_text(
        cedar.read_text()
        + '\n@id("engineer.research")\npermit (principal in Role::"ml_engineer", '
        + 'action == Action::"robustness/full", resource) when { context.purpose == "research" };\n'
    )
    old, new = parse_bundle(default_bundle_dir()), parse_bundle(bundle_dir)
    assert "research" in new.purposes and "research" not in old.purposes
    changes, _ = decision_changes(old, new, "credit", CREDIT, {"domain": "credit"})
    assert {(c.question.role, c.question.purpose, c.question.ask) for c in changes} == {
        ("ml_engineer", "research", "robustness")
    }
    assert all(c.old.reasons[0].startswith("refused: ") and c.new.tier == "robustness/full" for c in changes)


def test_bad_usage_and_invalid_bundles_exit_2(bundle_dir: Path) -> None:
    (bundle_dir / "guards.cedar").write_text("forbid ( nope")
    assert _diff([str(default_bundle_dir()), str(bundle_dir)])[0] == 2
    assert _diff([str(default_bundle_dir())])[0] == 2
    assert _diff([str(default_bundle_dir()), str(default_bundle_dir()), "--attr", "nokeyvalue"])[0] == 2
