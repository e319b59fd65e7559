"""Default locations of data and runs, overridable by environment variables.

Data lives under `./data` and runs under `./log`, relative to the directory the
command is started from, unless `DPPO_DATA_DIR` / `DPPO_LOG_DIR` say otherwise.
"""

import os


def data_dir() -> str:
    """Root of datasets and shipped checkpoints (env var DPPO_DATA_DIR, default ./data)."""
    return os.path.abspath(os.environ.get("DPPO_DATA_DIR", "data"))


def log_dir() -> str:
    """Root of run directories (env var DPPO_LOG_DIR, default ./log)."""
    return os.path.abspath(os.environ.get("DPPO_LOG_DIR", "log"))
