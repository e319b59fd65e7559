"""script/plot.py draws the seed-aggregated curves of runs and sweeps; script/summarize.py tabulates them."""

import csv
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "script"))

from plot import env_steps_by_step, expand_runs, plot_runs  # noqa: E402
from summarize import summary_table, write_evals_csv  # noqa: E402


def write_run(run_dir, rows, name=None, env_name="hopper", seed=0):
    """A run dir with metrics.jsonl and, when `name` is given, the config.yaml keys plot.py reads."""
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    if name is not None:
        with open(os.path.join(run_dir, "config.yaml"), "w") as f:
            f.write(f"name: {name}\nenv_name: {env_name}\nseed: {seed}\n")


def write_job(sweep_dir, num, run_dir, overrides, config_name="ft_ppo_diffusion_mlp"):
    """The job.json a multirun job of script/run.py leaves in its subdirectory of the sweep dir."""
    os.makedirs(os.path.join(sweep_dir, str(num)))
    with open(os.path.join(sweep_dir, str(num), "job.json"), "w") as f:
        json.dump({"num": num, "config_name": config_name, "overrides": overrides, "run_dir": str(run_dir),
                   "threads": None}, f)


def seed_rows(scale):
    """Two iterations of a fine-tuning run whose every metric is `scale` times a fixed curve."""
    return [{"step": 0, "eval/episode_return": 10.0 * scale},
            {"step": 1, "train/env_steps": 400.0, "train/wall_time": 60.0 * scale, "train/loss": 1.0 * scale,
             "train/pg_loss": -0.1 * scale, "train/value_loss": 2.0 * scale},
            {"step": 2, "train/env_steps": 800.0, "train/wall_time": 120.0 * scale, "train/loss": 0.5 * scale,
             "train/pg_loss": -0.2 * scale, "train/value_loss": 1.0 * scale},
            {"step": 2, "eval/episode_return": 30.0 * scale}]


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
    assert list(lines["A (n=2)"].get_xdata()) == [0.0, 2.0]  # mean of 1 and 3 minutes
    assert list(lines["A (n=2)"].get_ydata()) == [20.0, 30.0]
    assert list(lines["B (n=1)"].get_xdata()) == [0.0, 1.5]
    assert list(lines["B (n=1)"].get_ydata()) == [10.0, 20.0]
    assert len(eval_ax.collections) == 1, "only the group of two runs has a shaded spread"
    assert [line.get_label() for line in loss_ax.get_lines()] == ["B (n=1)"]
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
    assert table.splitlines()[0].startswith("| run | seeds | initial eval return | final eval return | best")
    assert "D4RL" not in table, "runs without a task file with D4RL references get no score column"
    assert table.splitlines()[2] == ("| A | 2 | 20.0 ± 14.1 (30.0, 10.0) | 15.0 ± 7.1 (10.0, 20.0) | 25.0 ± 7.1 (30.0, 20.0) "
                                     "| 2,000.0 ± 1,414.2 (1,000.0, 3,000.0) | 3.0 ± 1.4 (2.0, 4.0) "
                                     "| 300.0 ± 141.4 (200.0, 400.0) |")


def test_summary_gives_the_d4rl_score_from_the_task_files_references(tmp_path):
    # cfg/task/hopper.yaml: D4RL's random return -20.272305, expert reference 3234.3
    for seed, final in [(0, 3234.3), (1, -20.272305)]:
        rows = [{"step": 0, "eval/episode_return": 1000.0},
                {"step": 1, "train/env_steps": 10.0, "train/wall_time": 60.0, "train/env_steps_per_s": 1.0},
                {"step": 1, "eval/episode_return": final}]
        write_run(tmp_path / f"s{seed}", rows, name="hopper_ft", env_name="hopper", seed=seed)
    table = summary_table([str(tmp_path / "s0"), str(tmp_path / "s1")], ["hopper"] * 2)
    header, _, row = table.splitlines()
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in row.split("|")]))
    assert cells["final D4RL score"] == "50.0 ± 70.7 (100.0, 0.0)"


