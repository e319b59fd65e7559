"""Summary tables: of a sweep (one row per job), or of run dirs (runs sharing a label averaged).

    python script/summarize.py log/multirun/<date>_<time>        # writes summary.csv and summary.md there
    python script/summarize.py RUN [RUN ...] [--labels A A B B] [--out summary.md]

A sweep's table is the one its SweepSummary callback writes when the sweep ends (dppo/sweep.py):
task, config, seed, final and best eval return, final success rate and loss when logged, env steps,
wall time and run dir of every job; run it again after a failed job stopped the sweep early.

    python script/summarize.py RUN [RUN ...] --label-by env_name algorithm_name policy_name --evals-csv evals.csv

Run dirs sharing a label (--labels, one per run, or --label-by, keys of the runs' config.yaml) are one
row: each figure is the mean over its runs, +- their standard deviation (ddof 1) when there are
several, with the individual runs' values in parentheses. `final` is the last
`eval/episode_return`, `best` the highest one, `initial` the first (the pre-trained policy); env
steps and wall time are those of the last training row; env steps/s is the mean over iterations of
the rollout phase's `train/env_steps_per_s`.
When every run's task file (cfg/task/<env_name>.yaml) gives D4RL's reference returns
(`demo.random_return`, `demo.reference_return`), the final eval return is also given as D4RL's
normalized score, 100 (R - random) / (reference - random). When every run logs an evaluation success
rate (manipulation tasks), the table gives the initial, final and best success rate instead of returns.
--evals-csv writes every evaluation of every run (label, run, seed, iteration, env steps, wall time,
return and its std over episodes).

    python script/summarize.py RUN [RUN ...] --labels ... --at-env-steps 150000 300000 --reach 2000

compares runs at equal sample budgets: `--at-env-steps N` adds a column "eval at N env steps", the last evaluation
made within N env steps (success rate on manipulation tasks; "not reached" for a run that stopped before its next
iteration would have passed N), and `--reach R` a column "env steps to eval R", the env steps reached before the
first evaluation at or above R; a run that never reached R counts as "not reached" (the cell then lists each run's
value, without a mean).

An evaluations CSV (written by --evals-csv, such as those under docs/) may stand for its runs beside run dirs,
labelled as in it unless --labels says otherwise: their figures come from their evaluations alone (env steps and
wall time of the last one; no rollout speed, so that column is left out).
"""

import argparse
import csv
import os
import sys

import numpy as np
from omegaconf import OmegaConf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dppo.sweep import (  # noqa: E402
    CSV_RUN,
    EVAL_COLUMNS,
    config_label,
    csv_run,
    evals_csv_runs,
    is_sweep_dir,
    run_name,
    run_rows,
    run_summary,
    saved_config,
    success_key,
    write_summary,
    x_by_step,
)

COLUMNS = ("initial eval return", "final eval return", "best eval return", "env steps", "wall time (min)", "rollout env steps/s")
SCORE_COLUMN = "final D4RL score"
SUCCESS_COLUMNS = ("initial eval success", "final eval success", "best eval success")
TASK_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cfg", "task")


def format_cell(values: list[float | None], digits: int = 1) -> str:
    """`mean`, or `mean +- std (v1, v2, ...)` over several runs (sample std, ddof 1), with `digits` decimals; where
    a run has no value (None: a budget figure it never reached) only the runs' values, with "not reached"."""
    if any(value is None for value in values):
        shown = ["not reached" if value is None else f"{value:,.{digits}f}" for value in values]
        return shown[0] if len(values) == 1 else f"{len(values) - shown.count('not reached')} of {len(values)}: " \
            f"{', '.join(shown)}"
    mean = float(np.mean(values))
    if len(values) == 1:
        return f"{mean:,.{digits}f}"
    std = float(np.std(values, ddof=1))
    return f"{mean:,.{digits}f} ± {std:,.{digits}f} ({', '.join(f'{v:,.{digits}f}' for v in values)})"


def d4rl_references(run: str) -> tuple[float, float] | None:
    """(random, reference) returns of D4RL for the run's task, from its task file; None if it gives none."""
    path = os.path.join(TASK_DIR, f"{saved_config(run).get('env_name')}.yaml")
    if not os.path.isfile(path):
        return None
    demo = OmegaConf.to_container(OmegaConf.load(path)).get("demo", {})
    if "random_return" not in demo or "reference_return" not in demo:
        return None
    return float(demo["random_return"]), float(demo["reference_return"])


def d4rl_score(episode_return: float, references: tuple[float, float]) -> float:
    """D4RL's normalized score: 0 for the random policy, 100 for the expert."""
    random_return, reference_return = references
    return 100.0 * (episode_return - random_return) / (reference_return - random_return)


def finetuning_summary(run: str, rows: list[dict]) -> dict:
    """The COLUMNS of one fine-tuning run (its `run_rows`), and its SUCCESS_COLUMNS when it logs a success rate."""
    summary = run_summary(rows)
    if any(summary[column] is None for column in COLUMNS[:-1]):  # an evaluations CSV has no rollout speed
        raise SystemExit(f"{run} has no evaluation or no training row yet: summarize finished fine-tuning runs.")
    key = success_key(rows)
    if key is not None:
        rates = [row[key] for row in rows if key in row]
        summary.update(zip(SUCCESS_COLUMNS, (rates[0], rates[-1], max(rates))))
    return summary


