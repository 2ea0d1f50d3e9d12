#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls `make test`, which calls this):
# generated code fresh, ruff, mypy --strict, then pytest — unit, conformance (real
# Redis and PostgreSQL), integration (real servers on port 0), privacy attacks,
# policy bundle tests and the Go/TypeScript/Java SDK smoke tests.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$(bash scripts/bootstrap.sh)"
export PATH="$venv/bin:$PATH"
echo "== generated code"
python scripts/gen_protos.py --check
echo "== ruff"
ruff check server policy explainers clients/python/src tests bench scripts
ruff format --check server policy explainers clients/python/src
echo "== mypy --strict"
PYTHON="$venv/bin/python" bash scripts/typecheck.sh
echo "== policy bundle"
desiderata policy test policy/bundle
echo "== pytest"
python -m pytest -p no:cacheprovider "$@"
