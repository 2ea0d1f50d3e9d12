#!/usr/bin/env bash
# mypy --strict over the packages. The import namespace `desiderata` is mapped
# from top-level folders (pyproject.toml), which mypy cannot follow, so this
# builds a throw-away tree of symlinks shaped like the installed package.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python}"
tree="$(mktemp -d)"
trap 'rm -rf "$tree"' EXIT
mkdir -p "$tree/desiderata"
for part in server policy explainers; do ln -s "$root/$part" "$tree/desiderata/$part"; done
for part in v1 oip client; do ln -s "$root/clients/python/src/desiderata/$part" "$tree/desiderata/$part"; done
cd "$tree"
"$py" -m mypy --config-file "$root/pyproject.toml" --cache-dir "$root/.mypy_cache" \
  -p desiderata.server -p desiderata.policy -p desiderata.explainers -p desiderata.client "$@"
