"""dppo/allocator.py: an entry script re-executes itself once with tcmalloc, and DPPO_ALLOCATOR=system opts out."""

import ctypes.util
import os
import subprocess
import sys

import pytest

from dppo.allocator import ALLOCATOR_VARIABLE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY = """
import os, sys
sys.path.insert(0, {repo!r})
print("start", os.getpid(), flush=True)
from dppo.allocator import loaded_allocator, use_tcmalloc
use_tcmalloc()
import torch  # what a run allocates with
print("allocator", loaded_allocator(), os.getpid(), sys.argv[1:])
"""


def run_entry(tmp_path, env_update):
    script = tmp_path / "entry.py"
    script.write_text(ENTRY.format(repo=REPO))
    env = {key: value for key, value in os.environ.items() if key not in ("LD_PRELOAD", ALLOCATOR_VARIABLE)}
    result = subprocess.run([sys.executable, str(script), "a=1", "b"], capture_output=True, text=True, timeout=120,
                            env={**env, **env_update})
    assert result.returncode == 0, result.stderr
    return result.stdout.split("\n")


@pytest.mark.skipif(ctypes.util.find_library("tcmalloc_minimal") is None or not sys.platform.startswith("linux"),
                    reason="tcmalloc is not installed (install.sh installs libtcmalloc-minimal4)")
def test_entry_script_reexecutes_once_with_tcmalloc_and_the_same_arguments(tmp_path):
    lines = run_entry(tmp_path, {})
    starts = [line for line in lines if line.startswith("start")]
    assert len(starts) == 2, "re-executed exactly once"
    pid = starts[0].split()[1]
    assert f"allocator tcmalloc {pid} ['a=1', 'b']" in lines, "same process, same arguments, tcmalloc loaded"


def test_system_allocator_when_asked(tmp_path):
    lines = run_entry(tmp_path, {ALLOCATOR_VARIABLE: "system"})
    assert len([line for line in lines if line.startswith("start")]) == 1
    assert any(line.startswith("allocator system") for line in lines)
