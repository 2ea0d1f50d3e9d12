#!/usr/bin/env bash
# Installs what the SDKs need and runs each SDK's own test suite (unit tests of
# the helpers + a smoke test against the real server on the demo), then checks
# the API with buf and that the committed generated code is fresh.
#
#   scripts/sdk_tests.sh [go|typescript|java|buf]...   (default: all)
#
# The smoke tests start $DESIDERATA_SERVE_CMD; the default here is the project
# venv's `desiderata serve --port 0`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$root/scripts/tools.sh"
cd "$root"
if [ -z "${DESIDERATA_SERVE_CMD:-}" ]; then
  venv="$(bash scripts/bootstrap.sh)"
  export DESIDERATA_SERVE_CMD="$venv/bin/desiderata serve --port 0"
fi

fresh() { # fails when regenerating changed the committed files under $1
  if [ -n "$(git status --porcelain -- "$1")" ]; then
    git status --short -- "$1" >&2
    echo "generated code under $1 is stale: run scripts/gen_sdks.sh and commit" >&2
    exit 1
  fi
}

run_go() {
  buf generate && fresh clients/go
  (cd clients/go && go vet ./... && go test -count=1 ./...)
}

run_typescript() {
  (cd clients/typescript && npm ci --no-audit --no-fund --loglevel=error && buf generate)
  fresh clients/typescript/src/gen
  (cd clients/typescript && npm test && npm run build --silent)
}

run_java() {
  (cd clients/java && mvn -q -B test)
}

run_buf() {
  bash scripts/buf.sh check
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(buf go typescript java)
for t in "${targets[@]}"; do
  echo "== sdk: $t" >&2
  "run_$t"
done
echo "sdk tests passed: ${targets[*]}"
