"""Evaluation, logging and the run's end (a part of FinetuneAgent, agent/finetune/base.py): deterministic episodes
every `eval_interval` iterations on rank 0, the `eval/*` metrics, curves.png, closing the envs and the process group.
"""

from agent.eval.episodes import summarize
from agent.eval.rollout import run_episodes
from agent.finetune.metrics import Timer
from dppo.distributed import close_distributed
from dppo.runtime import env_seed, torch_threads


class EvaluationAndLogging:
    """Evaluates every eval_interval iterations, logs eval/*, draws curves.png, and ends the run (finish)."""

    def evaluate_and_log(self) -> bool:
        """Every `eval_interval` iterations (and before the first): evaluate, log `eval/*` and redraw the curves.

        Rank 0 evaluates; every rank returns whether this was an evaluation iteration (the envs then need a reset).
        """
        eval_interval = self.cfg.train.eval_interval
        if eval_interval is None or self.itr % eval_interval != 0:
            return False
        if not self.rank.is_main:
            return True
        self.model.eval()
        timer = Timer()
        metrics = self.evaluate()
        metrics["eval_time"] = timer.lap()
        self.wall_time += metrics["eval_time"]
        self.model.train()
        self.logger.log(metrics, step=self.itr, prefix="eval")
        self.plot_curves()
        return True

    def evaluate(self) -> dict:
        """Deterministic acting (`model.act`) for `train.n_eval_episodes` episodes (default: one per env,
        as the reference does); returns eval metrics (`success_rate` is that of deterministic acting, while
        train/success_rate is that of the exploring policy). The envs are reset with evaluation seeds first;
        torch runs on `train.sampling_threads`.
        """
        with torch_threads(self.cfg.train.sampling_threads):
            episodes = run_episodes(
                self.venv, self.act,
                n_episodes=self.cfg.train.n_eval_episodes or self.n_envs, act_steps=self.act_steps,
                seed=env_seed(self.cfg.seed, "eval", self.itr),
            )
        return summarize(episodes)

    def plot_curves(self) -> None:
        """curves.png: train and eval return, then one panel per loss the algorithm logs."""
        self.logger.plot(curve_panels(self.logger.keys))

    def finish(self) -> None:
        if self.rank.is_main:
            self.plot_curves()
            self.logger.close()
        self.venv.close()
        close_distributed()


def curve_panels(logged_keys) -> dict[str, list[str]]:
    """Panels of curves.png: {"reward": train and eval return}, {"success": train and eval success rate} when
    logged, and one panel per logged `train/*loss` key."""
    panels = {"reward": ["train/episode_return", "eval/episode_return"]}
    if "train/success_rate" in logged_keys or "eval/success_rate" in logged_keys:
        panels["success"] = ["train/success_rate", "eval/success_rate"]
    panels.update({key.removeprefix("train/"): [key] for key in logged_keys
                   if key.startswith("train/") and key.endswith("loss")})
    return panels
