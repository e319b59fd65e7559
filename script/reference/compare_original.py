"""Compare whole fine-tuning runs of the original DPPO code (run_original.py) and of this project (script/run.py).

    python script/reference/compare_original.py run --algorithm ppo --task hopper --seeds 0 1 2 \
        --original /tmp/dppo-orig --runs /work/runs/orig_compare
    python script/reference/compare_original.py report --algorithm ppo --task hopper --runs /work/runs/orig_compare \
        --out docs/orig_compare

Algorithms: ppo, rwr, awr, dql, idql on the diffusion policy (this project's ft_<algorithm>_diffusion_mlp), and
gaussian, PPO on the Gaussian policy (ft_ppo_gaussian_mlp; the original's side: its TrainPPOGaussianAgent with
script/reference/original_ft_ppo_gaussian_mlp.yaml, see run_original.py for what it does differently).

`run` trains, for each seed in turn, the original (<runs>/original/<algorithm>_<task>/seed<k>) and then this project
(<runs>/project/<algorithm>_<task>/seed<k>, `resume=auto`) on the same task, checkpoint, seed and budget (--n-envs x
--n-steps chunk-steps per training iteration, --n-train-itr training iterations, an evaluation before the first and
after every --val-freq), one process at a time on --threads torch threads, both with the envs in the main process and
in float32. A finished run is skipped, so the same command continues an interrupted comparison (the original's run
restarts from its beginning, this project's resumes).

`report --also NAME=RUNS` draws more of this project's runs beside both codes, a bisecting step (something of the
original's put back into this project): RUNS/project/<algorithm>_<task>/seed<k> for every seed of the comparison, in
the figure and the table as NAME, their CSVs <out>/<algorithm>_<task>_NAME_seed<k>.csv.

`report` writes, for every finished run, <out>/<algorithm>_<task>_<side>_seed<k>.csv: one row per training iteration
completed (`step`; 0 = before training) in this project's metric names; over the seeds both codes finished, the figure
<out>/<algorithm>_<task>.png (each metric against training iterations, mean and min-max over seeds per side) and the
table <out>/<algorithm>_<task>.md (evaluation before training, final and best, per-iteration wall times). It first
checks that this project's policy and the original's loaded checkpoint give the same deterministic and exploring samples
on the same observations and noise (probe_samples.pt of each original run; for gaussian the deterministic sample is
the mean, which the original's evaluation perturbs by 1e-4-scale noise).

Counted differently by the two codes (the table repeats it): the original's agents count the return of the episodes
that start and end within one iteration (an evaluation: several per env when they fall), this project every episode
that ends in a training iteration, whole, and each env's first episode in an evaluation; both sides' CSVs and the
figure use this project's count (run_original.py records it from the original's envs), the original's own is kept as
*_original. The original logs the losses of an iteration's last gradient step (clipfrac: the mean), this project the
mean over its steps.
"""

import argparse
import csv
import os
import re
import subprocess
import sys

import numpy as np
import torch

REFERENCE_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(REFERENCE_DIR))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "script"))

from original_weights import PROBE_ATOL, PROBE_SEED  # noqa: E402
from plot import plot_rows  # noqa: E402
from run_original import original_config_path  # noqa: E402

from dppo.sweep import read_metrics  # noqa: E402

SIDES = ("original", "project")
RETURN_KEYS = ["train/episode_return", "eval/episode_return"]
PPO_KEYS = ["train/loss", "train/pg_loss", "train/value_loss", "train/approx_kl", "train/clipfrac",
            "train/explained_variance"]
ALGORITHM_KEYS = {  # each algorithm's own losses, in this project's names
    "ppo": PPO_KEYS,
    "gaussian": PPO_KEYS,
    "rwr": ["train/loss"],
    "awr": ["train/actor_loss", "train/critic_loss"],
    "dql": ["train/actor_loss", "train/critic_loss"],
    "idql": ["train/actor_loss", "train/critic_loss"],
}
ORIGINAL_NAMES = {  # what the original logs -> this project's name for it (its own returns: *_original)
    "avg episode reward - train": "train/episode_return_original", "num episode - train": "train/n_episodes_original",
    "avg episode reward - eval": "eval/episode_return_original", "num episode - eval": "eval/n_episodes_original",
    "total env step": "train/env_steps", "loss": "train/loss", "pg loss": "train/pg_loss",
    "value loss": "train/value_loss", "approx kl": "train/approx_kl", "clipfrac": "train/clipfrac",
    "explained variance": "train/explained_variance", "loss - actor": "train/actor_loss",
    "loss - critic": "train/critic_loss",
}
PROJECT_SUMS = {"idql": {"train/critic_loss": ("train/q_loss", "train/v_loss")}}  # the original logs their sum
PROJECT_CONFIGS = {"gaussian": "ft_ppo_gaussian_mlp"}  # the others: ft_<algorithm>_diffusion_mlp
TIME_KEYS = {"train": "train/iteration_time", "eval": "eval/eval_time"}
RECORDED_EPISODES = {"train": "ended", "eval": "first"}  # run_original.py's returns counted as this project counts


