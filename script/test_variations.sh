#!/usr/bin/env bash
# The numerical tests (reference equality, distributed equality, learning) under the variations a user's machine
# brings: the CPU's vector width (ATEN_CPU_CAPABILITY=avx2 and the default, avx512 here), 1 and 2 torch threads,
# and the lowest pytest setup.py allows (8.0) beside the lock's. Run in the installed environment:
#     bash script/test_variations.sh
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=(tests/test_reference_algorithms.py tests/test_reference_weights.py tests/test_reference_weights_reinflow.py
       tests/test_unet_vit.py tests/test_distributed.py tests/test_distributed_finetune.py tests/test_finetune_learning.py
       tests/test_ppo_diffusion.py tests/test_rl_losses.py tests/test_gae.py)
for capability in default avx2; do
    for threads in 1 2; do
        echo "== ATEN_CPU_CAPABILITY=$capability DPPO_TEST_THREADS=$threads, pytest $(python -m pytest --version 2>&1 | cut -d' ' -f2)"
        if [ "$capability" = default ]; then unset ATEN_CPU_CAPABILITY; else export ATEN_CPU_CAPABILITY=$capability; fi
        DPPO_TEST_THREADS=$threads python -m pytest -q -p no:cacheprovider "${FILES[@]}" | tail -n 1
    done
done
unset ATEN_CPU_CAPABILITY
LOWEST="$(mktemp -d)"
trap 'rm -rf "$LOWEST"' EXIT
python -m pip install -q --target "$LOWEST" "pytest==8.0.0"
echo "== pytest $(PYTHONPATH="$LOWEST" python -m pytest --version 2>&1 | cut -d' ' -f2) (the lowest setup.py allows), default capability, 1 thread"
PYTHONPATH="$LOWEST" python -m pytest -q -p no:cacheprovider "${FILES[@]}" | tail -n 1
