"""Hydra sweeps: where each job's run went, and the summary table of a finished sweep.

A multirun (`--multirun`, any launcher) gives every job a subdirectory of the sweep dir
(`hydra.sweep.dir/<job number>`); the job's run itself goes to its own `logdir` as in a single
run. Each job writes `job.json` into its subdirectory: the run dir, the config name, the job's
overrides and the torch threads it used. From those, `write_summary` makes `summary.csv` and
`summary.md` in the sweep dir; the `SweepSummary` callback (hydra.callbacks in cfg/common.yaml)
calls it when the sweep ends, and `python script/summarize.py <sweep dir>` does the same later
(e.g. after a job failed, which stops Hydra before its callback).
"""

import csv
import json
import os
import typing

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

JOB_FILE = "job.json"
SUMMARY_COLUMNS = ("job", "task", "config", "seed", "initial eval return", "final eval return", "best eval return",
                   "final success rate", "final loss", "env steps", "wall time (min)", "run dir")
SECONDS_PER_MINUTE = 60.0
X_KEYS = {"env_steps": "train/env_steps", "wall_time": "train/wall_time"}  # an x-axis of curves and its metric


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def record_job(run_dir: str, threads: int | None) -> None:
    """In a multirun job, write job.json into the job's subdirectory of the sweep dir (else do nothing)."""
    if not in_multirun():
        return
    hydra_cfg = HydraConfig.get()
    job = {
        "num": hydra_cfg.job.num,
        "config_name": hydra_cfg.job.config_name,
        "overrides": list(hydra_cfg.overrides.task),
        "run_dir": os.path.abspath(run_dir),
        "threads": threads,
    }
    os.makedirs(hydra_cfg.runtime.output_dir, exist_ok=True)
    with open(os.path.join(hydra_cfg.runtime.output_dir, JOB_FILE), "w") as f:
        json.dump(job, f, indent=2)


def is_sweep_dir(path: str) -> bool:
    """Whether `path` is a sweep dir: Hydra's multirun.yaml or a job.json in a subdirectory."""
    if os.path.isfile(os.path.join(path, "multirun.yaml")):
        return True
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, entry, JOB_FILE)) for entry in os.listdir(path))


def sweep_jobs(sweep_dir: str) -> list[dict]:
    """The job.json of every job of a sweep, by job number."""
    jobs = []
    for entry in os.listdir(sweep_dir):
        path = os.path.join(sweep_dir, entry, JOB_FILE)
        if os.path.isfile(path):
            with open(path) as f:
                jobs.append(json.load(f))
    if not jobs:
        raise FileNotFoundError(f"No {JOB_FILE} under {sweep_dir}: pass the sweep dir of a `--multirun` of script/run.py.")
    return sorted(jobs, key=lambda job: job["num"])


def job_labels(jobs: list[dict]) -> list[str]:
    """A label per job that is the same for the seeds of one setting: the run's name (task, algorithm, sizes)
    followed by the overrides that differ between the sweep's jobs, seed and task left out."""
    override_sets = [set(job["overrides"]) for job in jobs]
    shared = set.intersection(*override_sets) if override_sets else set()
    labels = []
    for job in jobs:
        varying = [o for o in job["overrides"] if o not in shared and not o.startswith(("seed=", "task="))]
        labels.append(" ".join([saved_config(job["run_dir"]).get("name", job["config_name"]), *varying]))
    return labels


def read_metrics(run_dir: str) -> list[dict]:
    """The rows of a run's metrics.jsonl (see dppo/logging.py)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: pass run directories written by script/run.py.")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


EVAL_COLUMNS = ("label", "run", "seed", "iteration", "env steps", "wall time (min)", "eval return", "eval return std",
                "episodes")  # an evaluations CSV (script/summarize.py --evals-csv): one row per evaluation of a run


CSV_RUN = "::"  # a run of an evaluations CSV, as script/plot.py and script/summarize.py name it: "<csv path>::<run>"


class EvalsRun(typing.NamedTuple):
    """One run of an evaluations CSV: its label and seed there, and its evaluations as metrics rows."""

    label: str
    seed: int | None
    rows: list[dict]


def read_evals_csv(path: str) -> dict[str, EvalsRun]:
    """The runs of an evaluations CSV by their `run` column, each evaluation one row with the metrics of a run dir's
    rows (`step`, `eval/episode_return`, `eval/episode_return_std`, and the env steps and wall seconds reached,
    `train/env_steps`, `train/wall_time`), so that committed CSVs draw and tabulate as their runs did."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != EVAL_COLUMNS:
            raise ValueError(f"{path} is not an evaluations CSV of script/summarize.py --evals-csv: its columns are "
                             f"{reader.fieldnames}, expected {list(EVAL_COLUMNS)}.")
        runs: dict[str, EvalsRun] = {}
        for line in reader:
            row = {"step": int(line["iteration"]), "eval/episode_return": float(line["eval return"])}
            for column, key, scale in (("eval return std", "eval/episode_return_std", 1.0),
                                       ("env steps", "train/env_steps", 1.0),
                                       ("wall time (min)", "train/wall_time", SECONDS_PER_MINUTE)):
                if line[column]:  # empty where the run logged none
                    row[key] = float(line[column]) * scale
            seed = int(line["seed"]) if line["seed"] else None
            runs.setdefault(line["run"], EvalsRun(line["label"], seed, [])).rows.append(row)
    return runs


