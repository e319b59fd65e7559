#!/usr/bin/env bash
# Regenerate requirements-lock.txt: a fresh virtual environment, the newest versions setup.py allows
# (install.sh with DPPO_LOCK=none), every installed version written to the lock, then the test suite on it.
# Commit the new lock only if the suite passed.
#     bash script/lock.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_PARENT="$(mktemp -d)"
trap 'rm -rf "$VENV_PARENT"' EXIT
python3 -m venv "$VENV_PARENT/venv"
# shellcheck disable=SC1091
. "$VENV_PARENT/venv/bin/activate"
DPPO_LOCK=none bash install.sh
{
    cat script/lock_header.txt
    echo "# Python $(python -c 'import platform; print(platform.python_version())'), resolved $(date -u +%F)."
    # torch is pinned by release: the local version (+cpu, +cu128) is the build pip picked for this machine, and the
    # CUDA runtime packages a CUDA build pulls in (nvidia-*, cuda-*, triton) follow that build, so they stay unpinned
    python -m pip freeze --exclude-editable | sed -E 's/^(torch==[^+]*)\+.*/\1/' | grep -vE '^(nvidia-|cuda-|triton==)'
} > requirements-lock.txt
python -m pytest -q tests
echo "lock.sh: requirements-lock.txt regenerated and the suite passed on it"