def test_summary_compares_runs_at_equal_env_steps_and_by_the_steps_to_reach_a_return(tmp_path):
    """--at-env-steps: the last evaluation within the budget, "not reached" for a run that stopped before its next
    iteration would have passed the budget; --reach: the env steps before the first evaluation at or above the
    target, "not reached" for a run that never got there."""
    def rows(evals):  # evals: [(env steps, return)], one iteration each
        out = [{"step": 0, "eval/episode_return": evals[0][1]}]
        for step, (env_steps, value) in enumerate(evals[1:], start=1):
            out += [{"step": step, "train/env_steps": env_steps, "train/wall_time": 60.0 * step,
                     "train/env_steps_per_s": 1.0}, {"step": step, "eval/episode_return": value}]
        return out

    write_run(tmp_path / "fast", rows([(0, 100.0), (1000, 300.0), (2000, 250.0), (3000, 500.0)]))
    write_run(tmp_path / "slow", rows([(0, 120.0), (1500, 150.0), (2500, 280.0), (3500, 290.0)]))
    table = summary_table([str(tmp_path / "fast"), str(tmp_path / "slow")], ["A", "A"],
                          at_env_steps=[2000, 2400, 4200], reach=[280, 400])
    header, _, row = table.splitlines()
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in row.split("|")]))
    assert cells["eval at 2,000 env steps"] == "200.0 ± 70.7 (250.0, 150.0)"  # 150 at 1,500: the last within 2,000
    assert cells["eval at 2,400 env steps"] == "200.0 ± 70.7 (250.0, 150.0)"
    assert cells["eval at 4,200 env steps"] == "1 of 2: not reached, 290.0"  # fast stopped at 3,000 (next: 4,000)
    assert cells["env steps to eval 280"] == "1,750 ± 1,061 (1,000, 2,500)"
    assert cells["env steps to eval 400"] == "1 of 2: 3,000, not reached"
    assert list(cells)[5:10] == ["eval at 2,000 env steps", "eval at 2,400 env steps", "eval at 4,200 env steps",
                                 "env steps to eval 280", "env steps to eval 400"]


def test_evals_csv_lists_every_evaluation_with_the_env_steps_and_minutes_reached(tmp_path):
    write_run(tmp_path / "run", seed_rows(2.0), name="hopper_ft", seed=7)
    write_evals_csv([str(tmp_path / "run")], ["A"], str(tmp_path / "evals.csv"))
    with open(tmp_path / "evals.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["label"], r["seed"], r["iteration"], r["env steps"], r["wall time (min)"], r["eval return"])
            for r in rows] == [("A", "7", "0", "0.0", "0.0", "20.0"), ("A", "7", "2", "800.0", "4.0", "60.0")]


def test_an_evals_csv_draws_the_evaluation_curves_its_run_dirs_drew(tmp_path):
    """A committed evaluations CSV stands for its runs: the eval-return lines against env steps and wall time, drawn
    from the CSV, are those drawn from the run dirs it was written from."""
    runs = [str(tmp_path / name) for name in ("a0", "a1", "b0")]
    for run, scale, seed in zip(runs, (1.0, 2.0, 3.0), (0, 1, 0)):
        write_run(run, seed_rows(scale), name="hopper_ft", seed=seed)
    labels = ["A", "A", "B"]
    write_evals_csv(runs, labels, str(tmp_path / "evals.csv"))
    csv_runs, csv_labels = expand_runs([str(tmp_path / "evals.csv")])
    assert csv_labels == labels

    def eval_lines(figure):
        return [(ax.get_xlabel(), line.get_label(), list(line.get_xdata()), list(line.get_ydata()))
                for ax in figure.axes if ax.get_visible() for line in ax.get_lines()]

    from_dirs = eval_lines(plot_runs(runs, labels, keys=["eval/episode_return"]))
    assert eval_lines(plot_runs(csv_runs, csv_labels, keys=["eval/episode_return"])) == from_dirs
    assert from_dirs == [("environment steps", "A (n=2)", [0.0, 800.0], [15.0, 45.0]),
                         ("environment steps", "B (n=1)", [0.0, 800.0], [30.0, 90.0]),
                         ("wall time (min)", "A (n=2)", [0.0, 3.0], [15.0, 45.0]),
                         ("wall time (min)", "B (n=1)", [0.0, 6.0], [30.0, 90.0])]


