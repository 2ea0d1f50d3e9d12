"""TLS and mTLS when certificate paths are configured (certificates made with
openssl in the test: a CA, a server certificate for 127.0.0.1 and a client one)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest

from desiderata.client import AsyncClient, Credentials, DesiderataRpcError
from desiderata.server.grpc.app import build_server
from tests.integration.conftest import settings_for


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        cwd=d,
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
            cwd=d,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            cwd=d,
        )
    return d


@pytest.mark.parametrize("mutual", [False, True])
async def test_tls_and_mtls(pki: Path, tiny_repo: Path, tmp_path: Path, mutual: bool) -> None:
    tls: dict[str, str] = {"cert_file": str(pki / "server.pem"), "key_file": str(pki / "server.key")}
    if mutual:
        tls["client_ca_file"] = str(pki / "ca.pem")
    settings = settings_for(tiny_repo, tmp_path, server={"port": 0, "tls": tls})
    app = build_server(settings)
    await app.start()
    ca = (pki / "ca.pem").read_bytes()
    client_pair = {
        "client_certificate": (pki / "client.pem").read_bytes(),
        "client_key": (pki / "client.key").read_bytes(),
    }
    try:
        creds = Credentials(api_key="k-eng", tls=True, root_certificates=ca, **(client_pair if mutual else {}))
        async with AsyncClient(app.address, credentials=creds, timeout_s=10) as client:
            assert [m.name for m in (await client.list_models()).models] == ["tiny"]
        async with AsyncClient(app.address, api_key="k-eng", timeout_s=5) as plaintext:
            with pytest.raises(DesiderataRpcError) as err:
                await plaintext.list_models()
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        if mutual:  # TLS without a client certificate is refused
            no_cert = Credentials(api_key="k-eng", tls=True, root_certificates=ca)
            async with AsyncClient(app.address, credentials=no_cert, timeout_s=5) as anonymous:
                with pytest.raises(DesiderataRpcError) as err:
                    await anonymous.list_models()
            assert err.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        await app.stop(0.5)
