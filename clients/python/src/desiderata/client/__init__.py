"""A light Python client of the desiderata explanation server.

Depends on grpcio, grpcio-status and protobuf only (no torch)::

    from desiderata.client import Client

    with Client("127.0.0.1:50051", api_key="demo-ml_engineer-key") as client:
        ex = client.explain("credit", {"income": 2500.0, ...}, purpose="debugging")
        for a in ex.feature_attribution.attributions:
            print(a.display_name, a.value, a.share)

Failed calls raise `DesiderataRpcError` with the status code and decoded
rich details (field violations, quota failures, retry delay, request id).
"""

from desiderata.client._async import AsyncClient
from desiderata.client._errors import DesiderataRpcError, ErrorDetails, decode_details
from desiderata.client._requests import Credentials, Requests
from desiderata.client._sync import Client
from desiderata.client._values import instance, parse_feature, value

__all__ = [
    "AsyncClient",
    "Client",
    "Credentials",
    "DesiderataRpcError",
    "ErrorDetails",
    "Requests",
    "decode_details",
    "instance",
    "parse_feature",
    "value",
]
