"""The gRPC edge: build_server(), servicers, converters, interceptors, status mapping."""