def project_config_name(algorithm: str) -> str:
    """This project's fine-tuning config of an algorithm of the comparison."""
    return PROJECT_CONFIGS.get(algorithm, f"ft_{algorithm}_diffusion_mlp")


def run_dir(runs: str, side: str, algorithm: str, task: str, seed: int) -> str:
    return os.path.join(runs, side, f"{algorithm}_{task}", f"seed{seed}")


# ---- one per-iteration representation for both codes ----------------------------------------------------------
def original_rows(path: str) -> list[dict]:
    """The original's metrics.csv (one row per iteration of its own, evaluations instead of training in some) ->
    rows keyed by training iterations completed (`step`) in this project's names. Returns are those counted as this
    project counts them (run_original.py records them from the env: every episode that ends in a training iteration,
    each env's first episode in an evaluation); the original's own count (only episodes that start and end within
    one iteration) is kept as *_original, left out where no episode counted (the original logs 0)."""
    with open(os.path.join(path, "metrics.csv")) as f:
        logged = [{key: float(value) for key, value in row.items() if value != ""} for row in csv.DictReader(f)]
    rows, n_trained = [], 0
    for row in logged:
        kind = "eval" if "avg episode reward - eval" in row else "train"
        n_trained += kind == "train"
        counted = RECORDED_EPISODES[kind]
        converted = {"step": n_trained, TIME_KEYS[kind]: row["wall_time"],
                     f"{kind}/n_episodes": row[f"n_episodes_{counted}"]}
        if f"episode_return_{counted}" in row:
            converted[f"{kind}/episode_return"] = row[f"episode_return_{counted}"]
        converted.update({ORIGINAL_NAMES[key]: value for key, value in row.items() if key in ORIGINAL_NAMES})
        if converted.get(f"{kind}/n_episodes_original") == 0:
            del converted[f"{kind}/episode_return_original"]
        rows.append(converted)
    return rows


def project_rows(path: str, algorithm: str) -> list[dict]:
    """This project's metrics.jsonl rows, with each iteration's time (rollout + update) and the sums the original
    logs instead of their terms."""
    rows = read_metrics(path)
    for row in rows:
        if "train/rollout_time" in row:
            row[TIME_KEYS["train"]] = row["train/rollout_time"] + row["train/update_time"]
        for total, terms in PROJECT_SUMS.get(algorithm, {}).items():
            if all(term in row for term in terms):
                row[total] = sum(row[term] for term in terms)
    return rows


def is_finished(side: str, path: str, n_train_itr: int) -> bool:
    """Whether the run logged its evaluation after the last training iteration."""
    metrics = os.path.join(path, "metrics.csv" if side == "original" else "metrics.jsonl")
    if not os.path.isfile(metrics):
        return False
    rows = original_rows(path) if side == "original" else read_metrics(path)
    return any(row["step"] == n_train_itr and "eval/episode_return" in row for row in rows)


def bisect_rows(spec: str, args: argparse.Namespace, seeds: list[int]) -> tuple[str, dict[int, list[dict]]]:
    """--also NAME=RUNS -> (NAME, {seed: the rows of RUNS/project/<algorithm>_<task>/seed<seed>}) for the seeds
    among `seeds` whose run of this bisecting step is finished (a step may be run on fewer seeds than the
    comparison; the others are left out and said so); none finished stops the report."""
    name, separator, runs = spec.partition("=")
    if not separator or not runs or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise SystemExit(f"--also {spec}: write NAME=RUNS, NAME of letters, digits, '_', '.' and '-' (it names the "
                         "CSVs), RUNS the directory holding project/<algorithm>_<task>/seed<k>.")
    rows_by_seed = {}
    for seed in seeds:
        path = run_dir(runs, "project", args.algorithm, args.task, seed)
        if is_finished("project", path, args.n_train_itr):
            rows_by_seed[seed] = project_rows(path, args.algorithm)
        else:
            print(f"--also {name}: {path} is not a finished run of {args.n_train_itr} training iterations: left out",
                  flush=True)
    if not rows_by_seed:
        raise SystemExit(f"--also {name}: no finished run of {args.n_train_itr} training iterations for seeds "
                         f"{', '.join(map(str, seeds))} under {runs}: finish one, or drop --also {name}.")
    return name, rows_by_seed


def write_rows(rows: list[dict], path: str) -> None:
    keys = sorted({key for row in rows for key in row} - {"step"})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", *keys], restval="")
        writer.writeheader()
        writer.writerows(rows)


