"""Every fix guarded: each mutation below undoes a fix or breaks a promise in a temporary copy of the repository,
and the tests named beside it must fail there (pytest exit code 1: a test failed, not an error or no test).
First the named tests run on an unmutated copy and must pass, so a failure under a mutation means the mutation.
With --jobs N the mutations are dealt to N copies checked side by side, each pytest on cores / N torch threads.

    python script/check_mutations.py              # every mutation, as many at once as there are cores
    python script/check_mutations.py --only 2 5   # some of them, by number
    python script/check_mutations.py --jobs 1     # one at a time
    python script/check_mutations.py --table      # the markdown table docs/TESTING.md holds

tests/test_mutations.py checks that every mutation still applies (its text is in its file once), that its tests
exist, that docs/TESTING.md holds this table, and runs the check itself.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTEST_TESTS_FAILED = 1


@dataclass(frozen=True)
class Mutation:
    promise: str  # the fix or promise, as the docs state it
    path: str  # the file the mutation edits, relative to the repository
    old: str  # text that occurs exactly once in that file
    new: str  # what replaces it: the fix undone
    undone: str  # the mutation in words
    tests: tuple[str, ...]  # pytest node ids that must fail under the mutation


README_HOPPER_FINETUNED = ("**2,444.8 ± 115.6** (75.7), from 1,304.3 | 1,375.6 ± 90.3 (42.9), from 1,438.7",
                           "1,375.6 ± 90.3 (42.9), from 1,438.7 | **2,444.8 ± 115.6** (75.7), from 1,304.3")

MUTATIONS = (
    Mutation("PPO never learns from a cut step (worker restart, simulator failure)", "agent/finetune/ppo.py",
             "keep = ~rollout.cut.reshape(-1)", "keep = torch.ones_like(rollout.cut.reshape(-1))",
             "every step kept", ("tests/test_agent_updates.py::test_ppo_learns_nothing_from_a_cut_step",)),
    Mutation("DAWR's TD(lambda) restarts at an episode start in the replay", "agent/finetune/awr.py",
             'segment_ends(data["ends"], data["firsts"], data["cut"])',
             'segment_ends(data["ends"], torch.zeros_like(data["firsts"]), data["cut"])', "episode starts ignored",
             ("tests/test_agent_updates.py::test_dawr_td_lambda_restarts_at_an_episode_start_in_the_replay",)),
    Mutation("DQL's target critic follows the critic by Polyak averaging", "agent/finetune/dql.py",
             "            soft_update(self.critic_target, self.critic, train.tau)\n", "",
             "soft update removed",
             ("tests/test_agent_updates.py::test_target_critic_follows_the_critic_at_the_polyak_rate",)),
    Mutation("IDQL's target Q follows its Q critic by Polyak averaging", "agent/finetune/idql.py",
             "            soft_update(self.target_q, self.critic_q, train.tau)\n", "", "soft update removed",
             ("tests/test_agent_updates.py::test_target_critic_follows_the_critic_at_the_polyak_rate",)),
    Mutation("DQL's Q term reaches every denoising step of the differentiable sample", "model/diffusion/diffusion.py",
             "            x = mean + std * torch.randn_like(x).clamp(-self.randn_clip_value, self.randn_clip_value)\n",
             "            x = mean + std * torch.randn_like(x).clamp(-self.randn_clip_value, self.randn_clip_value)\n"
             "            x = x.detach() if k == 2 else x\n",
             "chain detached after step 2",
             ("tests/test_rl_losses.py::test_dql_actor_loss_reaches_the_denoiser_through_the_whole_chain",)),
    Mutation("approx_kl is the k3 estimator, equal to ReinFlow's within float32 rounding", "model/rl/ppo.py",
             '"approx_kl": ((ratio - 1) - log_ratio).mean().item(),',
             '"approx_kl": 1.02 * ((ratio - 1) - log_ratio).mean().item(),', "2% too large",
             ("tests/test_reference_algorithms.py::test_reinflow_ppo_terms",)),
    Mutation("DAWR's critic loss is element-wise", "model/rl/weighted_regression.py",
             "return ((values - targets) ** 2).mean()", "return ((values[:, None] - targets) ** 2).mean()",
             "the reference's B x B broadcast",
             ("tests/test_reference_algorithms.py::test_dawr_critic_loss_elementwise",)),
    Mutation("DAWR's critic learns from minibatches of the whole replay", "agent/finetune/awr.py",
             "self.shared_randint(n_samples, train.batch_size))",
             "self.shared_randint(n_samples // rollout.n_envs, train.batch_size))",
             "the reference's first (replay steps) rows, the oldest 1 / n_envs",
             ("tests/test_agent_updates.py::test_dawr_critic_batches_reach_every_step_of_the_replay",)),
    Mutation("The DDPM schedule is each exact value rounded once", "model/diffusion/diffusion.py",
             "betas = cosine_beta_schedule(denoising_steps)\n", "betas = cosine_beta_schedule(denoising_steps).float()\n",
             "derived in float32 as the reference",
             ("tests/test_reference_algorithms.py::"
              "test_ddpm_schedule_is_each_exact_value_rounded_once_where_the_reference_accumulates_float32_rounding",)),
    Mutation("Q critics are residual, as the configs ask", "cfg/critic/double_q_mlp.yaml",
             "residual_style: true", "residual_style: false", "plain MLPs (the reference's)",
             ("tests/test_reference_weights.py::"
              "test_project_q_critics_are_residual_and_residual_style_false_gives_the_references_plain_ones",)),
    Mutation("Normalized observations are clipped to +-5", "dppo/normalization.py",
             "return np.clip((obs - low) * scale + offset, -OBS_CLIP, OBS_CLIP)", "return (obs - low) * scale + offset",
             "no clip",
             ("tests/test_dataset.py::test_constant_dims_normalize_to_the_centre_and_observations_are_clipped",)),
    Mutation("policy=flow on DQL / IDQL carries the final action clip", "cfg/policy/flow.yaml",
             "${oc.select:flow_final_action_clip,null}", "null", "clip dropped",
             ("tests/test_config.py::"
              "test_policy_flow_on_a_q_learning_preset_is_its_flow_preset_with_the_final_action_clip",)),
    Mutation("Concurrent writers of one file each use a private temporary file", "dppo/paths.py",
             'fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")',
             'tmp_path = path + ".tmp"\n    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)',
             "one fixed temporary name",
             ("tests/test_dataset.py::test_two_jobs_saving_one_normalization_file_at_once_both_succeed",)),
    Mutation("Leaving the process group ends gloo's threads", "dppo/distributed.py",
             "import torch.distributed.nn  # noqa: F401  before any group exists: see close_distributed\n", "",
             "torch.distributed.nn imported lazily",
             ("tests/test_distributed.py::"
              "test_leaving_the_group_ends_its_threads_after_torch_imported_its_lazy_modules",)),
    Mutation("A gym task's max_episode_steps is its time limit", "cfg/task/hopper.yaml",
             "  kwargs:\n    max_episode_steps: ${max_episode_steps}", "  kwargs: {}", "gymnasium's registered limit",
             ("tests/test_settings.py::test_a_gym_tasks_max_episode_steps_is_its_time_limit",)),
    Mutation("A setting out of its range stops the run with one line", "agent/finetune/settings.py",
             'setting("discount per chunk-step", low=0, high=1)', 'setting("discount per chunk-step")',
             "gamma's range removed",
             ("tests/test_settings.py::test_a_bad_setting_stops_the_run_with_one_line_before_anything_is_built"
              "[train.gamma=1.5]",)),
    Mutation("A key the composed policy ignores is dropped from the run's config", "dppo/config.py",
             "            with open_dict(cfg):\n                del cfg[key]\n", "", "kept",
             ("tests/test_settings.py::test_a_preset_key_the_policy_ignores_is_dropped_from_the_composition",)),
    Mutation("An agent starts when its most derived __init__ returns", "agent/finetune/base.py",
             "        cls.__init__ = build_then_start\n", "", "start left to each algorithm",
             ("tests/test_agent_updates.py::test_an_agent_starts_when_its_init_returns_with_every_module_it_built",)),
    Mutation("Modules in a plain list or dict are refused (checkpoints would miss them)", "agent/finetune/base.py",
             "        if hidden:\n", "        if hidden and False:\n", "check skipped",
             ("tests/test_agent_updates.py::test_modules_in_a_plain_list_are_refused",)),
    Mutation("An actor optimizer of any name waits for the critic warm-up", "agent/finetune/optimization.py",
             'if self.optimizer_roles[name] != "actor" or self.update_actor:', 'if name != "actor" or self.update_actor:',
             "warm-up keyed by the name",
             ("tests/test_agent_updates.py::test_an_actor_optimizer_of_any_name_waits_for_the_critic_warm_up",)),
    Mutation("README's Gym table: each fine-tuning figure in its own column", "README.md", *README_HOPPER_FINETUNED,
             "Hopper's DPPO and Gaussian PPO cells swapped",
             ("tests/test_docs.py::test_each_figure_of_the_readme_gym_table_is_its_own_row_and_column_in_results_md",)),
    Mutation("README's Gym table: each BC figure in its own column", "README.md",
             "| Hopper-v5 | 1246.7 | 1412.1 | 1354.8 |", "| Hopper-v5 | 1246.7 | 1354.8 | 1412.1 |",
             "Hopper's two BC cells swapped",
             ("tests/test_docs.py::test_each_figure_of_the_readme_gym_table_is_its_own_row_and_column_in_results_md",)),
    Mutation("Runs of different seeds start different episodes (hashed env seeds)", "agent/finetune/collection.py",
             'seed=env_seed(self.cfg.seed, "train", self.itr) + self.env_offset',
             "seed=self.cfg.seed + self.itr * self.n_envs_total + self.env_offset", "training resets seeded seed + i",
             ("tests/test_seeding.py::test_no_two_runs_iterations_or_uses_share_an_env_seed",)),
    Mutation("Gaussian PPO learns the original's std: one log-variance per action dim", "model/common/gaussian.py",
             "std = (0.5 * logvar).exp().expand_as(mean)", "std = logvar.exp().expand_as(mean)",
             "the parameter read as a log-std",
             ("tests/test_rl_losses.py::test_gaussian_learned_std_is_one_log_variance_per_action_dim_as_the_references",)),
    Mutation("A misspelt key gets one line with the nearest keys", "script/run.py",
             "            sys.exit(composition_error_line(error, sys.argv[1:]))", "            raise",
             "Hydra's own message",
             ("tests/test_settings.py::test_a_bad_setting_stops_the_run_with_one_line_before_anything_is_built"
              "[train.n_step=3]",)),
    Mutation("docs/SETTINGS.md is the same on every machine (the precision default shown as its resolver)",
             "script/settings_reference.py", "    if str(as_written).startswith(MACHINE_RESOLVERS):\n",
             "    if False:\n", "this machine's precision shown",
             ("tests/test_settings.py::test_docs_settings_md_is_the_same_on_machines_with_and_without_bf16",)),
)


def tracked_files() -> list[str]:
    """The files of the working tree git tracks or would track (not ignored), relative to the repository."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                         check=True, capture_output=True, text=True).stdout
    return [path for path in out.split("\0") if path and os.path.isfile(os.path.join(REPO, path))]


