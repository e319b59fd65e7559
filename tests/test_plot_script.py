"""script/plot.py draws curves of several runs against iterations or environment steps."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "script"))

from plot import env_steps_by_step, plot_runs  # noqa: E402
from summarize import summary_table  # noqa: E402


def write_run(run_dir, rows):
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


ROWS = [
    {"step": 0, "eval/episode_return": 10.0},
    {"step": 1, "train/env_steps": 400.0, "train/wall_time": 30.0, "train/episode_return": 12.0, "train/pg_loss": -0.1},
    {"step": 2, "train/env_steps": 800.0, "train/wall_time": 90.0, "train/episode_return": 15.0, "train/pg_loss": -0.2},
    {"step": 2, "eval/episode_return": 20.0},
]


def test_env_steps_of_eval_rows_come_from_the_training_rows():
    assert env_steps_by_step(ROWS) == {0: 0.0, 1: 400.0, 2: 800.0}


def test_plot_of_two_runs_writes_a_png(tmp_path):
    write_run(tmp_path / "a", ROWS)
    write_run(tmp_path / "b", ROWS[:2])
    out = tmp_path / "curves.png"
    subprocess.run([sys.executable, "script/plot.py", str(tmp_path / "a"), str(tmp_path / "b"), "--x", "env_steps",
                    "--out", str(out)], cwd=REPO, check=True, capture_output=True, timeout=120)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_sharing_a_label_are_drawn_as_their_mean_with_the_spread_shaded(tmp_path):
    low = [{"step": 0, "eval/episode_return": 10.0},
           {"step": 1, "train/env_steps": 400.0, "train/wall_time": 60.0},
           {"step": 1, "eval/episode_return": 20.0}]
    high = [{"step": 0, "eval/episode_return": 30.0},
            {"step": 1, "train/env_steps": 600.0, "train/wall_time": 180.0},
            {"step": 1, "eval/episode_return": 40.0}]
    write_run(tmp_path / "s0", low)
    write_run(tmp_path / "s1", high)
    write_run(tmp_path / "other", ROWS)
    figure = plot_runs([str(tmp_path / "s0"), str(tmp_path / "s1"), str(tmp_path / "other")], ["A", "A", "B"],
                       ["eval/episode_return", "train/pg_loss"], x="wall_time")
    eval_ax, loss_ax = figure.axes[:2]
    lines = {line.get_label(): line for line in eval_ax.get_lines()}
    assert list(lines["A"].get_xdata()) == [0.0, 2.0]  # mean of 1 and 3 minutes
    assert list(lines["A"].get_ydata()) == [20.0, 30.0]
    assert list(lines["B"].get_xdata()) == [0.0, 1.5]
    assert list(lines["B"].get_ydata()) == [10.0, 20.0]
    assert len(eval_ax.collections) == 1, "only the group of two runs has a shaded spread"
    assert [line.get_label() for line in loss_ax.get_lines()] == ["B"]
    assert eval_ax.get_xlabel() == "wall time (min)"

    by_both = plot_runs([str(tmp_path / "s0")], ["A"], ["eval/episode_return"], x=["env_steps", "wall_time"])
    assert [ax.get_xlabel() for ax in by_both.axes if ax.get_visible()] == ["environment steps", "wall time (min)"]
    assert [list(ax.get_lines()[0].get_xdata()) for ax in by_both.axes[:2]] == [[0.0, 400.0], [0.0, 1.0]]


def test_summary_table_averages_runs_sharing_a_label(tmp_path):
    def rows(final, best, env_steps, wall, speeds):
        out = [{"step": 0, "eval/episode_return": best}]
        for i, speed in enumerate(speeds, start=1):
            out.append({"step": i, "train/env_steps": env_steps * i / len(speeds), "train/wall_time": wall * i / len(speeds),
                        "train/env_steps_per_s": speed})
        out.append({"step": len(speeds), "eval/episode_return": final})
        return out

    write_run(tmp_path / "a0", rows(final=10.0, best=30.0, env_steps=1000.0, wall=120.0, speeds=[100.0, 300.0]))
    write_run(tmp_path / "a1", rows(final=20.0, best=10.0, env_steps=3000.0, wall=240.0, speeds=[400.0, 400.0]))
    table = summary_table([str(tmp_path / "a0"), str(tmp_path / "a1")], ["A", "A"])
    assert table.splitlines()[2] == ("| A | 2 | 15.0 (10.0, 20.0) | 25.0 (30.0, 20.0) | 2,000.0 (1,000.0, 3,000.0) "
                                     "| 3.0 (2.0, 4.0) | 300.0 (200.0, 400.0) |")