def test_an_evals_csv_tabulates_as_its_run_dirs_did_but_the_rollout_speed(tmp_path):
    """summarize.py on a committed evaluations CSV: each label's evaluation and budget figures are those of the run
    dirs the CSV was written from; the rollout speed, which the CSV lacks, is left out."""
    runs = [str(tmp_path / name) for name in ("a0", "a1", "b0")]
    for run, scale, seed in zip(runs, (1.0, 2.0, 3.0), (0, 1, 0)):
        rows = [{**row, "train/env_steps_per_s": 100.0} if "train/env_steps" in row else row for row in seed_rows(scale)]
        write_run(run, rows, name="toy_ft", env_name="toy", seed=seed)
    labels = ["A", "A", "B"]
    write_evals_csv(runs, labels, str(tmp_path / "evals.csv"))
    csv_runs, csv_labels = expand_runs([str(tmp_path / "evals.csv")])
    from_csv = summary_table(csv_runs, csv_labels, at_env_steps=[500], reach=[40.0]).splitlines()
    from_dirs = summary_table(runs, labels, at_env_steps=[500], reach=[40.0]).splitlines()
    assert from_dirs[0].endswith("| wall time (min) | rollout env steps/s |")
    assert [line.rsplit(" | ", 1)[0] + " |" for line in from_dirs if not line.startswith("|---")] == \
        [line for line in from_csv if not line.startswith("|---")]
    assert from_csv[2].startswith("| A | 2 | 15.0 ± 7.1 (10.0, 20.0) | 45.0 ± 21.2 (30.0, 60.0) |")
    write_evals_csv(csv_runs, csv_labels, str(tmp_path / "again.csv"))  # the CSV's runs written again: the same CSV
    with open(tmp_path / "evals.csv") as first, open(tmp_path / "again.csv") as again:
        assert again.read() == first.read()
    write_evals_csv(csv_runs, csv_labels, str(tmp_path / "evals.csv"))  # onto the CSV its runs are read from
    with open(tmp_path / "evals.csv") as rewritten, open(tmp_path / "again.csv") as again:
        assert rewritten.read() == again.read()


