#!/usr/bin/env bash
# Install dppo with every extra. torch 2.13.0 first: on a CPU-only machine pip takes its CPU wheel,
# elsewhere PyPI's default build (CUDA on Linux).
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[all]"
