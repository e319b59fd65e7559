#!/usr/bin/env bash
# The numerical tests (reference equality, distributed equality, learning, the PPO and GAE math) under the
# variations a user's machine brings: the CPU's vector width (ATEN_CPU_CAPABILITY=avx2 and the default, avx512
# here), 1 and 2 torch threads, and the lowest pytest setup.py allows (8.0.0) beside the lock's. Run in the
# installed environment; exits non-zero when any variation fails:
#     bash script/test_variations.sh
set -uo pipefail
cd "$(dirname "$0")/.."
FILES=(tests/test_reference_algorithms.py tests/test_reference_weights.py tests/test_reference_weights_reinflow.py
       tests/test_unet_vit.py tests/test_distributed.py tests/test_distributed_finetune.py tests/test_finetune_learning.py
       tests/test_ppo_diffusion.py tests/test_rl_losses.py tests/test_gae.py)
LOWEST="$(mktemp -d)"
trap 'rm -rf "$LOWEST"' EXIT
STATUS=0

run_variation() {  # description, then the environment assignments of this variation
    local description="$1"
    shift
    echo "== $description"
    env "$@" python -m pytest -q -p no:cacheprovider "${FILES[@]}" > "$LOWEST/log" 2>&1 || STATUS=1
    grep -E "^FAILED|passed|failed" "$LOWEST/log"
}

for capability in default avx2; do
    for threads in 1 2; do
        if [ "$capability" = default ]; then
            run_variation "default capability, $threads thread(s)" DPPO_TEST_THREADS="$threads"
        else
            run_variation "ATEN_CPU_CAPABILITY=$capability, $threads thread(s)" ATEN_CPU_CAPABILITY="$capability" \
                DPPO_TEST_THREADS="$threads"
        fi
    done
done
python -m pip install -q --target "$LOWEST/pytest" "pytest==8.0.0" || exit 1
run_variation "pytest 8.0.0 (the lowest setup.py allows), default capability, 1 thread" PYTHONPATH="$LOWEST/pytest"
exit $STATUS
