"""The memory allocator of training processes: tcmalloc where it is installed.

glibc's malloc serves every allocation above 32 MB with a fresh mmap and returns it at free, so each large
activation of an update (50,000 x 512 values in a DPPO minibatch) is page-faulted in again: an element-wise
op on such a tensor took 26 ms where writing into memory already held took 8 ms. tcmalloc keeps freed memory
for the next allocation; a bf16 DPPO minibatch update went from 431 to 248 ms (docs/PERFORMANCE.md).

`script/run.py` and `script/bench.py` call `use_tcmalloc()` first: when tcmalloc (Debian/Ubuntu package
libtcmalloc-minimal4, installed by install.sh) is present and not loaded yet, the process re-executes itself with
it preloaded (same pid, same arguments); env workers and sweep jobs inherit it. `DPPO_ALLOCATOR=system` keeps
glibc's malloc.
"""

import ctypes.util
import os
import sys

TCMALLOC = "tcmalloc_minimal"
ALLOCATOR_VARIABLE = "DPPO_ALLOCATOR"


def loaded_allocator() -> str:
    """'tcmalloc' when this process runs with tcmalloc (preloaded or linked), else 'system'."""
    try:
        with open("/proc/self/maps") as f:
            if "tcmalloc" in f.read():
                return "tcmalloc"
    except OSError:
        pass
    return "system"


def use_tcmalloc() -> None:
    """Re-execute this process with tcmalloc preloaded, unless it already runs with it, tcmalloc is not
    installed, the platform is not Linux, or DPPO_ALLOCATOR=system. Returns only when it does not re-execute."""
    if os.environ.get(ALLOCATOR_VARIABLE, "tcmalloc") != "tcmalloc" or not sys.platform.startswith("linux"):
        return
    if loaded_allocator() == "tcmalloc":
        return
    library = ctypes.util.find_library(TCMALLOC)
    if library is None:
        return
    preload = " ".join(filter(None, [library, os.environ.get("LD_PRELOAD")]))
    # set so that a failed preload cannot loop: the re-executed process returns here at once
    env = dict(os.environ, LD_PRELOAD=preload, **{ALLOCATOR_VARIABLE: "tcmalloc-preloaded"})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
