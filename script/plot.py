"""Compare runs: curves of logged metrics from the metrics.jsonl of one or more run directories.

    python script/plot.py log/hopper_ft_.../<run> [more runs] --out curves.png
    python script/plot.py RUN --keys eval/episode_return train/pg_loss --x env_steps

The x-axis is the iteration (`step`) or, with `--x env_steps`, the environment
steps taken before that row was logged (read from the `train/env_steps` of the
training rows; 0 before the first iteration).
"""

import argparse
import json
import os

from matplotlib.figure import Figure

DEFAULT_KEYS = ["eval/episode_return", "train/episode_return", "train/loss", "train/pg_loss", "train/value_loss"]


def read_rows(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise SystemExit(f"{path} not found: pass run directories written by script/run.py.")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def env_steps_by_step(rows: list[dict]) -> dict[int, float]:
    """Environment steps taken after each iteration, from the training rows; 0 before the first."""
    steps = {0: 0.0}
    steps.update({row["step"]: row["train/env_steps"] for row in rows if "train/env_steps" in row})
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories holding metrics.jsonl")
    parser.add_argument("--keys", nargs="+", default=DEFAULT_KEYS, help="metrics to plot, one panel each")
    parser.add_argument("--x", choices=["step", "env_steps"], default="step")
    parser.add_argument("--labels", nargs="+", default=None, help="legend label per run (default: run dir name)")
    parser.add_argument("--out", default="curves.png")
    args = parser.parse_args()
    labels = args.labels or [os.path.basename(os.path.normpath(run)) for run in args.runs]
    if len(labels) != len(args.runs):
        raise SystemExit(f"--labels needs one label per run ({len(args.runs)}), got {len(labels)}.")

    figure = Figure(figsize=(4.5 * min(len(args.keys), 3), 3.2 * ((len(args.keys) + 2) // 3)))
    axes = figure.subplots((len(args.keys) + 2) // 3, min(len(args.keys), 3), squeeze=False).ravel()
    for run, label in zip(args.runs, labels):
        rows = read_rows(run)
        x_of = env_steps_by_step(rows) if args.x == "env_steps" else None
        for ax, key in zip(axes, args.keys):
            points = [(row["step"], row[key]) for row in rows if key in row]
            if x_of is not None:
                points = [(x_of[step], value) for step, value in points if step in x_of]
            if points:
                ax.plot(*zip(*points), marker="." if len(points) < 30 else None, label=label)
    for ax, key in zip(axes, args.keys):
        ax.set_title(key)
        ax.set_xlabel("environment steps" if args.x == "env_steps" else "iteration")
        ax.legend(fontsize=7)
    for ax in axes[len(args.keys):]:
        ax.set_visible(False)
    figure.tight_layout()
    figure.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