def copy_repository(destination: str) -> None:
    for path in tracked_files():
        os.makedirs(os.path.join(destination, os.path.dirname(path)), exist_ok=True)
        shutil.copy2(os.path.join(REPO, path), os.path.join(destination, path))


def mutated_text(mutation: Mutation, text: str) -> str:
    count = text.count(mutation.old)
    if count != 1:
        raise ValueError(f"{mutation.path}: the mutation's text occurs {count} times (must be once): {mutation.old!r}")
    return text.replace(mutation.old, mutation.new)


def run_tests(root: str, tests: tuple[str, ...], threads: int) -> int:
    """pytest's exit code for `tests` run in the copy at `root` (its packages first on the path) on `threads`
    torch threads."""
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests], cwd=root,
                          env=env, capture_output=True, text=True).returncode


def check_in_one_copy(mutations: list[tuple[int, Mutation]], threads: int) -> list[str]:
    """Problems found in one copy of the repository: guarding tests that fail unmutated, mutations under which they
    pass. The mutations are applied one at a time, each undone before the next."""
    problems = []
    with tempfile.TemporaryDirectory(prefix="dppo-mutations-") as root:
        copy_repository(root)
        baseline = tuple(sorted({test for _, mutation in mutations for test in mutation.tests}))
        code = run_tests(root, baseline, threads)
        if code != 0:
            return [f"the guarding tests fail without any mutation (pytest exit {code}): {' '.join(baseline)}"]
        for number, mutation in mutations:
            path = os.path.join(root, mutation.path)
            with open(path) as f:
                original = f.read()
            with open(path, "w") as f:
                f.write(mutated_text(mutation, original))
            code = run_tests(root, mutation.tests, threads)
            with open(path, "w") as f:
                f.write(original)
            verdict = "caught" if code == PYTEST_TESTS_FAILED else f"NOT caught (pytest exit {code})"
            print(f"{number:2d}. {mutation.promise} / {mutation.undone}: {verdict}", flush=True)
            if code != PYTEST_TESTS_FAILED:
                problems.append(f"mutation {number} ({mutation.undone} in {mutation.path}): pytest exit {code}")
    return problems


