"""Every bad-input case of the foundation: the right status, the right details,
and the server keeps serving afterwards."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import grpc
import pytest

from desiderata.client import AsyncClient, DesiderataRpcError
from tests.integration.conftest import Running
from tests.support.tiny_model import INSTANCE


@pytest.fixture
async def eng(tiny_server: Running) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(tiny_server.address, api_key="k-eng") as client:
        yield client
        # After every bad input, the server still answers a good one.
        ok = await client.explain("tiny", INSTANCE, purpose="debugging")
        assert ok.feature_attribution.attributions


async def _error(coro: object) -> DesiderataRpcError:
    with pytest.raises(DesiderataRpcError) as info:
        await coro  # type: ignore[misc]
    return info.value


async def test_unknown_model_is_not_found(eng: AsyncClient) -> None:
    err = await _error(eng.explain("nope", INSTANCE, purpose="debugging"))
    assert err.code == grpc.StatusCode.NOT_FOUND and err.details.reason == "MODEL_NOT_FOUND"
    assert err.request_id


@pytest.mark.parametrize(
    ("features", "expected"),
    [
        ({k: v for k, v in INSTANCE.items() if k != "x1"}, {"instance.features[x1]": "missing"}),
        ({**INSTANCE, "zzz": 1.0}, {"instance.features[zzz]": "unknown feature"}),
        ({**INSTANCE, "x2": "forty"}, {"instance.features[x2]": "expected a integer"}),
        ({**INSTANCE, "color": "purple"}, {"instance.features[color]": "unknown category"}),
        ({**INSTANCE, "flag": 1}, {"instance.features[flag]": "expected a boolean"}),
        ({**INSTANCE, "x1": math.nan}, {"instance.features[x1]": "NaN"}),
        ({**INSTANCE, "x1": math.inf}, {"instance.features[x1]": "infinite"}),
        ({**INSTANCE, "x1": 11.0}, {"instance.features[x1]": "above the declared maximum"}),
        ({**INSTANCE, "x2": -1}, {"instance.features[x2]": "below the declared minimum"}),
        (
            {"x2": 1.5, "color": 3, "flag": True, "extra": "e"},
            {
                "instance.features[x1]": "missing",
                "instance.features[x2]": "expected an integer",
                "instance.features[color]": "expected a category",
                "instance.features[extra]": "unknown feature",
            },
        ),
    ],
)
async def test_bad_features_are_invalid_argument_with_one_violation_each(
    eng: AsyncClient, features: dict[str, object], expected: dict[str, str]
) -> None:
    err = await _error(eng.explain("tiny", features, purpose="debugging"))  # type: ignore[arg-type]
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    got = dict(err.details.field_violations)
    assert set(got) == set(expected), got
    for field, fragment in expected.items():
        assert fragment in got[field]


async def test_bad_features_in_predict_too(eng: AsyncClient) -> None:
    err = await _error(eng.predict("tiny", {**INSTANCE, "x1": math.inf}, subject_id="s"))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in err.details.field_violations] == ["instance.features[x1]"]


async def test_missing_purpose_and_unknown_purpose(eng: AsyncClient) -> None:
    err = await _error(eng.explain("tiny", INSTANCE, purpose=""))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and dict(err.details.field_violations).get("purpose")
    err = await _error(eng.explain("tiny", INSTANCE, purpose="curiosity"))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.details.reason == "UNKNOWN_PURPOSE"


async def test_unknown_method_and_bad_steps(eng: AsyncClient) -> None:
    err = await _error(eng.explain("tiny", INSTANCE, purpose="debugging", method="magic"))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "params.feature_attribution.method" in dict(err.details.field_violations)
    from desiderata.client import Requests

    params = Requests.attribution_params(steps=100_000)
    err = await _error(eng.explain("tiny", INSTANCE, purpose="debugging", params=params))
    assert dict(err.details.field_violations) == {"params.attribution.steps": "at most 4096"}


@pytest.mark.parametrize("locale", ["x" * 5000, "../../etc/passwd", "en US", "\u00e9\u00e9"])
async def test_a_locale_that_is_not_a_language_tag(eng: AsyncClient, locale: str) -> None:
    err = await _error(eng.explain("tiny", INSTANCE, purpose="debugging", locale=locale))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(err.details.field_violations) == {"locale": "not a language tag such as en or de-DE"}


async def test_an_audit_query_with_an_impossible_timestamp(tiny_server: Running, eng: AsyncClient) -> None:
    from desiderata.v1 import audit_service_pb2 as aus
    from desiderata.v1 import audit_service_pb2_grpc as aus_grpc

    request = aus.QueryAuditRequest(model="tiny", purpose="audit")
    request.since.seconds = 2**40  # past 9999-12-31
    async with grpc.aio.insecure_channel(tiny_server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await aus_grpc.AuditServiceStub(channel).QueryAudit(request, metadata=(("x-api-key", "k-eng"),))
    err = DesiderataRpcError.from_rpc_error(info.value)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in err.details.field_violations] == ["since"]


async def test_malformed_message_is_invalid_argument(tiny_server: Running, eng: AsyncClient) -> None:
    async with grpc.aio.insecure_channel(tiny_server.address) as channel:
        raw = channel.unary_unary("/desiderata.v1.ExplanationService/Explain")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw(b"\xff\xff\xff\xff not a protobuf", metadata=(("authorization", "Bearer k-eng"),))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_oversized_message_is_resource_exhausted(eng: AsyncClient) -> None:
    big = {**INSTANCE, **{f"pad{i}": "x" * 1000 for i in range(100)}}  # > 64 KiB limit of the test server
    err = await _error(eng.explain("tiny", big, purpose="debugging"))
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("key", [None, "wrong-key"])
async def test_missing_or_unknown_credential_is_unauthenticated(
    tiny_server: Running, eng: AsyncClient, key: str | None
) -> None:
    async with AsyncClient(tiny_server.address, api_key=key) as anon:
        err = await _error(anon.explain("tiny", INSTANCE, purpose="debugging"))
        assert err.code == grpc.StatusCode.UNAUTHENTICATED
        err = await _error(anon.list_models())
        assert err.code == grpc.StatusCode.UNAUTHENTICATED


async def test_malformed_authorization_header(tiny_server: Running, eng: AsyncClient) -> None:
    async with grpc.aio.insecure_channel(tiny_server.address) as channel:
        from desiderata.v1 import model_service_pb2 as ms
        from desiderata.v1 import model_service_pb2_grpc as ms_grpc

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await ms_grpc.ModelServiceStub(channel).ListModels(
                ms.ListModelsRequest(), metadata=(("authorization", "Basic abc"),)
            )
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_unknown_decision_is_not_found(eng: AsyncClient) -> None:
    err = await _error(eng.explain_decision("rec_doesnotexist", purpose="debugging"))
    assert err.code == grpc.StatusCode.NOT_FOUND and err.details.reason == "DECISION_NOT_FOUND"


async def test_other_subjects_decision_is_permission_denied(tiny_server: Running, eng: AsyncClient) -> None:
    rec = await eng.predict("tiny", INSTANCE, subject_id="alice")
    async with AsyncClient(tiny_server.address, api_key="k-bob") as bob:
        err = await _error(bob.explain_decision(rec.decision_id, purpose="recourse"))
    assert err.code == grpc.StatusCode.PERMISSION_DENIED


async def test_policy_denial_carries_decision_id_and_reasons(tiny_server: Running, eng: AsyncClient) -> None:
    # The shipped bundle gives loan officers nothing for debugging (nor outside their domain).
    async with AsyncClient(tiny_server.address, api_key="k-officer") as officer:
        err = await _error(officer.explain("tiny", INSTANCE, purpose="debugging"))
        caps = await officer.capabilities("tiny", purpose="debugging")
    assert err.code == grpc.StatusCode.PERMISSION_DENIED
    assert err.details.metadata["decision_id"].startswith("dec_")
    assert err.details.metadata["reasons"] == "policy.default_deny"
    assert list(caps.capabilities) == []


async def test_end_user_may_not_predict(tiny_server: Running, eng: AsyncClient) -> None:
    async with AsyncClient(tiny_server.address, api_key="k-alice") as alice:
        err = await _error(alice.predict("tiny", INSTANCE, subject_id="alice"))
    assert err.code == grpc.StatusCode.PERMISSION_DENIED


async def test_server_honours_a_short_deadline(eng: AsyncClient) -> None:
    from desiderata.client import Requests

    params = Requests.attribution_params(steps=4096)
    err = await _error(eng.explain("tiny", INSTANCE, purpose="debugging", params=params, timeout_s=0.001))
    assert err.code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_params_of_the_wrong_kind(eng: AsyncClient) -> None:
    from desiderata.v1 import types_pb2 as pb

    params = pb.ExplanationParams(robustness=pb.RobustnessParams(norm="l2"))
    err = await _error(eng.explain("tiny", INSTANCE, purpose="debugging", params=params))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "params.robustness" in dict(err.details.field_violations)
