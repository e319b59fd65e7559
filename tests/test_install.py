"""The environment the suite runs in is the lock's: every locked package at its locked version, and `pip check`
reports only the conflicts the lock's header explains (metaworld's and robomimic's pins, installed --no-deps)."""

import os
import re
import subprocess
import sys
from importlib import metadata

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCK = os.path.join(REPO, "requirements-lock.txt")
EXPLAINED = "# pip check: "


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions() -> dict[str, str]:
    with open(LOCK) as f:
        pins = [line.strip().split("==") for line in f if line.strip() and not line.startswith("#")]
    return {canonical(name): version for name, version in pins}


def explained_conflicts() -> set[str]:
    with open(LOCK) as f:
        return {line[len(EXPLAINED):].strip() for line in f if line.startswith(EXPLAINED)}


def test_every_locked_package_is_installed_at_its_locked_version():
    installed = {canonical(dist.metadata["Name"]): dist.version for dist in metadata.distributions()}
    # a local version (+cpu, +cu128) is the build pip chose for the machine; the lock pins the release
    wrong = {name: (version, installed.get(name)) for name, version in locked_versions().items()
             if installed.get(name, "").split("+")[0] != version}
    assert len(locked_versions()) > 50, "the parser read the lock"
    assert not wrong, f"installed versions differ from requirements-lock.txt (locked, installed): {wrong}; " \
                      "run `bash install.sh` in a fresh virtual environment"


def test_pip_check_reports_only_the_conflicts_the_lock_explains():
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    reported = {line.strip() for line in result.stdout.splitlines() if line.strip()}
    assert len(explained_conflicts()) == 6, "the parser read the lock's header"
    unexplained = reported - explained_conflicts()
    assert not unexplained, f"pip check reports conflicts requirements-lock.txt does not explain: {unexplained}"
