"""Default locations of data and runs, overridable by environment variables.

Data lives under `./data` and runs under `./log`, relative to the directory the
command is started from, unless `DPPO_DATA_DIR` / `DPPO_LOG_DIR` say otherwise.
"""

import contextlib
import os
import tempfile


def data_dir() -> str:
    """Root of datasets and shipped checkpoints (env var DPPO_DATA_DIR, default ./data)."""
    return os.path.abspath(os.environ.get("DPPO_DATA_DIR", "data"))


def log_dir() -> str:
    """Root of run directories (env var DPPO_LOG_DIR, default ./log)."""
    return os.path.abspath(os.environ.get("DPPO_LOG_DIR", "log"))


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", newline: str | None = None):
    """Open a private temporary file beside `path`; on success fsync it and rename it onto `path`.

    Readers see the old file or the whole new one, never a partial one, and writers running at once
    (jobs of a sweep sharing a dataset directory) each use their own temporary file, so the last
    rename wins instead of one writer renaming away the other's file. On error the temporary is removed.
    Creates parent directories.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes the file private (0600); the result is a normal file
    try:
        with os.fdopen(fd, mode, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        os.remove(tmp_path)
        raise