def budget_figures(rows: list[dict], at_env_steps: list[int], reach: list[float]) -> dict:
    """A run's (its `run_rows`) last evaluation within each budget of `at_env_steps` (None: the run stopped short of
    the budget, its next iteration would not have passed it) and the env steps reached before its first evaluation
    >= each target of `reach` (None: never); on the success rate when the run logs one."""
    key = success_key(rows) or "eval/episode_return"
    env_steps = x_by_step(rows, "env_steps")
    evals = [(env_steps[row["step"]], row[key]) for row in rows if key in row]
    progress = sorted(env_steps.values())
    next_iteration_ends = progress[-1] + (progress[-1] - progress[-2] if len(progress) > 1 else 0.0)
    figures = {}
    for budget in at_env_steps:
        within = [value for steps, value in evals if steps <= budget]
        figures[f"eval at {budget:,} env steps"] = within[-1] if within and next_iteration_ends > budget else None
    for target in reach:
        reached = [steps for steps, value in evals if value >= target]
        figures[f"env steps to eval {target:,g}"] = reached[0] if reached else None
    return figures


def summary_table(runs: list[str], labels: list[str], at_env_steps: list[int] = (), reach: list[float] = ()) -> str:
    """Markdown table, one row per label; a D4RL score column when every run's task has references; the eval
    success rate (2 decimals) instead of the return when every run logs one (manipulation tasks); the budget
    columns of `budget_figures` after the final eval."""
    references = [d4rl_references(run) for run in runs]
    runs_rows = [run_rows(run) for run in runs]
    summaries = [finetuning_summary(run, rows) for run, rows in zip(runs, runs_rows)]
    columns = [column for column in COLUMNS if all(summary[column] is not None for summary in summaries)]
    success = all(SUCCESS_COLUMNS[0] in summary for summary in summaries)
    if success:
        columns = [*SUCCESS_COLUMNS, *columns[3:]]
    elif all(references):
        columns.insert(2, SCORE_COLUMN)
        for summary, reference in zip(summaries, references):
            summary[SCORE_COLUMN] = d4rl_score(summary["final eval return"], reference)
    for rows, summary in zip(runs_rows, summaries):
        summary.update(budget_figures(rows, at_env_steps, reach))
    budget_columns = [key for key in summaries[0] if key.startswith(("eval at ", "env steps to "))]
    columns[2:2] = budget_columns
    groups: dict[str, list[dict]] = {}
    for summary, label in zip(summaries, labels):
        groups.setdefault(label, []).append(summary)
    lines = ["| run | seeds | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for label, summaries in groups.items():
        digits = {column: 2 if column in SUCCESS_COLUMNS or (success and column.startswith("eval at ")) else
                  0 if column.startswith("env steps to ") else 1 for column in columns}
        cells = [format_cell([s[column] for s in summaries], digits[column]) for column in columns]
        lines.append(f"| {label} | {len(summaries)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_seed(run: str) -> int | None:
    """The seed of a run dir (its config.yaml) or of a run of an evaluations CSV (its seed column)."""
    evals = csv_run(run)
    return evals.seed if evals else saved_config(run).get("seed")


def write_evals_csv(runs: list[str], labels: list[str], path: str) -> None:
    """Every evaluation of every run, with the env steps and wall time reached before it, as a CSV. Every run is
    read before `path` is opened, so the CSV may replace one it was read from."""
    lines = []
    for run, label in zip(runs, labels):
        rows = run_rows(run)
        env_steps, minutes = x_by_step(rows, "env_steps"), x_by_step(rows, "wall_time")
        seed = run_seed(run)
        lines += [[label, run_name(run), seed, row["step"], env_steps.get(row["step"]), minutes.get(row["step"]),
                   row["eval/episode_return"], row.get("eval/episode_return_std"), row.get("eval/n_episodes")]
                  for row in rows if "eval/episode_return" in row]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(EVAL_COLUMNS)
        writer.writerows(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="one sweep directory, or run directories holding metrics.jsonl")
    parser.add_argument("--labels", nargs="+", default=None, help="row label per run; runs with one label are averaged")
    parser.add_argument("--label-by", nargs="+", default=None, metavar="KEY",
                        help="label each run by these keys of its config.yaml (e.g. env_name algorithm_name)")
    parser.add_argument("--out", default=None, help="also write the table of run dirs to this file")
    parser.add_argument("--evals-csv", default=None, help="also write every evaluation of the runs to this CSV")
    parser.add_argument("--at-env-steps", nargs="+", type=int, default=[], metavar="N",
                        help="also each run's last evaluation within N env steps")
    parser.add_argument("--reach", nargs="+", type=float, default=[], metavar="R",
                        help="also the env steps each run took to an evaluation >= R")
    args = parser.parse_args()
    if len(args.runs) == 1 and is_sweep_dir(args.runs[0]):
        csv_path, md_path = write_summary(args.runs[0])
        with open(md_path) as f:
            print(f.read(), end="")
        print(f"wrote {md_path} and {csv_path}")
        return
    try:
        runs, labels = [], []
        for path in args.runs:  # an evaluations CSV stands for its runs, labelled as in it
            csv_runs, csv_labels = evals_csv_runs(path) if path.endswith(".csv") else ([path], [None])
            runs += csv_runs
            labels += [label or os.path.basename(os.path.normpath(run)) for run, label in zip(csv_runs, csv_labels)]
        if args.labels is not None:
            labels = args.labels
        if args.label_by is not None:
            if any(CSV_RUN in run for run in runs):
                raise SystemExit("--label-by reads the runs' config.yaml, which an evaluations CSV lacks: use --labels.")
            labels = [config_label(run, args.label_by) for run in runs]
        if len(labels) != len(runs):
            raise SystemExit(f"--labels needs one label per run ({len(runs)}, a CSV's runs each), got {len(labels)}.")
        table = summary_table(runs, labels, args.at_env_steps, args.reach)
        if args.evals_csv:
            write_evals_csv(runs, labels, args.evals_csv)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(str(error))
    print(table, end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
