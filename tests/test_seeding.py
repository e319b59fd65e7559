"""The envs' seeds: runs of different seeds, and each run's iterations and uses of its envs (training resets,
evaluation resets), start different episodes."""

from conftest import compose_config, finetune_overrides

from agent.finetune.ppo import PPOAgent


def test_no_two_runs_iterations_or_uses_share_an_env_seed(pretrained, tmp_path):
    """Two run seeds x two iterations x (training reset, evaluation): eight resets of 2 envs, sixteen env seeds,
    all different. With env i seeded run_seed + itr * n_envs + i, seed 1's envs replayed seed 0's."""
    dataset_dir, _ = pretrained
    resets = []  # ((seed, itr, use), the env seeds of one reset)
    for seed in (0, 1):
        overrides = finetune_overrides(dataset_dir, tmp_path / str(seed), n_train_itr=2)
        agent = PPOAgent(compose_config("ft_ppo_diffusion_mlp", overrides + [f"seed={seed}", "train.n_eval_episodes=2"]))
        reset, use = agent.venv.reset, []

        def recording_reset(seed=None, agent=agent, reset=reset, use=use):
            resets.append((tuple(use), tuple(seed + i for i in range(agent.venv.num_envs))))
            return reset(seed=seed)

        agent.venv.reset = recording_reset
        for itr in (0, 1):
            agent.itr = itr
            use[:] = seed, itr, "train"
            agent.reset_envs()
            use[:] = seed, itr, "eval"
            agent.evaluate()
        agent.finish()
    assert [use for use, _ in resets] == [(s, i, u) for s in (0, 1) for i in (0, 1) for u in ("train", "eval")]
    env_seeds = [seed for _, seeds in resets for seed in seeds]
    assert len(set(env_seeds)) == len(env_seeds) == 16, resets
