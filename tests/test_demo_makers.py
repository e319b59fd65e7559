"""The Gym demo maker refuses to write a dataset from an expert far below the task's target return, and warns
before training when the dataset it would replace was made with other library versions."""

import json
import os
import subprocess
import sys

import numpy
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytest.importorskip("stable_baselines3")


def test_weak_expert_writes_nothing_and_says_so(tmp_path):
    out_dir = tmp_path / "demos"
    result = subprocess.run(
        [sys.executable, "script/dataset/make_gym_demos.py", "--task", "hopper", "--max-expert-steps", "1024",
         "--out-dir", str(out_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode != 0
    assert "EXPERT TOO WEAK" in result.stderr and "nothing was written" in result.stderr
    assert result.stdout.startswith("expert: 2048 env steps")  # progress (PPO collects 2048-step rollouts)
    assert not out_dir.exists()


def test_warns_when_the_existing_dataset_was_made_with_other_versions(tmp_path):
    out_dir = tmp_path / "demos"
    out_dir.mkdir()
    recorded = {"versions": {"numpy": "0.1.0", "python": sys.version.split()[0]}}
    (out_dir / "metadata.json").write_text(json.dumps(recorded))
    result = subprocess.run(
        [sys.executable, "script/dataset/make_gym_demos.py", "--task", "hopper", "--max-expert-steps", "1024",
         "--out-dir", str(out_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    warning, too_weak = result.stderr.strip().split("\n\n")  # the warning comes first, before the expert trains
    assert warning.startswith(f"*** WARNING: {out_dir / 'metadata.json'} was made with numpy 0.1.0 (here "
                              f"{numpy.__version__}).")
    assert "python" not in warning  # a version that matches is not listed
    assert "EXPERT TOO WEAK" in too_weak
    assert json.loads((out_dir / "metadata.json").read_text()) == recorded  # nothing written over it


def test_unknown_task_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "script/dataset/make_gym_demos.py", "--task", "hoper"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Unknown task 'hoper': use one of ")
    assert "hopper" in lines[0] and lines[0].endswith("or add cfg/task/hoper.yaml.")
