#!/usr/bin/env bash
# Install dppo with every extra, at the versions of requirements-lock.txt (the environment the test suite passed
# with; script/lock.sh regenerates it). DPPO_LOCK=none resolves the newest versions setup.py allows instead.
# torch first: on a CPU-only machine pip takes its CPU wheel, elsewhere PyPI's default build (CUDA on Linux).
set -euo pipefail
cd "$(dirname "$0")"
LOCK="${DPPO_LOCK:-requirements-lock.txt}"
if [ "$LOCK" = none ]; then CONSTRAINTS=(); else CONSTRAINTS=(--constraint "$LOCK"); fi
# tcmalloc (dppo/allocator.py: script/run.py uses it when present): from Debian/Ubuntu where we may install.
if command -v apt-get > /dev/null && [ "$(id -u)" = 0 ]; then
    apt-get install -y -q --no-install-recommends libtcmalloc-minimal4 > /dev/null 2>&1 \
        || { apt-get update -q > /dev/null 2>&1 && apt-get install -y -q --no-install-recommends libtcmalloc-minimal4 > /dev/null 2>&1; } \
        || echo "install.sh: could not install libtcmalloc-minimal4; runs will use the system allocator (slower)."
fi
python -m pip install -q "${CONSTRAINTS[@]}" "torch>=2.13,<2.15"
python -m pip install -q "${CONSTRAINTS[@]}" -e ".[all]"
# Meta-World without its mujoco==3.3.0 pin: one mujoco (3.8.0) for every task family; its other dependencies are
# the `metaworld` extra above.
python -m pip install -q "${CONSTRAINTS[@]}" --no-deps "metaworld==3.1.1"
# robomimic's dataset reader, the tests' oracle of script/dataset/convert_robomimic.py: without its dependencies (its
# models want a torchvision matching torch, its env wrapper mujoco_py; neither is used).
python -m pip install -q "${CONSTRAINTS[@]}" --no-deps "robomimic==0.3.0"
