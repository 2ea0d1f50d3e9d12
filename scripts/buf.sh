#!/usr/bin/env bash
# API hygiene of protos/ with buf (installed pinned from the Go module proxy by
# scripts/tools.sh).
#
#   scripts/buf.sh lint        buf lint, STANDARD rules (buf.yaml)
#   scripts/buf.sh breaking    buf breaking (FILE rules) against the released API,
#                              protos/baseline.binpb, and, on a branch other
#                              than main, against main's protos too
#   scripts/buf.sh baseline    rebuild protos/baseline.binpb: only when
#                              releasing a new API version (say so in CHANGELOG.md)
#   scripts/buf.sh check       lint + breaking (what CI runs)
#
# Why a committed baseline: CI runs on a clone of main itself, where comparing
# against main compares the API with itself and can never fail. The baseline is
# the last released v1 API; any change to the protos is checked against it.
# DESIDERATA_API_ROOT points at another workspace (a folder with buf.yaml and
# protos/), which the tests use to prove that a removed field fails.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$root/scripts/tools.sh"
api="${DESIDERATA_API_ROOT:-$root}"
cd "$api"
baseline=protos/baseline.binpb

lint() { buf lint; echo "buf lint: clean"; }

breaking() {
  [ -f "$baseline" ] || { echo "buf breaking: $baseline missing (scripts/buf.sh baseline)" >&2; exit 1; }
  buf breaking --against "$baseline"
  echo "buf breaking: no breaking change against $baseline"
  # On a feature branch, also compare with main (catches a change that main
  # already released but the baseline has not caught up with).
  if [ -z "${DESIDERATA_API_ROOT:-}" ] && git rev-parse -q --verify main >/dev/null \
      && [ "$(git rev-parse HEAD)" != "$(git rev-parse main)" ]; then
    local tmp
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' RETURN
    git archive main protos | tar -x -C "$tmp"
    buf breaking --against "$tmp/protos"
    echo "buf breaking: no breaking change against main"
  fi
}

case "${1:-check}" in
  lint) lint ;;
  breaking) breaking ;;
  baseline) buf build -o "$baseline" && echo "wrote $baseline" ;;
  check) lint; breaking ;;
  *) echo "usage: $0 [lint|breaking|baseline|check]" >&2; exit 2 ;;
esac