def evals_csv_runs(path: str) -> tuple[list[str], list[str]]:
    """The runs of an evaluations CSV, named "<path>::<run>", and their labels in it."""
    runs = read_evals_csv(path)
    return [f"{path}{CSV_RUN}{run}" for run in runs], [run.label for run in runs.values()]


def csv_run(run: str) -> EvalsRun | None:
    """The evaluations of a run named "<csv path>::<run>"; None for a run dir."""
    if CSV_RUN not in run:
        return None
    path, name = run.split(CSV_RUN, 1)
    return read_evals_csv(path)[name]


def run_name(run: str) -> str:
    """How an evaluations CSV names a run: a CSV's run by its own name there, a run dir by its path."""
    return run.split(CSV_RUN, 1)[1] if CSV_RUN in run else os.path.normpath(run)


def run_rows(run: str) -> list[dict]:
    """The metrics rows of a run: its metrics.jsonl, or for "<csv path>::<run>" its evaluations in that CSV."""
    evals = csv_run(run)
    return evals.rows if evals else read_metrics(run)


def saved_config(run_dir: str) -> dict:
    """The resolved config.yaml of a run, or {} when it has none."""
    path = os.path.join(run_dir, "config.yaml")
    return OmegaConf.to_container(OmegaConf.load(path)) if os.path.isfile(path) else {}


def config_value(run_dir: str, key: str):
    """The value of a dotted key (`env_name`, `train.n_envs`) in a run's config.yaml."""
    value = saved_config(run_dir)
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise SystemExit(f"{run_dir}/config.yaml has no `{key}`: pass a key of the runs' resolved config.")
        value = value[part]
    return value


def config_label(run_dir: str, keys: list[str]) -> str:
    """A run's label from keys of its config.yaml, their values joined by spaces (e.g. 'hopper ppo diffusion')."""
    return " ".join(str(config_value(run_dir, key)) for key in keys)


def x_by_step(rows: list[dict], x: str) -> dict[int, float]:
    """The x value of every iteration: the iteration itself (`step`), or the env steps / wall minutes reached after
    it (`env_steps` / `wall_time`, read from the training rows; 0 at step 0)."""
    if x == "step":
        return {row["step"]: float(row["step"]) for row in rows}
    scale = SECONDS_PER_MINUTE if x == "wall_time" else 1.0
    values = {0: 0.0}
    values.update({row["step"]: row[X_KEYS[x]] / scale for row in rows if X_KEYS[x] in row})
    return values


def last(rows: list[dict], key: str) -> float | None:
    values = [row[key] for row in rows if key in row]
    return values[-1] if values else None


def success_key(rows: list[dict]) -> str | None:
    """The evaluation success-rate metric of a run, if it logs one (robot manipulation tasks)."""
    keys = sorted({key for row in rows for key in row if key.startswith("eval/") and key.endswith("success_rate")})
    return keys[0] if keys else None


def run_summary(rows: list[dict]) -> dict:
    """Initial (the first evaluation: the pre-trained policy), final and best eval return, final success
    rate and loss, env steps, wall time (min) and mean rollout env steps/s of one run; None where the run
    never logged the metric (e.g. env steps in pre-training)."""
    evals = [row["eval/episode_return"] for row in rows if "eval/episode_return" in row]
    speeds = [row["train/env_steps_per_s"] for row in rows if "train/env_steps_per_s" in row]
    wall_time = last(rows, "train/wall_time")
    success = success_key(rows)
    return {
        "initial eval return": evals[0] if evals else None,
        "final eval return": evals[-1] if evals else None,
        "best eval return": max(evals) if evals else None,
        "final success rate": last(rows, success) if success else None,
        "final loss": last(rows, "train/loss"),
        "env steps": last(rows, "train/env_steps"),
        "wall time (min)": wall_time / SECONDS_PER_MINUTE if wall_time is not None else None,
        "rollout env steps/s": sum(speeds) / len(speeds) if speeds else None,
    }


def job_row(job: dict) -> dict:
    """One row of the sweep summary; a job whose run wrote no metrics has only its identity and run dir."""
    config = saved_config(job["run_dir"])
    row = {"job": job["num"], "task": config.get("env_name"), "config": job["config_name"], "seed": config.get("seed"),
           "run dir": job["run_dir"]}
    if os.path.isfile(os.path.join(job["run_dir"], "metrics.jsonl")):
        row.update(run_summary(read_metrics(job["run_dir"])))
    return {column: row.get(column) for column in SUMMARY_COLUMNS}


def format_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return f"{value:,.0f}"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4g}"
    return str(value)


def write_summary(sweep_dir: str) -> tuple[str, str]:
    """Write summary.csv (plain numbers) and summary.md (a table) into the sweep dir; returns their paths."""
    rows = [job_row(job) for job in sweep_jobs(sweep_dir)]
    csv_path, md_path = os.path.join(sweep_dir, "summary.csv"), os.path.join(sweep_dir, "summary.md")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        writer.writerows({column: "" if value is None else value for column, value in row.items()} for row in rows)
    lines = ["| " + " | ".join(SUMMARY_COLUMNS) + " |", "|---" * len(SUMMARY_COLUMNS) + "|"]
    lines += ["| " + " | ".join(format_value(row[column]) for column in SUMMARY_COLUMNS) + " |" for row in rows]
    with open(md_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return csv_path, md_path


class SweepSummary(Callback):
    """Writes the sweep summary when a multirun ends, whatever the launcher (basic, joblib, submitit)."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        _, md_path = write_summary(config.hydra.sweep.dir)
        with open(md_path) as f:
            print(f.read() + f"Sweep summary: {md_path} (and summary.csv)", flush=True)
