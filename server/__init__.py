"""The desiderata service: the transport-neutral pipeline (resolve → decide →
admit → explain → disclose → record), the model repository and decision store,
and, kept at the edge in `desiderata.server.grpc`, the gRPC application.

Deliberately imports nothing: every layer imports `desiderata.server.errors`
without pulling in the server.
"""
