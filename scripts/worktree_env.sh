#!/usr/bin/env bash
# Developer tool: a git worktree on a new branch plus a light venv that layers
# the worktree's editable install over the shared, pinned venv (no second torch).
# Usage: scripts/worktree_env.sh NAME   → worktree /work/wt-NAME, venv ~/.cache/desiderata/wt-NAME
set -euo pipefail
name="$1"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
base="$(bash "$root/scripts/bootstrap.sh")"
wt="/work/wt-$name"
venv="$HOME/.cache/desiderata/wt-$name"
[ -d "$wt" ] || git -C "$root" worktree add -q "$wt" -b "feat/$name"
python3 -m venv "$venv"
rm -rf "$venv"/lib/python3.11/site-packages/setuptools* "$venv"/lib/python3.11/site-packages/_distutils_hack "$venv"/lib/python3.11/site-packages/distutils-precedence.pth
echo "$base/lib/python3.11/site-packages" > "$venv/lib/python3.11/site-packages/_base.pth"
"$venv/bin/pip" install -q --no-deps --no-build-isolation -e "$wt/clients/python" -e "$wt" >/dev/null
echo "worktree: $wt"
echo "python:   $venv/bin/python"
