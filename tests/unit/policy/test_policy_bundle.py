"""Bundle validation: every kind of broken file is refused with file, line and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from desiderata.policy.policy_bundle import BundleError, bundle_hash, parse_bundle, split_policies
from desiderata.policy.store import default_bundle_dir, load_bundle


def _problems(directory: Path) -> list[tuple[str, int, str]]:
    with pytest.raises(BundleError) as info:
        load_bundle(directory)
    return [(p.file, p.line, p.reason) for p in info.value.problems]


def _line_of(path: Path, needle: str) -> int:
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return i
    raise LookupError(needle)


def test_shipped_bundle_loads_and_is_hashed() -> None:
    bundle = load_bundle(default_bundle_dir())
    assert bundle.version.startswith("sha256:") and len(bundle.version) == 23
    ids = {s.policy_id for s in bundle.sources}
    assert {"engineer.full_fidelity", "end_user.no_submitted_instances"} <= ids
    assert bundle.model_attributes == {"domain": "String", "dp_trained": "Boolean"}


def test_hash_changes_with_content(bundle_dir: Path) -> None:
    before = bundle_hash(bundle_dir)
    (bundle_dir / "purposes.yaml").write_text("roles: []\npurposes: [research]\n")
    assert bundle_hash(bundle_dir) != before


def test_split_policies_tracks_lines_strings_and_comments() -> None:
    text = (
        '// a; comment\npermit(principal, action, resource)\nwhen { context.purpose == "a;b" };\n\n'
        "forbid(principal, action, resource);\n"
    )
    assert [line for line, _ in split_policies(text)] == [2, 5]


def test_syntax_error_names_file_and_line(bundle_dir: Path) -> None:
    path = bundle_dir / "guards.cedar"
    path.write_text(path.read_text() + '\n@id("broken")\nforbid (principal, action, resource) when { context. };\n')
    problems = _problems(bundle_dir)
    line = _line_of(path, '@id("broken")')
    assert any(f == "guards.cedar" and ln == line and "syntax" in r for f, ln, r in problems), problems


def test_unknown_attribute_is_refused_at_its_policy(bundle_dir: Path) -> None:
    path = bundle_dir / "guards.cedar"
    path.write_text(path.read_text().replace("when { !resource.dp_trained }", "when { !resource.dp_trainde }"))
    problems = _problems(bundle_dir)
    line = _line_of(path, '@id("samples.require_dp_outside_engineering")')
    assert any(f == "guards.cedar" and ln == line and "dp_trainde" in r for f, ln, r in problems), problems


def test_unknown_action_is_refused(bundle_dir: Path) -> None:
    path = bundle_dir / "guards.cedar"
    path.write_text(
        path.read_text() + '\n@id("x")\nforbid (principal, action == Action::"telepathy/full", resource);\n'
    )
    problems = _problems(bundle_dir)
    assert any("telepathy" in r and f == "guards.cedar" and ln > 0 for f, ln, r in problems), problems


def test_unknown_role_and_purpose_literals_are_refused(bundle_dir: Path) -> None:
    path = bundle_dir / "stakeholders.cedar"
    text = (
        path.read_text()
        .replace('Role::"executive"', 'Role::"exec"')
        .replace('"monitoring", "transparency"]', '"monitoring", "transparancy"]')
    )
    path.write_text(text)
    reasons = [r for _, _, r in _problems(bundle_dir)]
    assert any("unknown role 'exec'" in r for r in reasons), reasons
    assert any("unknown purpose 'transparancy'" in r for r in reasons), reasons


def test_declared_purpose_is_accepted(bundle_dir: Path) -> None:
    (bundle_dir / "purposes.yaml").write_text("roles: [auditor]\npurposes: [research]\n")
    bundle = parse_bundle(bundle_dir)
    assert "research" in bundle.purposes and "auditor" in bundle.roles


def test_missing_and_duplicate_ids_are_refused(bundle_dir: Path) -> None:
    path = bundle_dir / "guards.cedar"
    path.write_text(
        path.read_text()
        + "\nforbid (principal, action, resource) when { false };\n"
        + '@id("end_user.own_decisions_only")\nforbid (principal, action, resource) when { false };\n'
    )
    reasons = [r for _, _, r in _problems(bundle_dir)]
    assert any("needs one non-empty @id" in r for r in reasons), reasons
    assert any("duplicate @id 'end_user.own_decisions_only'" in r for r in reasons), reasons


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("    top_k: 5\n", "    top_k: 0\n", "top_k"),
        (
            "      rate_per_minute: 120\n",
            "      noise_multiplier: -1.0\n      clip_norm: 1.0\n",
            "noise_multiplier",
        ),
        ("    rounding: 0.01\n    redacted", "    rounding: -0.5\n    redacted", "rounding"),
        ("    narrative_only: true\n", "    narrative_only: true\n    colour: blue\n", "colour"),
    ],
)
def test_impossible_profile_value_names_its_line(bundle_dir: Path, old: str, new: str, field: str) -> None:
    path = bundle_dir / "profiles.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    problems = _problems(bundle_dir)
    line = _line_of(path, field + ":")
    assert any(f == "profiles.yaml" and ln == line and field in r for f, ln, r in problems), problems


def test_missing_profile_and_unknown_tier(bundle_dir: Path) -> None:
    path = bundle_dir / "profiles.yaml"
    path.write_text(path.read_text().replace("  robustness/full: {}\n", "  robustness/partial: {}\n"))
    reasons = [r for _, _, r in _problems(bundle_dir)]
    assert any("unknown tier 'robustness/partial'" in r for r in reasons)
    assert any("no profile for tier 'robustness/full'" in r for r in reasons)


def test_yaml_syntax_error_has_a_line(bundle_dir: Path) -> None:
    (bundle_dir / "profiles.yaml").write_text("profiles:\n  a: [1, 2\n  b: {}\n")
    problems = _problems(bundle_dir)
    assert any(f == "profiles.yaml" and ln >= 2 and "YAML" in r for f, ln, r in problems), problems


def test_schema_must_declare_every_tier(bundle_dir: Path) -> None:
    path = bundle_dir / "schema.cedarschema.json"
    path.write_text(path.read_text().replace('"robustness/full"', '"robustness/fuller"'))
    reasons = [r for _, _, r in _problems(bundle_dir)]
    assert any("action 'robustness/full' is not declared" in r for r in reasons), reasons
    assert any("unknown action 'robustness/fuller'" in r for r in reasons), reasons


def test_failing_case_refuses_the_bundle(bundle_dir: Path) -> None:
    path = bundle_dir / "stakeholders_test.yaml"
    path.write_text(path.read_text().replace("tier: feature_attribution/summary", "tier: feature_attribution/full"))
    problems = _problems(bundle_dir)
    line = _line_of(path, "name: loan officer gets summary attributions")
    assert any(f == "stakeholders_test.yaml" and ln == line and "expected tier" in r for f, ln, r in problems)


def test_bundle_without_cases_is_refused(bundle_dir: Path) -> None:
    (bundle_dir / "stakeholders_test.yaml").unlink()
    reasons = [r for _, _, r in _problems(bundle_dir)]
    assert any("no *_test.yaml" in r for r in reasons)
