"""Compare settings: the mean and spread over seeds of their curves, from the runs' metrics.jsonl.

    python script/plot.py log/multirun/<date>_<time>                       # a sweep dir: all its jobs' runs
    python script/plot.py RUN_A_SEED0 RUN_A_SEED1 RUN_B_SEED0 --out curves.png
    python script/plot.py SWEEP_A SWEEP_B --keys eval/episode_return train/pg_loss --x step
    python script/plot.py RUNS... --facet env_name --label-by algorithm_name policy_name --keys eval/episode_return --x env_steps

Runs are grouped by label, one line each: the run's name (`name` in its config.yaml: task, algorithm,
sizes) followed, for the jobs of a sweep, by the overrides that differ between its jobs other than
seed; or --labels, one per run; or --label-by, the values of those config.yaml keys. A line is the
mean over the group's runs at the iterations they all logged; the shaded band is their min-max range;
the legend gives the number of runs (n).

Default panels: the evaluation return (the success rate instead, when the runs log one) against each
x-axis, then train/loss, train/pg_loss and train/value_loss against the first x-axis; keys no run
logged are left out. X-axes: environment steps (`env_steps`) and wall time in minutes (`wall_time`)
reached after that row's iteration, read from the training rows (0 before the first iteration), or
the iteration (`step`); an x-axis no run logs (env steps in pre-training) becomes the iteration.

--facet KEY draws those panels once per value of KEY in the runs' config.yaml (e.g. `env_name`: one
panel per task, as the paper's figures), a label keeping its colour in every facet.

A path may also be an evaluations CSV (`script/summarize.py --evals-csv`, such as those under docs/): each of
its runs is drawn from its evaluations alone (return against env steps and wall time), labelled as in the CSV
unless --labels says otherwise; --label-by and --facet need run dirs.

    python script/plot.py docs/dsrl_vs_dppo_hopper_evals.csv RUN_DIRS... --labels ... --x env_steps
"""

import argparse
import os
import sys

import numpy as np
from matplotlib.figure import Figure

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dppo.sweep import (  # noqa: E402
    CSV_RUN,
    X_KEYS,
    config_label,
    config_value,
    evals_csv_runs,
    is_sweep_dir,
    job_labels,
    run_rows,
    saved_config,
    success_key,
    sweep_jobs,
    x_by_step,
)

RETURN_KEY = "eval/episode_return"
LOSS_KEYS = ["train/loss", "train/pg_loss", "train/value_loss"]
DEFAULT_X = ["env_steps", "wall_time"]
X_LABELS = {"step": "iteration", "env_steps": "environment steps", "wall_time": "wall time (min)"}
SPREAD = "min-max"


def expand_runs(paths: list[str]) -> tuple[list[str], list[str]]:
    """Runs and their labels from run dirs, sweep dirs (the run of each of its jobs) and evaluations CSVs (each of
    their runs, as "<csv path>::<run>", labelled as in the CSV)."""
    runs, labels = [], []
    for path in paths:
        if path.endswith(".csv"):
            csv_runs, csv_labels = evals_csv_runs(path)
            runs += csv_runs
            labels += csv_labels
        elif is_sweep_dir(path):
            jobs = sweep_jobs(path)
            runs += [job["run_dir"] for job in jobs]
            labels += job_labels(jobs)
        else:
            runs.append(path)
            labels.append(saved_config(path).get("name", os.path.basename(os.path.normpath(path))))
    return runs, labels


def env_steps_by_step(rows: list[dict]) -> dict[int, float]:
    """Environment steps taken after each iteration, from the training rows; 0 before the first."""
    return x_by_step(rows, "env_steps")


