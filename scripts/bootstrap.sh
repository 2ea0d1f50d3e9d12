#!/usr/bin/env bash
# Creates (once per lock file) the virtual environment every command of this
# repository runs in, then installs the project itself into it in editable mode.
# torch is a large download: the environment lives outside the clone, keyed by
# the hash of requirements/lock.txt, so a fresh clone reuses it when nothing changed.
# Prints the venv path on stdout; progress goes to stderr.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python3}"
key="$( (cat "$root/requirements/lock.txt"; "$py" --version) | sha256sum | cut -c1-16)"
venv="${DESIDERATA_VENV:-$HOME/.cache/desiderata/venv-$key}"
if [ ! -f "$venv/.complete" ]; then
  echo "bootstrap: creating $venv (first run downloads torch; later runs reuse it)" >&2
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip setuptools >&2
  "$venv/bin/pip" install -q -r "$root/requirements/lock.txt" >&2
  touch "$venv/.complete"
fi
# The project itself: cheap, so always (re)installed without touching the pins.
log="$(mktemp)"
if ! "$venv/bin/pip" install -q --no-deps --no-build-isolation -e "$root/clients/python" -e "$root" >"$log" 2>&1; then
  cat "$log" >&2; rm -f "$log"; exit 1
fi
rm -f "$log"
echo "$venv"
