"""Summary tables: of a sweep (one row per job), or of run dirs (runs sharing a label averaged).

    python script/summarize.py log/multirun/<date>_<time>        # writes summary.csv and summary.md there
    python script/summarize.py RUN [RUN ...] [--labels A A B B] [--out summary.md]

A sweep's table is the one its SweepSummary callback writes when the sweep ends (dppo/sweep.py):
task, config, seed, final and best eval return, final success rate and loss when logged, env steps,
wall time and run dir of every job; run it again after a failed job stopped the sweep early.

Run dirs sharing a label are one row: each figure is the mean over its runs, with the individual runs'
values in parentheses. `final` is the last `eval/episode_return`, `best` the highest one; env
steps and wall time are those of the last training row; env steps/s is the mean over iterations
of the rollout phase's `train/env_steps_per_s`.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dppo.sweep import is_sweep_dir, read_metrics, run_summary, write_summary  # noqa: E402

COLUMNS = ("final eval return", "best eval return", "env steps", "wall time (min)", "rollout env steps/s")


def format_cell(values: list[float]) -> str:
    mean = float(np.mean(values))
    if len(values) == 1:
        return f"{mean:,.1f}"
    return f"{mean:,.1f} ({', '.join(f'{v:,.1f}' for v in values)})"


def finetuning_summary(run: str) -> dict:
    """The COLUMNS of one fine-tuning run."""
    summary = run_summary(read_metrics(run))
    if any(summary[column] is None for column in COLUMNS):
        raise SystemExit(f"{run} has no evaluation or no training row yet: summarize finished fine-tuning runs.")
    return summary


def summary_table(runs: list[str], labels: list[str]) -> str:
    """Markdown table, one row per label."""
    groups: dict[str, list[dict]] = {}
    for run, label in zip(runs, labels):
        groups.setdefault(label, []).append(finetuning_summary(run))
    lines = ["| run | seeds | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    for label, summaries in groups.items():
        cells = [format_cell([s[column] for s in summaries]) for column in COLUMNS]
        lines.append(f"| {label} | {len(summaries)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="one sweep directory, or run directories holding metrics.jsonl")
    parser.add_argument("--labels", nargs="+", default=None, help="row label per run; runs with one label are averaged")
    parser.add_argument("--out", default=None, help="also write the table of run dirs to this file")
    args = parser.parse_args()
    if len(args.runs) == 1 and is_sweep_dir(args.runs[0]):
        csv_path, md_path = write_summary(args.runs[0])
        with open(md_path) as f:
            print(f.read(), end="")
        print(f"wrote {md_path} and {csv_path}")
        return
    labels = args.labels or [os.path.basename(os.path.normpath(run)) for run in args.runs]
    if len(labels) != len(args.runs):
        raise SystemExit(f"--labels needs one label per run ({len(args.runs)}), got {len(labels)}.")
    try:
        table = summary_table(args.runs, labels)
    except FileNotFoundError as error:
        raise SystemExit(str(error))
    print(table, end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
