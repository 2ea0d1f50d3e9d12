"""The hashed form of an audit record is frozen: logs written by earlier versions must still
verify, so any change to `AuditRecord.canonical` or `record_hash` that alters a byte fails here.
The expected values were produced by the first implementation (``dataclasses.asdict``)."""

from __future__ import annotations

from desiderata.policy.audit import GENESIS_HASH, AuditRecord, record_hash

RECORD = AuditRecord(
    decision_id="dec_1",
    time="2026-11-23T00:00:00.000000Z",
    principal="eng",
    role="ml_engineer",
    purpose="debugging",
    consumption="static",
    model="credit",
    model_version="3",
    policy_version="sha256:abc",
    action="feature_attribution",
    allowed=True,
    tier="feature_attribution/full",
    privacy_charge=0.25,
    reasons=("engineer.full_fidelity", "x.y"),
    request_id="req-1",
)


def test_canonical_form_is_unchanged() -> None:
    assert RECORD.canonical() == (
        '{"action":"feature_attribution","allowed":true,"consumption":"static","decision_id":"dec_1",'
        '"model":"credit","model_version":"3","policy_version":"sha256:abc","principal":"eng",'
        '"privacy_charge":0.25,"purpose":"debugging","reasons":["engineer.full_fidelity","x.y"],'
        '"request_id":"req-1","role":"ml_engineer","tier":"feature_attribution/full",'
        '"time":"2026-11-23T00:00:00.000000Z"}'
    )


def test_chain_hash_is_unchanged() -> None:
    assert record_hash(1, RECORD, GENESIS_HASH) == "08a1a278e98036e843cea8da7da285b8ae8b8ea3b54d41884c16ea667bd5ac29"