def test_facets_draw_each_tasks_runs_in_its_own_panel_with_one_colour_per_label(tmp_path):
    runs, labels, facets = [], [], []
    for task, algorithm, scale in [("hopper", "DPPO", 1.0), ("hopper", "Gaussian", 2.0), ("walker2d", "DPPO", 3.0),
                                   ("walker2d", "Gaussian", 4.0)]:
        run_dir = tmp_path / f"{task}_{algorithm}"
        write_run(run_dir, seed_rows(scale), name=f"{task}_{algorithm}", env_name=task)
        runs.append(str(run_dir))
        labels.append(algorithm)
        facets.append(task)
    figure = plot_runs(runs, labels, ["eval/episode_return"], x="env_steps", facets=facets)
    axes = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["hopper: eval/episode_return", "walker2d: eval/episode_return"]
    drawn = [{line.get_label(): (list(line.get_ydata()), line.get_color()) for line in ax.get_lines()} for ax in axes]
    assert {label: ys for label, (ys, _) in drawn[0].items()} == {"DPPO (n=1)": [10.0, 30.0], "Gaussian (n=1)": [20.0, 60.0]}
    assert {label: ys for label, (ys, _) in drawn[1].items()} == {"DPPO (n=1)": [30.0, 90.0], "Gaussian (n=1)": [40.0, 120.0]}
    assert drawn[0]["DPPO (n=1)"][1] == drawn[1]["DPPO (n=1)"][1] != drawn[0]["Gaussian (n=1)"][1]

    out = tmp_path / "facets.png"
    subprocess.run([sys.executable, "script/plot.py", *runs, "--facet", "env_name", "--label-by", "name",
                    "--keys", "eval/episode_return", "--out", str(out)], cwd=REPO, check=True, capture_output=True,
                   timeout=120)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = subprocess.run([sys.executable, "script/plot.py", *runs, "--facet", "train.n_envs"], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "has no `train.n_envs`" in missing.stderr


def test_two_seeds_of_one_config_give_one_mean_line_per_panel(tmp_path):
    name = "hopper_ft_ppo_diffusion_mlp_ta4_td20_tdf10"
    write_run(tmp_path / "seed0", seed_rows(1.0), name=name, seed=0)
    write_run(tmp_path / "seed1", seed_rows(3.0), name=name, seed=1)
    runs, labels = expand_runs([str(tmp_path / "seed0"), str(tmp_path / "seed1")])
    assert labels == [name, name]
    figure = plot_runs(runs, labels)
    panels = [(ax.get_title(), ax.get_xlabel()) for ax in figure.axes if ax.get_visible()]
    assert panels == [("eval/episode_return", "environment steps"), ("eval/episode_return", "wall time (min)"),
                      ("train/loss", "environment steps"), ("train/pg_loss", "environment steps"),
                      ("train/value_loss", "environment steps")], "losses against env steps only; no train/return"
    by_panel = {panel: ax for panel, ax in zip(panels, figure.axes)}
    for (title, x_label), ax in by_panel.items():
        assert [line.get_label() for line in ax.get_lines()] == [f"{name} (n=2)"]
        assert len(ax.collections) == 1, "the min-max band of the two seeds"
    eval_line = by_panel[("eval/episode_return", "environment steps")].get_lines()[0]
    assert list(eval_line.get_xdata()) == [0.0, 800.0]
    assert list(eval_line.get_ydata()) == [20.0, 60.0]  # means of (10, 30) and (30, 90)
    wall_line = by_panel[("eval/episode_return", "wall time (min)")].get_lines()[0]
    assert list(wall_line.get_xdata()) == [0.0, 4.0]  # mean of 2 and 6 minutes
    value_line = by_panel[("train/value_loss", "environment steps")].get_lines()[0]
    assert list(value_line.get_ydata()) == [4.0, 2.0]
    assert "min-max" in figure.get_suptitle()


def test_a_sweep_dir_gives_one_line_per_task_over_its_seeds(tmp_path):
    sweep = tmp_path / "sweep"
    for num, (task, seed, scale) in enumerate([("hopper", 0, 1.0), ("hopper", 1, 2.0), ("walker2d", 0, 5.0)]):
        run_dir = tmp_path / f"run{num}"
        write_run(run_dir, seed_rows(scale), name=f"{task}_ft_ppo", env_name=task, seed=seed)
        write_job(sweep, num, run_dir, [f"task={task}", f"seed={seed}", "train.n_train_itr=2"])
    runs, labels = expand_runs([str(sweep)])
    assert labels == ["hopper_ft_ppo", "hopper_ft_ppo", "walker2d_ft_ppo"]
    figure = plot_runs(runs, labels, keys=["eval/episode_return"], x="env_steps")
    ax, = [ax for ax in figure.axes if ax.get_visible()]
    lines = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    assert lines == {"hopper_ft_ppo (n=2)": [15.0, 45.0], "walker2d_ft_ppo (n=1)": [50.0, 150.0]}

    subprocess.run([sys.executable, "script/plot.py", str(sweep)], cwd=REPO, check=True, capture_output=True,
                   timeout=120)
    assert (sweep / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_labels_keep_the_overrides_that_differ_except_seed(tmp_path):
    sweep = tmp_path / "sweep"
    for num, (lr, seed) in enumerate([(1e-4, 0), (1e-4, 1), (1e-3, 0)]):
        write_run(tmp_path / f"run{num}", seed_rows(1.0), name="hopper_ft_ppo", seed=seed)
        write_job(sweep, num, tmp_path / f"run{num}", [f"train.actor_lr={lr}", f"seed={seed}", "wandb=null"])
    assert expand_runs([str(sweep)])[1] == ["hopper_ft_ppo train.actor_lr=0.0001", "hopper_ft_ppo train.actor_lr=0.0001",
                                           "hopper_ft_ppo train.actor_lr=0.001"]


def test_summary_of_manipulation_runs_gives_the_success_rate_to_two_decimals(tmp_path):
    for seed, rates in [(0, [0.5, 0.75, 0.625]), (1, [0.25, 0.5, 0.875])]:
        rows = [{"step": 0, "eval/episode_return": rates[0], "eval/success_rate": rates[0]}]
        for step, rate in enumerate(rates[1:], start=1):
            rows += [{"step": step, "train/env_steps": 100.0 * step, "train/wall_time": 60.0 * step,
                      "train/env_steps_per_s": 10.0},
                     {"step": step, "eval/episode_return": rate, "eval/success_rate": rate}]
        write_run(tmp_path / f"s{seed}", rows, name="pick_place_ft", env_name="pick_place", seed=seed)
    header, _, row = summary_table([str(tmp_path / "s0"), str(tmp_path / "s1")], ["pick"] * 2).splitlines()
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in row.split("|")]))
    assert "final eval return" not in cells
    assert cells["initial eval success"] == "0.38 ± 0.18 (0.50, 0.25)"
    assert cells["final eval success"] == "0.75 ± 0.18 (0.62, 0.88)"
    assert cells["best eval success"] == "0.81 ± 0.09 (0.75, 0.88)"