# ---- run ------------------------------------------------------------------------------------------------------
def original_batch_size(original: str, algorithm: str, task: str) -> int:
    from omegaconf import OmegaConf

    return OmegaConf.load(original_config_path(original, algorithm, task)).train.batch_size


def run_commands(args: argparse.Namespace, seed: int) -> dict[str, list[str]]:
    """The command of each side for one seed."""
    budget = ["--n-envs", str(args.n_envs), "--n-steps", str(args.n_steps), "--n-train-itr", str(args.n_train_itr),
              "--val-freq", str(args.val_freq)]
    original = [sys.executable, os.path.join(REFERENCE_DIR, "run_original.py"), "--original", args.original,
                "--algorithm", args.algorithm, "--task", args.task, "--seed", str(seed), "--threads", str(args.threads),
                "--out", run_dir(args.runs, "original", args.algorithm, args.task, seed), *budget]
    project = [sys.executable, os.path.join(REPO, "script", "run.py"), f"--config-name={project_config_name(args.algorithm)}",
               f"task={args.task}", f"seed={seed}", f"env.n_envs={args.n_envs}", f"train.n_steps={args.n_steps}",
               f"train.n_train_itr={args.n_train_itr}", f"train.eval_interval={args.val_freq}", f"threads={args.threads}",
               "env.asynchronous=false", "precision=fp32", "device=cpu", "wandb=null", "resume=auto",
               f"logdir={run_dir(args.runs, 'project', args.algorithm, args.task, seed)}"]
    if args.algorithm in ("ppo", "gaussian"):  # the original's minibatch is the whole rollout when that is smaller
        samples = args.n_envs * args.n_steps
        project.append(f"train.batch_size={min(original_batch_size(args.original, args.algorithm, args.task), samples)}")
    return {"original": original, "project": project}


def run(args: argparse.Namespace) -> None:
    if args.original is None:
        raise SystemExit("No checkout of the original: pass --original DIR or set DPPO_ORIGINAL.")
    for seed in args.seeds:
        for side, command in run_commands(args, seed).items():
            path = run_dir(args.runs, side, args.algorithm, args.task, seed)
            if is_finished(side, path, args.n_train_itr):
                print(f"{path}: finished, skipped", flush=True)
                continue
            os.makedirs(path, exist_ok=True)
            print(f"{path}: {' '.join(command)}", flush=True)
            with open(os.path.join(path, "stdout.log"), "a") as log:
                subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=REPO,
                               env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})


# ---- report ---------------------------------------------------------------------------------------------------
def project_config(algorithm: str, task: str):
    """This project's fine-tuning config of `algorithm` (project_config_name) composed for `task` on the CPU."""
    from hydra import compose, initialize_config_dir

    from dppo.config import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=os.path.join(REPO, "cfg"), version_base=None):
        return compose(config_name=project_config_name(algorithm), overrides=[f"task={task}", "device=cpu"])


def project_policy(algorithm: str, task: str):
    """This project's policy as its fine-tuning config builds it for `task`."""
    import hydra

    return hydra.utils.instantiate(project_config(algorithm, task).model)


def probe_difference(policy, probe: dict) -> float:
    """Largest |difference| between the original's probe samples (probe_samples.pt: deterministic and exploring)
    and `policy`'s on the same observations and noise. A Gaussian policy's deterministic chunk is its mean, its
    exploring one mean + std * clipped noise: both codes draw that noise as one standard normal per chunk element in
    the same order, so the exploring chunks also agree and check the std."""
    difference = 0.0
    for name, deterministic in (("deterministic", True), ("exploring", False)):
        torch.manual_seed(PROBE_SEED)
        with torch.no_grad():
            actions = policy.sample({"state": probe["state"]}, deterministic=deterministic).actions
        difference = max(difference, (actions - probe[name]).abs().max().item())
    return difference


def eval_returns(rows: list[dict], key: str) -> dict[int, float]:
    return {row["step"]: row[key] for row in rows if key in row}


def summary_line(side: str, runs_rows: list[list[dict]], key: str = "eval/episode_return") -> str:
    """One table row: evaluation (`key`) before training, at the end and best (mean ± std over seeds [min, max]),
    and the mean wall time of a training iteration and of an evaluation."""
    evals = [eval_returns(rows, key) for rows in runs_rows]
    before = np.array([returns[0] for returns in evals])
    final = np.array([returns[max(returns)] for returns in evals])
    best = np.array([max(returns.values()) for returns in evals])
    times = {kind: np.mean([row[key] for rows in runs_rows for row in rows if key in row])
             for kind, key in TIME_KEYS.items()}
    cells = [f"{values.mean():,.1f} ± {values.std():,.1f} [{values.min():,.1f}, {values.max():,.1f}]"
             for values in (before, final, best)]
    return f"| {side} | {len(runs_rows)} | " + " | ".join(cells) + f" | {times['train']:.1f} | {times['eval']:.1f} |"


