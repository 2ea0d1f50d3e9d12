"""Explain a credit decision of the built-in demo, then let the applicant see theirs.

Usage: python examples/explain.py [ADDRESS]   (default 127.0.0.1:50051; start the server with `make demo`)
"""

from __future__ import annotations

import sys

from desiderata.client import Client, DesiderataRpcError

APPLICANT = {
    "seniority": 2, "home": "rent", "time": 60, "age": 30, "marital": "single", "records": True,
    "job": "partime", "expenses": 60.0, "income": 80.0, "assets": 0.0, "debt": 0.0, "amount": 1500.0,
    "price": 1600.0,
}


def main(address: str) -> int:
    with Client(address, api_key="demo-ml_engineer-key") as engineer:
        ex = engineer.explain("credit", APPLICANT, purpose="debugging")
        print(f"predicted {ex.prediction.label}; {ex.method}, tier {ex.disclosure.tier}")
        for a in ex.feature_attribution.attributions:
            print(f"  {a.display_name:<24} {a.value:+.4f} ({a.share:+.0%})")
        print(f"  relative completeness gap {ex.quality.relative_completeness_gap:.1e}")
        decision = engineer.predict("credit", APPLICANT, subject_id="applicant-0001")
        try:
            engineer.explain("credit", {**APPLICANT, "income": "lots"}, purpose="debugging")
        except DesiderataRpcError as err:
            print("bad input is refused:", err.code.name, err.details.field_violations)
    with Client(address, api_key="demo-end_user-key") as applicant:
        mine = applicant.explain_decision(decision.decision_id, purpose="transparency")
        print("what the applicant sees:", " ".join(mine.narrative))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"))
