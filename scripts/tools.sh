#!/usr/bin/env bash
# Installs the pinned code-generation tools of the SDKs (buf, protoc-gen-go,
# protoc-gen-go-grpc) from the Go module proxy into a cache directory outside
# the clone, keyed by version, so a fresh clone reuses them when nothing changed.
# Source it (`. scripts/tools.sh`) to get $DESIDERATA_TOOLS_BIN on PATH; or run
# it to install and print the directory.
set -euo pipefail
BUF_VERSION=v1.75.0
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.1

DESIDERATA_TOOLS_BIN="${DESIDERATA_TOOLS:-$HOME/.cache/desiderata/tools}/bin"
mkdir -p "$DESIDERATA_TOOLS_BIN"

_install_go_tool() { # name module version
  local stamp="$DESIDERATA_TOOLS_BIN/.$1@$3"
  if [ ! -x "$DESIDERATA_TOOLS_BIN/$1" ] || [ ! -f "$stamp" ]; then
    echo "tools: go install $2@$3" >&2
    GOBIN="$DESIDERATA_TOOLS_BIN" GOFLAGS=-mod=mod go install "$2@$3" >&2
    rm -f "$DESIDERATA_TOOLS_BIN/.$1@"*
    touch "$stamp"
  fi
}

_install_go_tool buf github.com/bufbuild/buf/cmd/buf "$BUF_VERSION"
_install_go_tool protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go "$PROTOC_GEN_GO_VERSION"
_install_go_tool protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc "$PROTOC_GEN_GO_GRPC_VERSION"

export PATH="$DESIDERATA_TOOLS_BIN:$PATH"
if [ "${BASH_SOURCE[0]}" = "$0" ]; then echo "$DESIDERATA_TOOLS_BIN"; fi