def report(args: argparse.Namespace) -> None:
    os.makedirs(args.out, exist_ok=True)
    prefix = os.path.join(args.out, f"{args.algorithm}_{args.task}")
    rows_by_seed = {side: {} for side in SIDES}
    for side in SIDES:
        for seed in args.seeds:
            path = run_dir(args.runs, side, args.algorithm, args.task, seed)
            if not is_finished(side, path, args.n_train_itr):
                print(f"{path}: not finished, left out", flush=True)
                continue
            rows = original_rows(path) if side == "original" else project_rows(path, args.algorithm)
            write_rows(rows, f"{prefix}_{side}_seed{seed}.csv")
            rows_by_seed[side][seed] = rows
            if side == "original":
                probe = torch.load(os.path.join(path, "probe_samples.pt"), weights_only=True)
                difference = probe_difference(project_policy(args.algorithm, args.task), probe)
                if difference > args.probe_atol:
                    raise SystemExit(f"{path}: the original's probe samples differ from this project's policy's by "
                                     f"{difference:.2e}: the runs did not start from the same policy.")
    seeds = sorted(rows_by_seed["original"].keys() & rows_by_seed["project"].keys())
    if not seeds:
        print("no seed has finished runs of both codes: no figure or table", flush=True)
        return
    rows_by_side = {side: [rows_by_seed[side][seed] for seed in seeds] for side in SIDES}
    for spec in args.also:
        name, bisect_rows_by_seed = bisect_rows(spec, args, seeds)
        for seed, rows in bisect_rows_by_seed.items():
            write_rows(rows, f"{prefix}_{name}_seed{seed}.csv")
        rows_by_side[name] = list(bisect_rows_by_seed.values())
    keys = [key for key in RETURN_KEYS + ALGORITHM_KEYS[args.algorithm] + list(TIME_KEYS.values())
            if all(any(key in row for rows in runs for row in rows) for runs in rows_by_side.values())]
    title = (f"{args.algorithm} on {args.task}, {args.n_envs} envs x {args.n_steps} chunk-steps per training "
             f"iteration, seeds {', '.join(map(str, seeds))}")
    figure = plot_rows({"": rows_by_side}, keys, x="step")
    figure.suptitle(f"{title}; x: training iterations; line: mean over seeds, shaded: min-max range", fontsize=9)
    figure.savefig(f"{prefix}.png", dpi=100)
    table = [f"{title}; evaluation return (mean ± std over seeds [min, max]); wall time in s on {args.threads} torch "
             "thread(s), measured on a machine shared with other jobs.", "",
             "| code | seeds | eval before training | final eval | best eval | s / training iteration | s / evaluation |",
             "|---|---|---|---|---|---|---|"]
    table += [summary_line(side, runs_rows) for side, runs_rows in rows_by_side.items()]
    table.append(summary_line("original, its own count", rows_by_side["original"], "eval/episode_return_original"))
    table += ["", "Returns are counted as this project counts them on both sides (evaluation: each env's first "
              "episode from a reset; training: every episode that ends in the iteration, whole), recorded from the "
              "original's envs; the original's own count (every episode that starts and ends within the iteration, "
              "in an evaluation several per env when they fall) is the last row. The original logs the losses of "
              "each iteration's last gradient step (clipfrac: the mean), this project the mean over its steps."]
    with open(f"{prefix}.md", "w") as f:
        f.write("\n".join(table) + "\n")
    print("\n".join(table), flush=True)
    print(f"wrote {prefix}.png and {prefix}.md", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("run", "report"))
    parser.add_argument("--algorithm", choices=sorted(ALGORITHM_KEYS), default="ppo")
    parser.add_argument("--task", default="hopper", choices=("hopper", "walker2d", "halfcheetah"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--runs", required=True, help="directory of both codes' runs")
    parser.add_argument("--original", default=os.environ.get("DPPO_ORIGINAL"),
                        help="checkout of irom-lab/dppo at 7b10df6 (run; default: $DPPO_ORIGINAL)")
    parser.add_argument("--n-envs", type=int, default=10)
    parser.add_argument("--n-steps", type=int, default=250, help="chunk-steps per env and training iteration")
    parser.add_argument("--n-train-itr", type=int, default=20, help="training iterations")
    parser.add_argument("--val-freq", type=int, default=5, help="training iterations between evaluations")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=os.path.join(REPO, "docs", "orig_compare"), help="report directory")
    parser.add_argument("--probe-atol", type=float, default=PROBE_ATOL)
    parser.add_argument("--also", nargs="+", default=[], metavar="NAME=RUNS",
                        help="report: this project's runs of a bisecting step, drawn beside both codes as NAME")
    args = parser.parse_args(argv)
    run(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    main()
