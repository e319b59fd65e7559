"""The Gym demo maker refuses to write a dataset from an expert far below the task's target return (of either
sign), takes any SB3 algorithm and its hyperparameters, and warns before training when the dataset it would
replace was made with other library versions."""

import json
import os
import subprocess
import sys

import numpy
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "script", "dataset"))
pytest.importorskip("stable_baselines3")

from make_gym_demos import expert_reached  # noqa: E402


def test_the_expert_test_takes_targets_of_either_sign():
    assert expert_reached(8.0, 10.0, 0.8) and not expert_reached(7.9, 10.0, 0.8)
    # a new user's Reacher-v5 with demo.target_return -10: the expert's -9.8 is above the target
    assert expert_reached(-9.8, -10.0, 0.8) and expert_reached(-12.0, -10.0, 0.8)
    assert not expert_reached(-12.1, -10.0, 0.8)


def test_an_sac_expert_with_its_hyperparameters_and_a_negative_target_writes_a_dataset(tmp_path):
    out_dir = tmp_path / "demos"
    hyperparameters = {"learning_starts": 50, "batch_size": 32, "buffer_size": 1000}
    result = subprocess.run(
        [sys.executable, "script/dataset/make_gym_demos.py", "--task", "hopper", "--algo", "SAC",
         "--expert-hparams", json.dumps(hyperparameters), "--max-expert-steps", "200", "--target-return", "-5",
         "--n-transitions", "300", "--out-dir", str(out_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    metadata = json.loads((out_dir / "metadata.json").read_text())
    assert metadata["target_return"] == -5.0 and metadata["expert"]["env_steps"] == 200
    assert metadata["expert"]["library"].startswith("stable-baselines3 SAC")
    assert metadata["expert"]["hyperparameters"] == hyperparameters
    assert (out_dir / "expert" / "sac_policy.zip").is_file()
    data = numpy.load(out_dir / "train.npz")
    assert data["traj_lengths"].sum() == len(data["states"]) >= 300 and data["actions"].shape[1] == 3

    bad = subprocess.run([sys.executable, "script/dataset/make_gym_demos.py", "--task", "hopper", "--expert-hparams",
                          "{n_steps: 5}"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("error: --expert-hparams is not JSON")


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
