"""How torch's idle OpenMP threads wait, set for training processes before torch loads (the runtime reads it then).

`OMP_WAIT_POLICY=PASSIVE`: an idle thread sleeps at once, so torch's threads do not collapse when another process
(an env worker, another job) holds a core: a thread spinning while its teammate waits for a core burns the time
that teammate needs. But sleeping makes every parallel op pay a wake-up, which dominates updates made of many
small ops (the off-policy algorithms' 1000-row batches). GNU OpenMP (libgomp, what Linux torch wheels use) takes
`GOMP_SPINCOUNT` over the policy: a thread spins that many times (about 30 us for 3000) before it sleeps, long
enough to catch the next op of an update, short enough to bound the loss beside a busy process. Measured on 2
cores (docs/PERFORMANCE.md): an IDQL gradient step took 48 ms sleeping and 30-34 ms with 3000 spins when idle,
47-56 ms and 64-66 ms beside a busy process. Runs that share cores should use 1 thread each, where neither
setting matters. Other OpenMP runtimes ignore GOMP_SPINCOUNT and sleep.

Whatever the environment sets wins: an explicit OMP_WAIT_POLICY (or GOMP_SPINCOUNT) is left as it is, and no
spin count is added to it.
"""

import os

WAIT_POLICY = "PASSIVE"
SPIN_COUNT = "3000"


def set_openmp_wait_defaults() -> None:
    """Set OMP_WAIT_POLICY=PASSIVE and GOMP_SPINCOUNT=3000 in this process's environment, unless either is set."""
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
