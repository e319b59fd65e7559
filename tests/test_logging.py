import csv
import json
import os

import numpy as np
import pytest
import torch

from dppo.logging import MetricLogger


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_log_writes_jsonl_converts_values_and_prints_one_line(tmp_path, capsys):
    logger = MetricLogger(str(tmp_path))
    logger.log({"loss": torch.tensor(0.0123456), "lr": np.float32(1e-3), "n": 3}, step=10, prefix="train")
    logger.log({"episode_return": torch.tensor([2.5])}, step=10, prefix="eval")
    assert read_jsonl(tmp_path / "metrics.jsonl") == [
        {"step": 10, "train/loss": pytest.approx(0.0123456), "train/lr": pytest.approx(1e-3), "train/n": 3.0},
        {"step": 10, "eval/episode_return": 2.5},
    ]
    assert all(type(value) is float for value in logger.history[0].values() if value != 10)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[step 10] train/loss 0.01235 | train/lr 0.001 | train/n 3"
    with pytest.raises(ValueError, match="log a scalar"):
        logger.log({"loss": torch.zeros(3)}, step=11)


def test_csv_header_grows_when_a_new_key_appears(tmp_path):
    logger = MetricLogger(str(tmp_path))
    logger.log({"b": 1.0}, step=0)
    logger.log({"b": 2.0}, step=1)
    assert read_csv(tmp_path / "metrics.csv") == [["step", "b"], ["0", "1.0"], ["1", "2.0"]]
    logger.log({"a": 3.0}, step=2)
    logger.log({"a": 4.0, "b": 5.0}, step=3)
    assert read_csv(tmp_path / "metrics.csv") == [
        ["step", "a", "b"],
        ["0", "", "1.0"],
        ["1", "", "2.0"],
        ["2", "3.0", ""],
        ["3", "4.0", "5.0"],
    ]


def test_resume_keeps_history_and_appends(tmp_path):
    logger = MetricLogger(str(tmp_path))
    logger.log({"loss": 1.0}, step=0)
    logger.log({"loss": 0.5}, step=1)
    logger.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "lo')  # a line cut short by a crash

    resumed = MetricLogger(str(tmp_path), resume=True)
    resumed.log({"loss": 0.25, "lr": 0.1}, step=2)
    assert [row["step"] for row in read_jsonl(tmp_path / "metrics.jsonl")] == [0, 1, 2]
    assert [row["loss"] for row in resumed.history] == [1.0, 0.5, 0.25]
    assert read_csv(tmp_path / "metrics.csv")[0] == ["step", "loss", "lr"]
    assert len(read_csv(tmp_path / "metrics.csv")) == 4

    fresh = MetricLogger(str(tmp_path))
    assert fresh.history == [] and read_jsonl(tmp_path / "metrics.jsonl") == []


def test_plot_writes_png(tmp_path):
    logger = MetricLogger(str(tmp_path))
    for step in range(5):
        logger.log({"loss": 1.0 / (step + 1), "episode_return": float(step)}, step=step, prefix="train")
    logger.log({"episode_return": 3.0}, step=4, prefix="eval")
    path = logger.plot({"reward": ["train/episode_return", "eval/episode_return"], "loss": ["train/loss", "never"]})
    assert path == os.path.join(str(tmp_path), "curves.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    default_path = logger.plot(filename="all.png")
    assert os.path.getsize(default_path) > 0
    assert sorted(os.listdir(tmp_path)) == ["all.png", "curves.png", "metrics.csv", "metrics.jsonl"]


def test_wandb_offline_run_keeps_its_id_on_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    wandb_cfg = {"project": "dppo-test", "mode": "offline"}
    logger = MetricLogger(str(tmp_path), wandb_cfg=wandb_cfg, config={"seed": 0})
    assert logger.run is not None
    logger.log({"loss": 1.0}, step=0)
    logger.close()
    with open(tmp_path / "wandb_id.txt") as f:
        run_id = f.read().strip()

    resumed = MetricLogger(str(tmp_path), wandb_cfg=wandb_cfg, resume=True)
    assert resumed.run is not None and resumed.run.id == run_id
    resumed.close()
    with pytest.raises(ValueError, match="Unknown wandb config keys"):
        MetricLogger(str(tmp_path), wandb_cfg={"projetc": "dppo"})


def test_wandb_failure_warns_and_continues(tmp_path, capsys):
    logger = MetricLogger(str(tmp_path), wandb_cfg={"mode": "not-a-mode"})
    assert logger.run is None
    assert "Warning: wandb is off" in capsys.readouterr().out
    logger.log({"loss": 1.0}, step=0)


def test_wandb_resume_after_dropped_rows_starts_a_run_with_the_kept_history(tmp_path, monkeypatch):
    """A crash after the checkpoint left steps 4-5 logged; resuming at step 3 must not keep them in wandb."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb_cfg = {"project": "dppo-test", "mode": "offline"}
    logger = MetricLogger(str(tmp_path), wandb_cfg=wandb_cfg)
    for step in range(1, 6):
        logger.log({"loss": float(step)}, step=step)
    first_id = logger.run.id
    logger.close()

    resumed = MetricLogger(str(tmp_path), wandb_cfg=wandb_cfg, resume=True, resume_step=3)
    assert resumed.run.id != first_id
    with open(tmp_path / "wandb_id.txt") as f:
        assert f.read().strip() == resumed.run.id
    assert resumed.run.step == 3, "the new wandb run holds the kept rows, up to step 3, so step 4 is accepted"
    resumed.close()
