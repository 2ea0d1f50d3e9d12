"""The policy owners' and auditors' CLI functions: output and exit codes."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

from desiderata.policy.audit import AuditRecord, utc_now
from desiderata.policy.audit_sqlite import SqliteAuditLog
from desiderata.policy.cli import run_audit_verify, run_explain, run_test, run_validate
from desiderata.policy.store import default_bundle_dir


def _run(fn: object, argv: list[str]) -> tuple[int, str]:
    buf = io.StringIO()
    assert callable(fn)
    code = fn(argv, buf)
    return code, buf.getvalue()


def test_validate_and_test_pass_on_the_shipped_bundle() -> None:
    code, out = _run(run_validate, [str(default_bundle_dir())])
    assert code == 0 and out.startswith("ok: 11 policies")
    code, out = _run(run_test, [str(default_bundle_dir())])
    assert code == 0 and "38 passed, 0 failed" in out
    assert "PASS stakeholders_test.yaml" in out


def test_validate_reports_file_line_and_reason(bundle_dir: Path) -> None:
    (bundle_dir / "guards.cedar").write_text('@id("x")\nforbid (principal, action, resource) when { nope };\n')
    code, out = _run(run_validate, [str(bundle_dir)])
    assert code == 1 and "error: guards.cedar:1:" in out and "would be refused" in out


def test_test_reports_failures(bundle_dir: Path) -> None:
    path = bundle_dir / "stakeholders_test.yaml"
    path.write_text(path.read_text().replace("tier: robustness/full", "tier: robustness/none"))
    code, out = _run(run_test, [str(bundle_dir)])
    assert code == 1 and "FAIL stakeholders_test.yaml" in out and "37 passed, 1 failed" in out


def test_explain_shows_reasons_with_their_source() -> None:
    argv = [str(default_bundle_dir()), "--role", "end_user", "--model", "credit"]
    argv += ["--model-attr", "domain=credit", "--model-attr", "dp_trained=false"]
    argv += ["--kind", "feature_attribution", "--purpose", "transparency"]
    code, out = _run(run_explain, argv)
    assert code == 0 and out.startswith("DENY -")
    assert "because end_user.no_submitted_instances: forbid at guards.cedar:" in out
    code, out = _run(run_explain, [*argv, "--own-decision", "--decision-only"])
    assert out.startswith("ALLOW feature_attribution/narrative") and '"top_k": 3' in out
    code, out = _run(run_explain, [*argv[:-1], "curiosity"])
    assert code == 1 and "INVALID_ARGUMENT" in out
    assert _run(run_explain, ["--role"])[0] == 2


def test_explain_decides_reads_of_the_store_wide_records() -> None:
    store = [str(default_bundle_dir()), "--model", "", "--action", "audit/read", "--purpose", "audit"]
    code, out = _run(run_explain, [*store, "--role", "regulator"])
    assert code == 0 and out.startswith("ALLOW audit/read") and "because regulator.audit: permit at" in out
    code, out = _run(run_explain, [*store, "--role", "executive"])
    assert code == 0 and out.startswith("DENY -") and "policy.default_deny" in out
    summary = [str(default_bundle_dir()), "--model", "", "--action", "global/summary", "--purpose", "audit"]
    code, out = _run(run_explain, [*summary, "--role", "regulator"])
    assert code == 1 and out.startswith("refused (INVALID_ARGUMENT)") and "model" in out


def test_audit_verify(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    log = SqliteAuditLog(db)
    for i in range(3):
        log.append(AuditRecord(f"dec_{i}", utc_now(), "p", "regulator", "audit", "static", "credit", "1",
                               "sha256:x", "audit/read", True, "audit/read"))  # fmt: skip
    head = log.verify().head_hash
    log.close()
    code, out = _run(run_audit_verify, ["--sqlite", str(db), "--anchor", f"3:{head}"])
    assert code == 0 and out.startswith("ok: 3 records")
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER audit_log_no_update")
    conn.execute("UPDATE audit_log SET principal = 'someone-else' WHERE seq = 2")
    conn.commit()
    conn.close()
    code, out = _run(run_audit_verify, ["--sqlite", str(db)])
    assert code == 1 and "TAMPERED at record 2" in out
    assert _run(run_audit_verify, ["--sqlite", str(tmp_path / "missing.db")])[0] == 2
    assert _run(run_audit_verify, ["--sqlite", str(db), "--anchor", "x"])[0] == 2
