#!/usr/bin/env bash
# One command that regenerates every language's code from protos/:
#   Go          buf generate (buf.gen.yaml)            → clients/go/desiderata/v1 (committed)
#   TypeScript  buf generate (clients/typescript/...)  → clients/typescript/src/gen (committed)
#   Python      scripts/gen_protos.py                  → clients/python/src/desiderata/v1 (committed)
#   Java        mvn generate-sources                   → clients/java/target (build output, not committed)
# Plugins come from package registries: Go proxy (scripts/tools.sh), npm, Maven Central.
# PYTHON selects the interpreter for gen_protos.py (default: the project venv).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$root/scripts/tools.sh"
cd "$root"

rm -f clients/go/desiderata/v1/*.pb.go
buf generate
(cd clients/typescript && { [ -x node_modules/.bin/protoc-gen-ts_proto ] || npm ci --no-audit --no-fund; } && buf generate)
py="${PYTHON:-$(bash scripts/bootstrap.sh)/bin/python}"
"$py" scripts/gen_protos.py
(cd clients/java && mvn -q -B generate-sources)
echo "generated Go, TypeScript, Python and Java code from protos/"
