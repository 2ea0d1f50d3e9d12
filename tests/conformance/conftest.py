"""The conformance suites run every backend of a seam; the real servers they
need (PostgreSQL, Redis) are session fixtures in tests/support, registered in
the root conftest."""
