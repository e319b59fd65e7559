"""Summary table of fine-tuning runs: final and best eval return, env steps, wall time, env steps/s.

    python script/summarize.py RUN [RUN ...] [--labels A A B B] [--out summary.md]

Runs sharing a label are one row: each figure is the mean over its runs, with the individual runs'
values in parentheses. `final` is the last `eval/episode_return`, `best` the highest one; env
steps and wall time are those of the last training row; env steps/s is the mean over iterations
of the rollout phase's `train/env_steps_per_s`.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from plot import read_rows  # noqa: E402

COLUMNS = ("final eval return", "best eval return", "env steps", "wall time (min)", "rollout env steps/s")


def run_summary(rows: list[dict]) -> dict:
    """The COLUMNS of one run from its metrics rows."""
    evals = [row["eval/episode_return"] for row in rows if "eval/episode_return" in row]
    train = [row for row in rows if "train/env_steps" in row]
    if not evals or not train:
        raise SystemExit("A run has no evaluation or no training row yet: summarize finished runs.")
    return {
        "final eval return": evals[-1],
        "best eval return": max(evals),
        "env steps": train[-1]["train/env_steps"],
        "wall time (min)": train[-1]["train/wall_time"] / 60,
        "rollout env steps/s": float(np.mean([row["train/env_steps_per_s"] for row in train])),
    }


def format_cell(values: list[float]) -> str:
    mean = float(np.mean(values))
    if len(values) == 1:
        return f"{mean:,.1f}"
    return f"{mean:,.1f} ({', '.join(f'{v:,.1f}' for v in values)})"


def summary_table(runs: list[str], labels: list[str]) -> str:
    """Markdown table, one row per label."""
    groups: dict[str, list[dict]] = {}
    for run, label in zip(runs, labels):
        groups.setdefault(label, []).append(run_summary(read_rows(run)))
    lines = ["| run | seeds | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    for label, summaries in groups.items():
        cells = [format_cell([s[column] for s in summaries]) for column in COLUMNS]
        lines.append(f"| {label} | {len(summaries)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories holding metrics.jsonl")
    parser.add_argument("--labels", nargs="+", default=None, help="row label per run; runs with one label are averaged")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args()
    labels = args.labels or [os.path.basename(os.path.normpath(run)) for run in args.runs]
    if len(labels) != len(args.runs):
        raise SystemExit(f"--labels needs one label per run ({len(args.runs)}), got {len(labels)}.")
    table = summary_table(args.runs, labels)
    print(table, end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
