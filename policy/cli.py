"""Policy owners' and auditors' command-line tools, as plain functions.

Why: policy owners must check a bundle before it goes live, and auditors must
check the log, without a running server. Each function takes an argv list,
prints human-readable output and returns the process exit code (0 ok,
1 failed check, 2 bad usage); the server's ``desiderata`` console script
dispatches to them:

    desiderata policy validate DIR
    desiderata policy test DIR
    desiderata policy explain DIR --role end_user --model credit --kind feature_attribution ...
    desiderata policy diff OLD NEW [--card card.yaml] [--attr domain=credit]
    desiderata audit verify (--sqlite PATH | --postgres DSN) [--anchor SEQ:HASH]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from desiderata.explainers.base import Kind
from desiderata.policy.audit import AuditLog
from desiderata.policy.bundle_diff import decision_changes, profile_changes
from desiderata.policy.cedar_pdp import CedarPDP
from desiderata.policy.decision import PolicyInput
from desiderata.policy.model import Consumption, Principal
from desiderata.policy.policy_bundle import BundleError, parse_bundle
from desiderata.policy.testing import run_bundle_tests
from desiderata.server.errors import InvalidArgument, UnknownPurpose
from desiderata.server.model_card import load_card
from desiderata.server.model_repository import BUILTIN_DEMO

__all__ = ["run_audit_verify", "run_diff", "run_explain", "run_test", "run_validate"]


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | None:
    try:
        return parser.parse_args(argv)
    except SystemExit:
        return None


def run_validate(argv: list[str], out: TextIO = sys.stdout) -> int:
    """``desiderata policy validate DIR``: syntax, schema and profiles, no cases.

    Args:
        argv: arguments after ``policy validate``.
        out: where to print.
    """
    parser = argparse.ArgumentParser(prog="desiderata policy validate")
    parser.add_argument("dir", type=Path)
    args = _parse(parser, argv)
    if args is None:
        return 2
    try:
        bundle = parse_bundle(args.dir)
    except BundleError as exc:
        for p in exc.problems:
            print(f"error: {p}", file=out)
        print(f"{len(exc.problems)} problem(s); the bundle would be refused", file=out)
        return 1
    print(
        f"ok: {len(bundle.sources)} policies, {len(bundle.profiles)} profiles, version {bundle.version}",
        file=out,
    )
    return 0


def run_test(argv: list[str], out: TextIO = sys.stdout) -> int:
    """``desiderata policy test DIR``: validate, then run every ``*_test.yaml`` case.

    Args:
        argv: arguments after ``policy test``.
        out: where to print.
    """
    parser = argparse.ArgumentParser(prog="desiderata policy test")
    parser.add_argument("dir", type=Path)
    args = _parse(parser, argv)
    if args is None:
        return 2
    try:
        bundle = parse_bundle(args.dir)
    except BundleError as exc:
        for p in exc.problems:
            print(f"error: {p}", file=out)
        return 1
    report = run_bundle_tests(bundle)
    for o in report.outcomes:
        print(f"{'PASS' if not o.failure else 'FAIL'} {o.file}:{o.line} {o.name}", file=out)
        if o.failure:
            print(f"     {o.failure}", file=out)
    for p in report.problems:
        print(f"error: {p}", file=out)
    failed = sum(1 for o in report.outcomes if o.failure)
    print(f"{len(report.outcomes) - failed} passed, {failed} failed (policy {bundle.version})", file=out)
    return 0 if report.passed else 1


def _pairs(items: list[str], what: str) -> dict[str, str | bool]:
    out: dict[str, str | bool] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{what} {item!r}: expected key=value")
        out[key] = {"true": True, "false": False}.get(value, value)
    return out


def run_explain(argv: list[str], out: TextIO = sys.stdout) -> int:
    """``desiderata policy explain``: dry run of one decision, with where each reason is written.

    Args:
        argv: arguments after ``policy explain``.
        out: where to print.
    """
    parser = argparse.ArgumentParser(prog="desiderata policy explain")
    parser.add_argument("dir", type=Path)
    parser.add_argument("--principal", default="dry-run")
    parser.add_argument("--role", required=True)
    parser.add_argument("--subject", default="")
    parser.add_argument("--attr", action="append", default=[], help="principal attribute key=value")
    parser.add_argument(
        "--model", required=True, help='model name; "" with --action audit/read: the store-wide records (Log::"store")'
    )
    parser.add_argument("--model-attr", action="append", default=[], help="e.g. domain=credit dp_trained=false")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--kind", choices=[k.value for k in Kind])
    target.add_argument("--action", choices=["global/summary", "global/drift", "audit/read", "decisions/list"])
    parser.add_argument("--purpose", required=True)
    parser.add_argument("--consumption", choices=["static", "dynamic"], default="static")
    parser.add_argument("--own-decision", action="store_true")
    parser.add_argument("--decision-only", action="store_true", help="ExplainDecision: no submitted instance")
    args = _parse(parser, argv)
    if args is None:
        return 2
    try:
        attrs = {k: str(v) for k, v in _pairs(args.attr, "--attr").items()}
        model_attrs = _pairs(args.model_attr, "--model-attr")
        pdp = CedarPDP(parse_bundle(args.dir))
    except (ValueError, BundleError) as exc:
        print(f"error: {exc}", file=out)
        return 2
    principal = Principal(args.principal, args.role, args.subject, attrs)
    consumption = Consumption(args.consumption)
    try:
        if args.kind:
            kind = Kind(args.kind)
            submitted = not args.decision_only
            q = PolicyInput(
                principal,
                args.model,
                dict(model_attrs),
                kind,
                args.purpose,
                consumption,
                args.own_decision,
                submitted,
            )
            decision = pdp.decide(q)
        else:
            decision = pdp.authorize(
                principal, args.action, args.model, dict(model_attrs), args.purpose, consumption, args.own_decision
            )
    except (UnknownPurpose, InvalidArgument) as exc:
        print(f"refused (INVALID_ARGUMENT): {exc.message}", file=out)
        return 1
    where = {s.policy_id: f"{s.effect} at {s.file}:{s.line}" for s in pdp.bundle.sources}
    verdict = "ALLOW" if decision.allowed else "DENY"
    print(f"{verdict} {decision.tier or '-'} (policy {decision.policy_version})", file=out)
    for reason in decision.reasons:
        print(f"  because {reason}: {where.get(reason, 'built-in rule')}", file=out)
    for err in decision.errors:
        print(f"  evaluation error: {err}", file=out)
    if decision.profile is not None:
        print("  profile: " + json.dumps(decision.profile.model_dump(mode="json"), sort_keys=True), file=out)
    return 0


def run_diff(argv: list[str], out: TextIO = sys.stdout) -> int:
    """``desiderata policy diff OLD NEW``: every decision and profile the change alters.

    Exit code 0 when the bundles decide every question alike with the same profiles,
    1 when anything differs (as ``diff`` does), 2 on bad usage or an invalid bundle.

    Args:
        argv: arguments after ``policy diff``.
        out: where to print.
    """
    parser = argparse.ArgumentParser(prog="desiderata policy diff")
    parser.add_argument("old", type=Path, help="the bundle in force")
    parser.add_argument("new", type=Path, help="the candidate bundle")
    parser.add_argument("--card", type=Path, help="model card.yaml asked about (default: the built-in demo's)")
    parser.add_argument("--model-attr", action="append", default=[], help="override a model attribute, key=value")
    parser.add_argument(
        "--attr", action="append", default=[], help="principal attribute key=value (default: the model's domain)"
    )
    args = _parse(parser, argv)
    if args is None:
        return 2
    try:
        card = load_card(args.card or BUILTIN_DEMO / "credit" / "card.yaml")
        model_attrs = card.policy_attributes() | _pairs(args.model_attr, "--model-attr")
        attrs = {k: str(v) for k, v in _pairs(args.attr, "--attr").items()} or {"domain": str(model_attrs["domain"])}
        old, new = parse_bundle(args.old), parse_bundle(args.new)
    except (ValueError, BundleError) as exc:
        print(f"error: {exc}", file=out)
        return 2
    changes, asked = decision_changes(old, new, card.name, model_attrs, attrs)
    profiles = profile_changes(old, new)
    shown = ", ".join(f"{k}={v}" for k, v in sorted(model_attrs.items()))
    print(f"policy {old.version} -> {new.version}; model {card.name} ({shown}); principals {attrs}", file=out)
    print(f"decisions: {len(changes)} of {asked} change", file=out)
    for c in changes:
        why = ", ".join(c.new.reasons or c.old.reasons) or "default deny"
        print(f"  {c.question.describe()}  {c.old.describe()} -> {c.new.describe()}  ({why})", file=out)
    print(f"profiles: {len(profiles)} field(s) change", file=out)
    for p in profiles:
        print(f"  {p.tier}  {p.field}: {p.old!r} -> {p.new!r}", file=out)
    return 1 if changes or profiles else 0


def run_audit_verify(argv: list[str], out: TextIO = sys.stdout) -> int:
    """``desiderata audit verify``: walk the hash chain of an audit log.

    Args:
        argv: arguments after ``audit verify``.
        out: where to print.
    """
    parser = argparse.ArgumentParser(prog="desiderata audit verify")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--sqlite", type=Path)
    source.add_argument("--postgres", metavar="DSN")
    parser.add_argument("--anchor", default="", help="SEQ:HASH of a head published earlier")
    args = _parse(parser, argv)
    if args is None:
        return 2
    anchor = None
    if args.anchor:
        seq, _, digest = args.anchor.partition(":")
        if not seq.isdigit() or len(digest) != 64:
            print("error: --anchor must be SEQ:HASH (64 hex digits)", file=out)
            return 2
        anchor = (int(seq), digest)
    log: AuditLog
    if args.sqlite is not None:
        if not args.sqlite.is_file():
            print(f"error: no such file {args.sqlite}", file=out)
            return 2
        from desiderata.policy.audit_sqlite import SqliteAuditLog

        log = SqliteAuditLog(args.sqlite)
    else:
        from desiderata.policy.audit_postgres import PostgresAuditLog

        log = PostgresAuditLog(args.postgres)
    try:
        result = log.verify(anchor)
    finally:
        log.close()
    if result.ok:
        print(f"ok: {result.records} records, head {result.records}:{result.head_hash}", file=out)
        return 0
    print(f"TAMPERED at record {result.first_bad_seq}: {result.problem}", file=out)
    return 1