def check(mutations: list[tuple[int, Mutation]], jobs: int) -> list[str]:
    """Problems found, the mutations dealt round-robin to `jobs` copies checked side by side."""
    shares = [mutations[job::jobs] for job in range(jobs) if mutations[job::jobs]]
    threads = max(1, (os.cpu_count() or 1) // len(shares))
    with ThreadPoolExecutor(len(shares)) as pool:
        return [problem for problems in pool.map(lambda share: check_in_one_copy(share, threads), shares)
                for problem in problems]


def table() -> str:
    """The markdown table of docs/TESTING.md: one row per mutation."""
    rows = ["| # | fix or promise | mutation (file: what is undone) | test that fails |", "|---|---|---|---|"]
    for number, mutation in enumerate(MUTATIONS, start=1):
        tests = "<br>".join(f"`{test.split('::')[0].removeprefix('tests/')}::{test.split('::')[1]}`"
                            for test in mutation.tests)
        rows.append(f"| {number} | {mutation.promise} | `{mutation.path}`: {mutation.undone} | {tests} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", type=int, nargs="+", help="mutation numbers (1-based) to check")
    parser.add_argument("--table", action="store_true", help="print the markdown table of docs/TESTING.md")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="copies of the repository checked side by side (default: one per core)")
    args = parser.parse_args()
    if args.table:
        print(table(), end="")
        return
    numbered = list(enumerate(MUTATIONS, start=1))
    if args.only:
        numbered = [(number, mutation) for number, mutation in numbered if number in args.only]
    problems = check(numbered, max(1, args.jobs))
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"all {len(numbered)} mutations caught")


if __name__ == "__main__":
    main()
