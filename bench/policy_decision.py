"""Benchmark: latency of one policy decision at ~100 rules.

Why: the decision sits on every request's path; the issue's budget is
<= 0.2 ms p50 at 100 rules. This copies the shipped bundle, adds generated
rules until the bundle holds `--rules` policies (per-domain permits and
forbids that are evaluated but do not match the demo model, as a large
organisation's bundle would), and times `CedarPDP.decide` for each
stakeholder. Run on demand: ``python bench/policy_decision.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from desiderata.explainers.base import Kind
from desiderata.policy.cedar_pdp import CedarPDP
from desiderata.policy.decision import PolicyInput
from desiderata.policy.model import Consumption, Principal
from desiderata.policy.store import default_bundle_dir, load_bundle

ROLES = ("ml_engineer", "domain_expert", "end_user", "regulator", "executive")


def generate_rules(n: int) -> str:
    """`n` policies over other business domains.

    Args:
        n: number of policies.
    """
    out = []
    for i in range(n):
        effect = "forbid" if i % 5 == 4 else "permit"
        role = ROLES[i % len(ROLES)]
        out.append(
            f'@id("generated.{i}")\n{effect} (principal in Role::"{role}", action, resource)\n'
            f'when {{ resource.domain == "domain_{i}" && context.purpose == "transparency" }};\n'
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints p50 / p99 per stakeholder.

    Args:
        argv: command-line arguments.
    """
    parser = argparse.ArgumentParser()
    parser.add_argument("--rules", type=int, default=100)
    parser.add_argument("--iterations", type=int, default=3000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "bundle"
        shutil.copytree(default_bundle_dir(), d)
        shipped = len(load_bundle(d).sources)
        (d / "generated.cedar").write_text(generate_rules(max(0, args.rules - shipped)))
        bundle = load_bundle(d)
        pdps = {"uncached": CedarPDP(bundle, cache_size=0), "cached": CedarPDP(bundle)}
        attrs: dict[str, str | bool | int | float] = {"domain": "credit", "dp_trained": False}
        fa, cf, st = Kind.FEATURE_ATTRIBUTION, Kind.COUNTERFACTUAL, Consumption.STATIC
        officer = Principal("l", "domain_expert", attributes={"domain": "credit"})
        cases = {
            "ml_engineer": PolicyInput(Principal("e", "ml_engineer"), "credit", attrs, fa, "debugging", st),
            "end_user": PolicyInput(
                Principal("u", "end_user", "s"), "credit", attrs, fa, "transparency", st, True, False
            ),
            "domain_expert": PolicyInput(officer, "credit", attrs, cf, "recourse", st),
        }
        print(f"policies in bundle: {len(bundle.sources)}")
        for mode, pdp in pdps.items():
            for name, q in cases.items():
                for i in range(200):  # warm-up; callers of one role differ by id (irrelevant to this bundle)
                    pdp.decide(dataclasses.replace(q, principal=dataclasses.replace(q.principal, id=f"w{i}")))
                samples = []
                for i in range(args.iterations):
                    q_i = dataclasses.replace(q, principal=dataclasses.replace(q.principal, id=f"p{i}"))
                    t = time.perf_counter_ns()
                    pdp.decide(q_i)
                    samples.append((time.perf_counter_ns() - t) / 1e6)
                samples.sort()
                p50 = statistics.median(samples)
                p99 = samples[int(0.99 * len(samples)) - 1]
                print(f"{mode:9s} {name:14s} p50 {p50:.3f} ms  p99 {p99:.3f} ms  ({args.iterations} decisions)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