def group_curve(runs_rows: list[list[dict]], key: str, x: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x, mean, min, max of `key` over the runs of one group, at the iterations every run logged it."""
    per_run = []
    for rows in runs_rows:
        x_of = x_by_step(rows, x)
        per_run.append({row["step"]: (x_of[row["step"]], row[key]) for row in rows if key in row and row["step"] in x_of})
    steps = sorted(set.intersection(*(set(points) for points in per_run)))
    if not steps:
        return np.array([]), np.array([]), np.array([]), np.array([])
    xs = np.array([[points[step][0] for step in steps] for points in per_run])
    ys = np.array([[points[step][1] for step in steps] for points in per_run])
    return xs.mean(axis=0), ys.mean(axis=0), ys.min(axis=0), ys.max(axis=0)


def default_keys(all_rows: list[list[dict]]) -> list[str]:
    """The evaluation success rate if any run logs one, else the evaluation return; then the losses."""
    success = sorted(filter(None, (success_key(rows) for rows in all_rows)))
    return [success[0] if success else RETURN_KEY, *LOSS_KEYS]


def x_axes(all_rows: list[list[dict]], x: list[str]) -> list[str]:
    """The requested x-axes, each one no run logs replaced by the iteration (without repeats)."""
    logged = [axis if axis == "step" or any(X_KEYS[axis] in row for rows in all_rows for row in rows) else "step"
              for axis in x]
    return list(dict.fromkeys(logged))


def plot_runs(runs: list[str], labels: list[str], keys: list[str] | None = None, x: str | list[str] = DEFAULT_X,
              facets: list[str] | None = None) -> Figure:
    """One panel per (key, x-axis) with data, losses after the other keys and against the first x-axis only;
    one line per label: the mean of its runs, their min-max range shaded. With `facets` (one value per run),
    those panels are drawn once per facet value, each from that value's runs only."""
    facets = facets if facets is not None else [""] * len(runs)
    by_facet: dict[str, dict[str, list[list[dict]]]] = {}
    for run, label, facet in zip(runs, labels, facets):
        by_facet.setdefault(facet, {}).setdefault(label, []).append(run_rows(run))
    return plot_rows(by_facet, keys, x)


def plot_rows(by_facet: dict[str, dict[str, list[list[dict]]]], keys: list[str] | None = None,
              x: str | list[str] = DEFAULT_X) -> Figure:
    """`plot_runs` on metrics rows already read (each run's metrics.jsonl rows), grouped by facet ("" for none), then
    by label."""
    labels = [label for groups in by_facet.values() for label in groups]
    all_rows = [rows for groups in by_facet.values() for runs_rows in groups.values() for rows in runs_rows]
    keys = keys or default_keys(all_rows)
    axes_x = x_axes(all_rows, [x] if isinstance(x, str) else list(x))
    curves = [key for key in keys if "loss" not in key]
    panels = [(axis, key) for key in curves for axis in axes_x] + [(axes_x[0], key) for key in keys if key not in curves]
    panels = [(axis, key) for axis, key in panels if any(key in row for rows in all_rows for row in rows)]
    panels = [(facet, axis, key) for facet in by_facet for axis, key in panels]
    per_facet = len(panels) // len(by_facet)
    n_cols = max(1, min(len(panels), 3) if per_facet == 1 or len(by_facet) == 1 else per_facet)
    n_rows = max(1, (len(panels) + n_cols - 1) // n_cols)
    figure = Figure(figsize=(4.5 * n_cols, 3.2 * n_rows + 0.4))
    axes = figure.subplots(n_rows, n_cols, squeeze=False).ravel()
    colours = {label: f"C{i % 10}" for i, label in enumerate(dict.fromkeys(labels))}
    for ax, (facet, axis, key) in zip(axes, panels):
        for label, runs_rows in by_facet[facet].items():
            xs, mean, low, high = group_curve(runs_rows, key, axis)
            if len(xs):
                ax.plot(xs, mean, color=colours[label], marker="." if len(xs) < 30 else None,
                        label=f"{label} (n={len(runs_rows)})")
                if len(runs_rows) > 1:
                    ax.fill_between(xs, low, high, color=colours[label], alpha=0.2)
        ax.set_title(f"{facet}: {key}" if facet else key)
        ax.set_xlabel(X_LABELS[axis])
        ax.legend(fontsize=7)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    figure.suptitle(f"mean over the runs of each label; shaded: {SPREAD} range", fontsize=9)
    figure.tight_layout()
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="run directories (holding metrics.jsonl), sweep directories and/or "
                                                 "evaluations CSVs (summarize.py --evals-csv)")
    parser.add_argument("--keys", nargs="+", default=None, help="metrics to plot (default: see above)")
    parser.add_argument("--x", nargs="+", choices=list(X_LABELS), default=DEFAULT_X)
    parser.add_argument("--labels", nargs="+", default=None,
                        help="label per run, after sweep dirs are expanded; runs sharing a label are averaged")
    parser.add_argument("--label-by", nargs="+", default=None, metavar="KEY",
                        help="label each run by these keys of its config.yaml (e.g. algorithm_name policy_name)")
    parser.add_argument("--facet", default=None, metavar="KEY",
                        help="one set of panels per value of this config.yaml key (e.g. env_name)")
    parser.add_argument("--out", default=None, help="PNG path (default: curves.png in the sweep dir if one is given, "
                                                    "else in the current directory)")
    args = parser.parse_args()
    try:
        runs, labels = expand_runs(args.paths)
        if args.labels is not None:
            if len(args.labels) != len(runs):
                raise SystemExit(f"--labels needs one label per run ({len(runs)} after expanding sweeps), "
                                 f"got {len(args.labels)}.")
            labels = args.labels
        if (args.label_by or args.facet) and any(CSV_RUN in run for run in runs):
            raise SystemExit("--label-by and --facet read the runs' config.yaml, which an evaluations CSV lacks: "
                             "label its runs with --labels, or pass run dirs.")
        if args.label_by is not None:
            labels = [config_label(run, args.label_by) for run in runs]
        facets = [str(config_value(run, args.facet)) for run in runs] if args.facet else None
        figure = plot_runs(runs, labels, args.keys, args.x, facets)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(str(error))
    single_sweep = len(args.paths) == 1 and is_sweep_dir(args.paths[0])
    out = args.out or os.path.join(args.paths[0] if single_sweep else ".", "curves.png")
    figure.savefig(out, dpi=100)
    print(f"wrote {out}: {len(set(labels))} settings from {len(runs)} runs")


if __name__ == "__main__":
    main()
