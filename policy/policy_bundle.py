"""A policy bundle on disk, parsed and validated into one immutable value.

Why: policy owners edit files, and a mistake in them must be refused with the
file, the line and the reason before it can change a single decision. A
bundle directory holds:

    schema.cedarschema.json   Cedar schema (JSON form): User in Role, Model, actions
    *.cedar                   access policies, each with a unique @id("...")
    profiles.yaml             tier -> TierProfileSpec (how much each tier reveals)
    purposes.yaml             roles and purposes declared beyond the built-in ones
    *_test.yaml               cases run by `desiderata.policy.testing`

`parse_bundle` checks syntax, the schema, every policy against the schema,
@id annotations, role and purpose literals, and profiles; running the test
cases is the last step of loading (`desiderata.policy.store.load_bundle`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cedarpy
import yaml
from pydantic import ValidationError

from desiderata.policy.model import BUILTIN_PURPOSES, BUILTIN_ROLES
from desiderata.policy.profiles import DisclosureProfile
from desiderata.policy.tier_profiles import KIND_TIERS, OPTIONAL_ACTIONS, TierProfileSpec, all_tiers

__all__ = [
    "SCHEMA_FILE",
    "BundleError",
    "BundleProblem",
    "PolicyBundle",
    "PolicySource",
    "bundle_hash",
    "parse_bundle",
]

SCHEMA_FILE = "schema.cedarschema.json"
_ID_RE = re.compile(r'@id\(\s*"([^"]*)"\s*\)')
_EFFECT_RE = re.compile(r"\b(permit|forbid)\s*\(")
_ROLE_RE = re.compile(r'Role::"([^"]*)"')
_PURPOSE_RE = re.compile(r'context\.purpose\s*==\s*"([^"]*)"|"([^"]*)"\s*==\s*context\.purpose')
_PURPOSE_SET_RE = re.compile(r"\[([^\]]*)\]\s*\.contains\(\s*context\.purpose\s*\)")


@dataclass(frozen=True)
class BundleProblem:
    """One reason a bundle is refused.

    Args:
        file: file name inside the bundle.
        line: 1-based line (0 when the whole file is at fault).
        reason: what is wrong.
    """

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


class BundleError(ValueError):
    """The bundle is invalid; `problems` lists every reason found."""

    def __init__(self, problems: list[BundleProblem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class PolicySource:
    """Where one policy is written."""

    policy_id: str
    effect: str
    file: str
    line: int


@dataclass(frozen=True)
class PolicyBundle:
    """A parsed, validated bundle (its test cases not yet run)."""

    directory: Path
    version: str
    schema_json: dict[str, Any]
    schema: cedarpy.Schema
    policy_text: str
    policies: cedarpy.PolicySet
    sources: tuple[PolicySource, ...]
    specs: dict[str, TierProfileSpec]
    profiles: dict[str, DisclosureProfile]
    roles: frozenset[str]
    purposes: frozenset[str]
    model_attributes: dict[str, str]
    """Model attribute name -> Cedar type ("String", "Boolean", "Long")."""
    user_attributes: frozenset[str]
    """Principal attributes the schema declares (passed from `Principal.attributes`)."""
    test_files: tuple[Path, ...]


def _bundle_files(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and not any(part.startswith((".", "__")) for part in p.relative_to(directory).parts)
    )


def bundle_hash(directory: Path) -> str:
    """Content hash of every file of the bundle: its policy version.

    Args:
        directory: the bundle directory.
    """
    h = hashlib.sha256()
    for p in _bundle_files(directory):
        h.update(p.relative_to(directory).as_posix().encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    return "sha256:" + h.hexdigest()[:16]


def split_policies(text: str) -> list[tuple[int, str]]:
    """Splits Cedar text into statements, each with its 1-based start line.

    Args:
        text: Cedar policy text.
    """
    out: list[tuple[int, str]] = []
    start, line, start_line, i = 0, 1, 0, 0
    in_str = False
    while i < len(text):
        c = text[i]
        if in_str:
            if c == "\\":
                i += 1
            elif c == '"':
                in_str = False
        elif c == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        elif c == '"':
            in_str = True
        elif c == ";":
            out.append((start_line or line, text[start : i + 1]))
            start, start_line = i + 1, 0
        elif not c.isspace() and start_line == 0:
            start_line = line
        if c == "\n":
            line += 1
        i += 1
    if text[start:].strip() and start_line:
        out.append((start_line, text[start:]))
    return out


def compose_yaml(text: str) -> yaml.Node | None:
    """The YAML node tree of a text (for `yaml_line`), using libyaml when present.

    Args:
        text: the YAML document.
    """
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    node: yaml.Node | None = yaml.compose(text, Loader=loader)
    return node


def yaml_line(doc: str | yaml.Node | None, path: tuple[Any, ...]) -> int:
    """1-based line of the node at `path` (keys / indexes) in a YAML text, or
    of the deepest node found on the way.

    Args:
        doc: the YAML document, or its node tree from `compose_yaml`.
        path: keys and sequence indexes from the root.
    """
    node = compose_yaml(doc) if isinstance(doc, str) else doc
    line = 1
    for key in path:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if k.value == str(key)), None)
            if nxt is None:
                return next((k.start_mark.line + 1 for k, _ in node.value if k.value == str(key)), line)
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            break
    return line if node is None else node.start_mark.line + 1


def _read_yaml(path: Path, problems: list[BundleProblem]) -> tuple[str, Any]:
    text = path.read_text()
    try:
        return text, yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        problems.append(BundleProblem(path.name, line, f"YAML error: {getattr(exc, 'problem', exc)}"))
        return text, None


def _load_declared(directory: Path, problems: list[BundleProblem]) -> tuple[frozenset[str], frozenset[str]]:
    roles, purposes = set(BUILTIN_ROLES), set(BUILTIN_PURPOSES)
    path = directory / "purposes.yaml"
    if not path.exists():
        return frozenset(roles), frozenset(purposes)
    text, data = _read_yaml(path, problems)
    if data is None:
        return frozenset(roles), frozenset(purposes)
    if not isinstance(data, dict) or set(data) - {"roles", "purposes"}:
        problems.append(BundleProblem(path.name, 1, "expected only the keys 'roles' and 'purposes'"))
        return frozenset(roles), frozenset(purposes)
    for key, target in (("roles", roles), ("purposes", purposes)):
        values = data.get(key) or []
        if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
            problems.append(BundleProblem(path.name, yaml_line(text, (key,)), f"{key}: a list of names"))
            continue
        target.update(values)
    return frozenset(roles), frozenset(purposes)


def _load_profiles(
    directory: Path, problems: list[BundleProblem]
) -> tuple[dict[str, TierProfileSpec], dict[str, DisclosureProfile]]:
    specs: dict[str, TierProfileSpec] = {}
    path = directory / "profiles.yaml"
    if not path.exists():
        problems.append(BundleProblem("profiles.yaml", 0, "missing"))
        return {}, {}
    text, data = _read_yaml(path, problems)
    if data is None:
        return {}, {}
    entries = data.get("profiles") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        problems.append(BundleProblem(path.name, 1, "expected a mapping under 'profiles'"))
        return {}, {}
    known = set(all_tiers())
    for tier, raw in entries.items():
        if tier not in known:
            line = yaml_line(text, ("profiles", tier))
            problems.append(BundleProblem(path.name, line, f"unknown tier {tier!r}"))
            continue
        try:
            specs[tier] = TierProfileSpec.model_validate(raw or {})
        except ValidationError as exc:
            for err in exc.errors():
                line = yaml_line(text, ("profiles", tier, *err["loc"]))
                where = ".".join(str(p) for p in err["loc"]) or "profile"
                problems.append(BundleProblem(path.name, line, f"{tier}: {where}: {err['msg']}"))
    for tiers in KIND_TIERS.values():
        for tier in tiers:
            if tier not in entries:
                problems.append(BundleProblem(path.name, 0, f"no profile for tier {tier!r}"))
    return specs, {tier: spec.to_profile(tier) for tier, spec in specs.items()}


def _load_schema(
    directory: Path, problems: list[BundleProblem]
) -> tuple[dict[str, Any], cedarpy.Schema | None, dict[str, str], frozenset[str]]:
    path = directory / SCHEMA_FILE
    if not path.exists():
        problems.append(BundleProblem(SCHEMA_FILE, 0, "missing"))
        return {}, None, {}, frozenset()
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        problems.append(BundleProblem(SCHEMA_FILE, exc.lineno, f"JSON error: {exc.msg}"))
        return {}, None, {}, frozenset()
    try:
        handle = cedarpy.Schema.from_json_str(json.dumps(raw))
    except ValueError as exc:
        problems.append(BundleProblem(SCHEMA_FILE, 0, f"invalid Cedar schema: {exc}"))
        return raw, None, {}, frozenset()
    ns = raw.get("", {}) if isinstance(raw, dict) else {}
    declared = set(ns.get("actions", {}))
    for missing in sorted(set(all_tiers()) - set(OPTIONAL_ACTIONS) - declared):
        problems.append(BundleProblem(SCHEMA_FILE, 0, f"action {missing!r} is not declared"))
    for extra in sorted(declared - set(all_tiers())):
        problems.append(BundleProblem(SCHEMA_FILE, 0, f"unknown action {extra!r} (not a tier)"))
    types = ns.get("entityTypes", {})
    attrs = types.get("Model", {}).get("shape", {}).get("attributes", {})
    user = types.get("User", {}).get("shape", {}).get("attributes", {})
    model_attrs = {name: spec.get("type", "") for name, spec in attrs.items()}
    return raw, handle, model_attrs, frozenset(user)


def _check_policy_file(
    path: Path,
    schema: cedarpy.Schema | None,
    roles: frozenset[str],
    purposes: frozenset[str],
    problems: list[BundleProblem],
) -> list[PolicySource]:
    text = path.read_text()
    statements = split_policies(text)
    sources: list[PolicySource] = []
    parsed_ok = True
    for line, stmt in statements:
        try:
            cedarpy.PolicySet.from_str(stmt)
        except ValueError as exc:
            problems.append(BundleProblem(path.name, line, f"Cedar syntax error: {exc}"))
            parsed_ok = False
            continue
        ids = _ID_RE.findall(stmt)
        effect = _EFFECT_RE.search(stmt)
        if len(ids) != 1 or not ids[0]:
            problems.append(BundleProblem(path.name, line, 'every policy needs one non-empty @id("...")'))
        for role in _ROLE_RE.findall(stmt):
            if role not in roles:
                problems.append(BundleProblem(path.name, line, f"unknown role {role!r} (declare it)"))
        literals = [a or b for a, b in _PURPOSE_RE.findall(stmt)]
        for group in _PURPOSE_SET_RE.findall(stmt):
            literals += re.findall(r'"([^"]*)"', group)
        for purpose in literals:
            if purpose not in purposes:
                problems.append(BundleProblem(path.name, line, f"unknown purpose {purpose!r} (declare it)"))
        if ids and effect:
            sources.append(PolicySource(ids[0], effect.group(1), path.name, line))
    if parsed_ok and schema is not None:
        result = cedarpy.validate_policies(text, schema)
        for err in result.errors:
            index = int(err.policy_id.removeprefix("policy")) if err.policy_id[6:].isdigit() else -1
            line = statements[index][0] if 0 <= index < len(statements) else 0
            problems.append(BundleProblem(path.name, line, err.error))
    return sources


def parse_bundle(directory: Path) -> PolicyBundle:
    """Parses and validates a bundle; raises `BundleError` listing every problem.

    Args:
        directory: the bundle directory.
    """
    if not directory.is_dir():
        raise BundleError([BundleProblem(str(directory), 0, "not a directory")])
    version = bundle_hash(directory)
    problems: list[BundleProblem] = []
    roles, purposes = _load_declared(directory, problems)
    schema_json, schema, model_attrs, user_attrs = _load_schema(directory, problems)
    specs, profiles = _load_profiles(directory, problems)
    cedar_files = sorted(directory.glob("*.cedar"))
    if not cedar_files:
        problems.append(BundleProblem(str(directory), 0, "no *.cedar policy files"))
    sources: list[PolicySource] = []
    for path in cedar_files:
        sources += _check_policy_file(path, schema, roles, purposes, problems)
    seen: dict[str, PolicySource] = {}
    for src in sources:
        if src.policy_id in seen:
            first = seen[src.policy_id]
            problems.append(
                BundleProblem(src.file, src.line, f"duplicate @id {src.policy_id!r} ({first.file}:{first.line})")
            )
        seen[src.policy_id] = src
    if problems or schema is None:
        raise BundleError(problems)
    text = "\n".join(p.read_text() for p in cedar_files)
    return PolicyBundle(
        directory=directory,
        version=version,
        schema_json=schema_json,
        schema=schema,
        policy_text=text,
        policies=cedarpy.PolicySet.from_str(text),
        sources=tuple(sources),
        specs=specs,
        profiles=profiles,
        roles=roles,
        purposes=purposes,
        model_attributes=model_attrs,
        user_attributes=user_attrs,
        test_files=tuple(sorted(directory.glob("*_test.yaml"))),
    )
