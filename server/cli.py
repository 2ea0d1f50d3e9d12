"""The `desiderata` command: serve, explain (through the Python client), train.

    desiderata serve [--port N] [--host H] [--models DIR] [--config FILE]
    desiderata explain --model credit --feature income=2500 ... [--address A] [--key K]
    desiderata train --out DIR [--seed S] [--dp --epsilon E --delta D]
    desiderata policy validate|test|explain DIR ... | diff OLD NEW
    desiderata audit verify --sqlite FILE | --postgres DSN
    desiderata feedback export OUT [--format jsonl|csv] | erase --subject ID | expire --days N
    desiderata model check DIR
    desiderata decisions erase --subject ID | expire --days N
    desiderata erase --subject ID [--request REF] [--by NAME]
        (the subject's decisions and the feedback given for them; the erasure is audited)

`serve` with no arguments serves the built-in demo and prints where it listens
and one demo key per stakeholder role.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from desiderata.server.config import Settings

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    from desiderata.server.config import DEMO_KEYS, Settings
    from desiderata.server.grpc.app import build_server
    from desiderata.server.logging import configure_logging

    overrides: dict[str, dict[str, object]] = {}
    if args.port is not None or args.host is not None:
        overrides["server"] = {k: v for k, v in (("port", args.port), ("host", args.host)) if v is not None}
    if args.models is not None:
        overrides["models"] = {"path": args.models}
    try:
        settings = Settings.load(args.config, **overrides)
    except Exception as exc:
        print(f"desiderata: invalid configuration: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.logging)
    log = structlog.get_logger("desiderata")

    async def run() -> int:
        try:
            app = build_server(settings)
        except ValueError as exc:
            log.error("boot_failed", error=str(exc))
            print(f"desiderata: cannot start: {exc}", file=sys.stderr)
            return 1
        await app.start()
        log.info("listening", address=app.address, models=[m.name for m in app.pipeline.models.served()])
        print(f"desiderata listening on {app.address}", flush=True)
        if app.metrics_endpoint is not None:
            where = f"{app.metrics_address[0]}:{app.metrics_endpoint.port}"
            log.info("metrics", address=where)
            print(f"metrics (Prometheus) on http://{where}/metrics", flush=True)
        if app.demo:
            print("demo keys (public, for the built-in demo only; send as 'authorization: Bearer <key>'):")
            for key in DEMO_KEYS:
                suffix = f" (subject {key.subject_id})" if key.subject_id else ""
                print(f"  {key.role:<14} {key.key}{suffix}")
            sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting_down", grace_s=settings.server.grace_period_s)
        await app.stop(settings.server.grace_period_s)
        log.info("stopped")
        return 0

    return asyncio.run(run())


def _explain(args: argparse.Namespace) -> int:
    from desiderata.client import Client, DesiderataRpcError, parse_feature
    from desiderata.client._requests import Requests

    features = dict(parse_feature(f) for f in args.feature)
    params = Requests.attribution_params(method=args.method, reference_class=args.reference_class)
    with Client(args.address, api_key=args.key, timeout_s=args.timeout) as client:
        try:
            ex = client.explain(model=args.model, features=features, purpose=args.purpose, params=params)
        except DesiderataRpcError as exc:
            print(exc.describe(), file=sys.stderr)
            return 1
    print(
        f"{ex.model} v{ex.model_version}: predicted {ex.prediction.label} "
        f"({max(p.probability for p in ex.prediction.probabilities):.3f}) by {ex.method}"
    )
    if args.reference_class:
        print(
            f"  compared with the training rows predicted {args.reference_class} "
            f"(their mean score {ex.feature_attribution.baseline_output:.3f})"
        )
    for a in ex.feature_attribution.attributions:
        print(f"  {a.display_name:<28} {a.value:+.4f}  ({a.share:+.1%})")
    q = ex.quality
    print(
        f"  completeness gap {q.relative_completeness_gap:.2e} (relative), {q.compute_ms:.1f} ms; "
        f"tier {ex.disclosure.tier}, decision {ex.disclosure.decision_id}"
    )
    return 0


def _train(args: argparse.Namespace) -> int:
    from desiderata.server.training import main as train_main

    argv = ["--out", str(args.out), "--seed", str(args.seed)]
    if args.dp:
        argv += ["--dp"]
        if args.epsilon is not None:
            argv += ["--epsilon", str(args.epsilon)]
        if args.delta is not None:
            argv += ["--delta", str(args.delta)]
    return int(train_main(argv) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="desiderata", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server (the built-in demo without --models)")
    serve.add_argument("--port", type=int, help="port to bind; 0 picks a free one")
    serve.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--models", type=Path, help="model repository folder")
    serve.add_argument("--config", type=Path, help="YAML configuration file")
    serve.set_defaults(func=_serve)
    explain = sub.add_parser("explain", help="explain an instance through a running server")
    explain.add_argument("--address", default="127.0.0.1:50051")
    explain.add_argument("--key", default="demo-ml_engineer-key", help="API key (default: the demo engineer key)")
    explain.add_argument("--model", default="credit")
    explain.add_argument("--purpose", default="debugging")
    explain.add_argument("--method", default="")
    explain.add_argument(
        "--reference-class",
        default="",
        metavar="CLASS",
        help="compare with the training rows the model predicts as CLASS (methods with a background)",
    )
    explain.add_argument("--timeout", type=float, default=10.0)
    explain.add_argument(
        "--feature",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a feature value; repeat for every feature",
    )
    explain.set_defaults(func=_explain)
    train = sub.add_parser("train", help="train the demo credit model (deterministic)")
    train.add_argument("--out", type=Path, required=True)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--dp", action="store_true", help="train with DP-SGD (Opacus)")
    train.add_argument("--epsilon", type=float)
    train.add_argument("--delta", type=float)
    train.set_defaults(func=_train)
    erase = sub.add_parser("erase", help="delete every decision about one subject and the feedback given for them")
    erase.add_argument("--subject", required=True, help="the subject id (as recorded by Predict)")
    erase.add_argument("--config", type=Path, help="YAML configuration file (which stores)")
    _accountable(erase)
    erase.set_defaults(func=_erase)
    for name, help_text in (
        ("policy", "policy owners' tools: validate DIR | test DIR | explain DIR ... | diff OLD NEW"),
        ("audit", "audit log tools: verify --sqlite FILE | --postgres DSN"),
        ("feedback", "feedback tools: export OUT [--format jsonl|csv] | erase --subject ID | expire --days N"),
        ("model", "model folder tools: check DIR (a model folder or a repository of them)"),
        ("decisions", "recorded decisions: erase --subject ID | expire --days N"),
    ):
        tool = sub.add_parser(name, help=help_text, add_help=False)
        tool.add_argument("tool")
        tool.add_argument("rest", nargs=argparse.REMAINDER)
        tool.set_defaults(func=_tool)
    return parser


def _feedback_export(argv: list[str]) -> int:
    from desiderata.server.config import Settings
    from desiderata.server.stores import feedback_store

    parser = argparse.ArgumentParser(prog="desiderata feedback export")
    parser.add_argument("out", type=Path, help="output file")
    parser.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    parser.add_argument("--model", default="")
    parser.add_argument("--config", type=Path)
    args = parser.parse_args(argv)
    settings = Settings.load(args.config)
    store = feedback_store(settings)
    try:
        n = store.export(args.out, args.format, args.model)
    finally:
        store.close()
    print(f"exported {n} feedback record(s) to {args.out}")
    return 0


def _expire_or_erase(argv: list[str], what: str, action: str) -> int:
    """`decisions|feedback erase --subject ID` and `decisions|feedback expire --days N` on the
    configured store."""
    from desiderata.server.config import Settings
    from desiderata.server.retention import expire_decisions, expire_feedback
    from desiderata.server.stores import decision_store, feedback_store

    parser = argparse.ArgumentParser(prog=f"desiderata {what} {action}")
    if action == "erase":
        parser.add_argument("--subject", required=True, help=f"whose {what} to delete (their subject id)")
        _accountable(parser)
    else:
        parser.add_argument("--days", type=float, required=True, help=f"delete {what} older than this")
    parser.add_argument("--config", type=Path)
    args = parser.parse_args(argv)
    settings = Settings.load(args.config)
    store = decision_store(settings) if what == "decisions" else feedback_store(settings)
    noun = "decision(s)" if what == "decisions" else "feedback record(s)"
    try:
        if action == "erase":
            n = store.erase_subject(args.subject)
            erasure = _audit(settings, args, {what: n})
            print(f"erased {n} {noun} of subject {args.subject} (audit {erasure})")
        else:
            expire = expire_decisions if what == "decisions" else expire_feedback
            n = expire(store, args.days)  # type: ignore[arg-type]
            print(f"deleted {n} {noun} older than {args.days:g} days")
    finally:
        store.close()
    return 0


def _erase(args: argparse.Namespace) -> int:
    from desiderata.server.config import Settings
    from desiderata.server.retention import erase_subject
    from desiderata.server.stores import decision_store, feedback_store

    settings = Settings.load(args.config)
    decisions, feedback = decision_store(settings), feedback_store(settings)
    try:
        n_decisions, n_feedback = erase_subject(decisions, feedback, args.subject)
    finally:
        decisions.close()
        feedback.close()
    erasure = _audit(settings, args, {"decisions": n_decisions, "feedback": n_feedback})
    print(
        f"erased {n_decisions} decision(s) and {n_feedback} feedback record(s) of subject {args.subject} "
        f"(audit {erasure})"
    )
    return 0


def _accountable(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--request", default="", help="your reference of the erasure request (kept in the audit log)")
    parser.add_argument("--by", default="", help="who runs the erasure (default: the login name)")


def _audit(settings: Settings, args: argparse.Namespace, counts: dict[str, int]) -> str:
    """Records a finished erasure in the audit log (`retention.audit_erasure`); returns its id."""
    import getpass

    from desiderata.server.retention import audit_erasure
    from desiderata.server.stores import audit_log

    audit = audit_log(settings)
    try:
        return audit_erasure(audit, by=args.by or getpass.getuser(), request=args.request, counts=counts)
    finally:
        audit.close()


def _model_check(argv: list[str]) -> int:
    """Loads a model folder (or every folder of a repository) as the server would, and says
    what it found or why the server would refuse it."""
    from desiderata.server.model_folders import model_folders, version_key
    from desiderata.server.model_handle import load_model

    parser = argparse.ArgumentParser(prog="desiderata model check")
    parser.add_argument("dir", type=Path, help="a model folder (card.yaml) or a repository of them")
    args = parser.parse_args(argv)
    single = (args.dir / "card.yaml").is_file()
    folders = [args.dir] if single else model_folders(args.dir) if args.dir.is_dir() else []
    if not folders:
        print(f"desiderata model check: no card.yaml in {args.dir} or its sub-folders", file=sys.stderr)
        return 1
    failed = 0
    seen: dict[tuple[str, str], Path] = {}
    for folder in folders:
        try:
            handle = load_model(folder)
        except ValueError as exc:
            failed += 1
            print(f"FAIL {folder}: {exc}")
            continue
        if (handle.name, handle.version) in seen:
            failed += 1
            print(f"FAIL {folder}: {handle.name} {handle.version} is already in {seen[handle.name, handle.version]}")
            continue
        seen[handle.name, handle.version] = folder
        card, ref = handle.card, handle.reference()
        kind = "scikit-learn (skops)" if card.artifact.endswith(".skops") else "torch.export program"
        print(
            f"OK   {folder}: {card.name} {card.version}, {kind}, {len(card.features)} features "
            f"({handle.schema.n_columns} columns), classes {card.class_names}, "
            f"{'white' if card.differentiable else 'black'}-box, "
            f"reference {'none' if ref is None else f'{len(ref.x)} rows'}"
            + (f", trusted types {card.trusted_types}" if card.trusted_types else "")
        )
    if not single:
        for name in sorted({n for n, _ in seen}):
            versions = sorted((v for n, v in seen if n == name), key=version_key)
            print(f"serves {name} {versions[-1]}" + (f" (loaded: {', '.join(versions)})" if len(versions) > 1 else ""))
    return 1 if failed else 0


def _tool(args: argparse.Namespace) -> int:
    """`policy ...`, `audit verify ...`, `feedback export ...` and `model check ...`: argument
    parsing is theirs."""
    from desiderata.policy import cli as policy_cli

    table: dict[tuple[str, str], Callable[[list[str]], int]] = {
        ("policy", "validate"): policy_cli.run_validate,
        ("policy", "test"): policy_cli.run_test,
        ("policy", "explain"): policy_cli.run_explain,
        ("policy", "diff"): policy_cli.run_diff,
        ("audit", "verify"): policy_cli.run_audit_verify,
        ("feedback", "export"): _feedback_export,
        ("model", "check"): _model_check,
        ("feedback", "erase"): functools.partial(_expire_or_erase, what="feedback", action="erase"),
        ("feedback", "expire"): functools.partial(_expire_or_erase, what="feedback", action="expire"),
        ("decisions", "erase"): functools.partial(_expire_or_erase, what="decisions", action="erase"),
        ("decisions", "expire"): functools.partial(_expire_or_erase, what="decisions", action="expire"),
    }
    run = table.get((args.command, args.tool))
    if run is None:
        known = sorted(t for c, t in table if c == args.command)
        print(f"desiderata {args.command}: unknown subcommand {args.tool!r}; one of {known}", file=sys.stderr)
        return 2
    return int(run(list(args.rest)))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
