#!/usr/bin/env bash
# Installs the pinned code-generation tools of the SDKs into a cache directory
# outside the clone, keyed by version, so a fresh clone reuses them when
# nothing changed:
#   buf                  the prebuilt binary from the npm registry package
#                        @bufbuild/buf-<os>-<arch> (seconds; `go install` of buf
#                        compiles ~10 minutes), falling back to `go install`
#                        when npm is missing or the platform has no package;
#   protoc-gen-go,
#   protoc-gen-go-grpc   from the Go module proxy (`go install`, small).
# Source it (`. scripts/tools.sh`) to get $DESIDERATA_TOOLS_BIN on PATH; or run
# it to install and print the directory.
set -euo pipefail
BUF_VERSION=v1.75.0
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.1

DESIDERATA_TOOLS_BIN="${DESIDERATA_TOOLS:-$HOME/.cache/desiderata/tools}/bin"
mkdir -p "$DESIDERATA_TOOLS_BIN"

_installed() { [ -x "$DESIDERATA_TOOLS_BIN/$1" ] && [ -f "$DESIDERATA_TOOLS_BIN/.$1@$2" ]; }

_stamp() { rm -f "$DESIDERATA_TOOLS_BIN/.$1@"*; touch "$DESIDERATA_TOOLS_BIN/.$1@$2"; }

_install_go_tool() { # name module version
  _installed "$1" "$3" && return 0
  echo "tools: go install $2@$3" >&2
  GOBIN="$DESIDERATA_TOOLS_BIN" GOFLAGS=-mod=mod go install "$2@$3" >&2
  _stamp "$1" "$3"
}

_buf_npm_platform() { # the suffix of @bufbuild/buf-<platform>, or nothing
  local os arch
  case "$(uname -s)" in Linux) os=linux ;; Darwin) os=darwin ;; *) return 0 ;; esac
  case "$(uname -m)" in
    x86_64 | amd64) arch=x64 ;;
    aarch64 | arm64) [ "$os" = darwin ] && arch=arm64 || arch=aarch64 ;;
    armv7l) arch=armv7 ;;
    *) return 0 ;;
  esac
  echo "$os-$arch"
}

_install_buf() {
  _installed buf "$BUF_VERSION" && return 0
  local platform tmp
  platform="$(_buf_npm_platform)"
  if [ -n "$platform" ] && command -v npm >/dev/null; then
    local pkg="@bufbuild/buf-$platform@${BUF_VERSION#v}"
    echo "tools: npm pack $pkg" >&2
    tmp="$(mktemp -d)"
    # npm pack fetches the tarball from the registry and checks its integrity
    # against the registry's sha512; nothing is installed or run.
    if (cd "$tmp" && npm pack --silent "$pkg" >/dev/null 2>"$tmp/npm.log") \
        && tar -xzf "$tmp"/*.tgz -C "$tmp" package/bin/buf \
        && [ "$("$tmp/package/bin/buf" --version)" = "${BUF_VERSION#v}" ]; then
      install -m 0755 "$tmp/package/bin/buf" "$DESIDERATA_TOOLS_BIN/buf"
      rm -rf "$tmp"
      _stamp buf "$BUF_VERSION"
      return 0
    fi
    echo "tools: npm pack $pkg failed ($(tail -n 3 "$tmp/npm.log" 2>/dev/null)); falling back to go install" >&2
    rm -rf "$tmp"
  fi
  _install_go_tool buf github.com/bufbuild/buf/cmd/buf "$BUF_VERSION"
}

_install_buf
_install_go_tool protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go "$PROTOC_GEN_GO_VERSION"
_install_go_tool protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc "$PROTOC_GEN_GO_GRPC_VERSION"
# Probes of the README's grpcurl example and of health checking (tests/integration/test_grpcurl.py).
_install_go_tool grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl v1.9.3
_install_go_tool grpc-health-probe github.com/grpc-ecosystem/grpc-health-probe v0.4.61

export PATH="$DESIDERATA_TOOLS_BIN:$PATH"
if [ "${BASH_SOURCE[0]}" = "$0" ]; then echo "$DESIDERATA_TOOLS_BIN"; fi
