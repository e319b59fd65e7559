"""Compare runs: curves of logged metrics from the metrics.jsonl of one or more run directories.

    python script/plot.py log/hopper_ft_.../<run> [more runs] --out curves.png
    python script/plot.py RUN --keys eval/episode_return train/pg_loss --x env_steps
    python script/plot.py A_seed0 A_seed1 B_seed0 B_seed1 --labels A A B B --x env_steps wall_time

The x-axis is the iteration (`step`), the environment steps (`--x env_steps`) or the wall time
in minutes (`--x wall_time`) reached after that row's iteration, both read from the training
rows (`train/env_steps`, `train/wall_time`; 0 before the first iteration); several x-axes give
one row of panels each. Runs that share a
label are one group: its line is the mean over the runs at the iterations they all logged, with
the min-max range shaded.
"""

import argparse
import json
import os

import numpy as np
from matplotlib.figure import Figure

DEFAULT_KEYS = ["eval/episode_return", "train/episode_return", "train/loss", "train/pg_loss", "train/value_loss"]
X_KEYS = {"env_steps": "train/env_steps", "wall_time": "train/wall_time"}
X_LABELS = {"step": "iteration", "env_steps": "environment steps", "wall_time": "wall time (min)"}
SECONDS_PER_MINUTE = 60.0


def read_rows(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise SystemExit(f"{path} not found: pass run directories written by script/run.py.")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def env_steps_by_step(rows: list[dict]) -> dict[int, float]:
    """Environment steps taken after each iteration, from the training rows; 0 before the first."""
    return x_by_step(rows, "env_steps")


def x_by_step(rows: list[dict], x: str) -> dict[int, float]:
    """The x value of every iteration: the iteration itself, or env steps / wall minutes after it (0 at step 0)."""
    if x == "step":
        return {row["step"]: float(row["step"]) for row in rows}
    scale = SECONDS_PER_MINUTE if x == "wall_time" else 1.0
    values = {0: 0.0}
    values.update({row["step"]: row[X_KEYS[x]] / scale for row in rows if X_KEYS[x] in row})
    return values


def group_curve(runs_rows: list[list[dict]], key: str, x: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x, mean, min, max of `key` over the runs of one group, at the iterations every run logged it."""
    per_run = []
    for rows in runs_rows:
        x_of = x_by_step(rows, x)
        per_run.append({row["step"]: (x_of[row["step"]], row[key]) for row in rows if key in row and row["step"] in x_of})
    steps = sorted(set.intersection(*(set(points) for points in per_run)))
    xs = np.array([[points[step][0] for step in steps] for points in per_run])
    ys = np.array([[points[step][1] for step in steps] for points in per_run])
    if not steps:
        return np.array([]), np.array([]), np.array([]), np.array([])
    return xs.mean(axis=0), ys.mean(axis=0), ys.min(axis=0), ys.max(axis=0)


def plot_runs(runs: list[str], labels: list[str], keys: list[str], x: str | list[str]) -> Figure:
    """One panel per (x-axis, key); one line per label (the mean of its runs, min-max shaded when it has several)."""
    groups: dict[str, list[list[dict]]] = {}
    for run, label in zip(runs, labels):
        groups.setdefault(label, []).append(read_rows(run))
    panels = [(x_axis, key) for x_axis in ([x] if isinstance(x, str) else x) for key in keys]
    n_cols = min(len(panels), 3)
    n_rows = (len(panels) + 2) // 3
    figure = Figure(figsize=(4.5 * n_cols, 3.2 * n_rows))
    axes = figure.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax, (x, key) in zip(axes, panels):
        for label, runs_rows in groups.items():
            xs, mean, low, high = group_curve(runs_rows, key, x)
            if len(xs):
                line, = ax.plot(xs, mean, marker="." if len(xs) < 30 else None, label=label)
                if len(runs_rows) > 1:
                    ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2)
        ax.set_title(key)
        ax.set_xlabel(X_LABELS[x])
        ax.legend(fontsize=7)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    figure.tight_layout()
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories holding metrics.jsonl")
    parser.add_argument("--keys", nargs="+", default=DEFAULT_KEYS, help="metrics to plot, one panel each")
    parser.add_argument("--x", nargs="+", choices=list(X_LABELS), default=["step"])
    parser.add_argument("--labels", nargs="+", default=None,
                        help="legend label per run (default: run dir name); runs with one label are averaged")
    parser.add_argument("--out", default="curves.png")
    args = parser.parse_args()
    labels = args.labels or [os.path.basename(os.path.normpath(run)) for run in args.runs]
    if len(labels) != len(args.runs):
        raise SystemExit(f"--labels needs one label per run ({len(args.runs)}), got {len(labels)}.")
    plot_runs(args.runs, labels, args.keys, args.x).savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
