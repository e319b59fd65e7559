"""torchrun pre-training: 2 CPU processes (gloo) against one process with the same global batch."""

import glob
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import TINY_MODEL, run_config, write_hopper_dataset

from dppo.checkpoint import load_checkpoint
from dppo.distributed import Rank, shard

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 5 episodes of 30 steps give 135 windows: batches of 16 end with one of 7, split 4 / 3 between the ranks,
# so the test also covers the loss scaling of uneven shards.
N_EPISODES = 5
# float32: under bf16 the shards' weight gradients are rounded over other row sums than the whole batch's.
OVERRIDES = TINY_MODEL + ["train.n_epochs=2", "train.batch_size=16", "train.save_model_freq=100", "precision=fp32"]
# The Gaussian NLL has no sampling noise: with the same data order the averaged gradient is the single-process
# gradient up to float summation order (about 1e-7 relative), which Adam carries over 18 steps.
EXACT_RTOL = 1e-5
# The diffusion loss draws its own noise and timesteps, different on each rank, so the two runs agree only in
# distribution: six single-process seeds of this setup gave epoch-2 losses 0.92-1.03 (std 0.04).
DIFFUSION_LOSS_TOL = 0.2


def pretrain_both_ways(config_name, tmp_path):
    """Pre-train on one process and with `torchrun --nproc_per_node=2` (default logdir under DPPO_LOG_DIR);
    returns (torchrun's stdout, its run dir, the single-process run dir)."""
    dataset_dir = tmp_path / "data"
    write_hopper_dataset(dataset_dir, n_episodes=N_EPISODES)
    single = tmp_path / "single"
    run_config(config_name, OVERRIDES + [f"dataset_dir={dataset_dir}", f"logdir={single}"])
    env = dict(os.environ, DPPO_LOG_DIR=str(tmp_path / "log"), OMP_NUM_THREADS="1",
               PYTHONFAULTHANDLER="1")  # a rank that aborts prints its Python stacks
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "script/run.py", f"--config-name={config_name}", f"dataset_dir={dataset_dir}", *OVERRIDES],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dirs = glob.glob(str(tmp_path / "log" / "*" / "*"))
    assert len(run_dirs) == 1, f"rank 0 alone writes a run dir, got {run_dirs}"
    return result.stdout, run_dirs[0], single


def losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line)["train/loss"] for line in f]


def test_shards_of_a_global_batch_cover_it_once():
    indices = torch.arange(7)
    shards = [shard(indices, Rank(rank, 2, "cpu")).tolist() for rank in range(2)]
    assert shards == [[0, 1, 2, 3], [4, 5, 6]]


RANK_METRICS = """
import sys, torch, torch.distributed as dist
sys.path.insert(0, {repo!r})
from dppo.distributed import Rank, mean_metrics_over_ranks
dist.init_process_group("gloo")
rank = dist.get_rank()
metrics = {{"a": 1.0, "b": 10.0, "name": "x"}} if rank == 0 else {{"b": 30.0, "a": 3.0, "name": "x"}}
result = mean_metrics_over_ranks(metrics, Rank(rank, 2, "cpu"))
if rank == 0:
    torch.save(result, {out!r})
dist.destroy_process_group()
"""


def test_metrics_are_averaged_key_by_key_whatever_order_each_rank_lists_them(tmp_path):
    script, out = tmp_path / "metrics.py", tmp_path / "result.pt"
    script.write_text(RANK_METRICS.format(repo=REPO, out=str(out)))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(script)], env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.load(out, weights_only=True) == {"a": 2.0, "b": 20.0, "name": "x"}


def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path):
    stdout, run_dir, single = pretrain_both_ways("pre_gaussian_mlp", tmp_path)

    assert stdout.count("Pre-training GaussianModel") == 1, "only rank 0 prints"
    assert "batch 16 = 2 processes x 8" in stdout
    assert sorted(os.listdir(os.path.join(run_dir, "checkpoint"))) == ["last.pt", "policy.pt", "state_2.pt"]
    assert losses(run_dir) == pytest.approx(losses(single), rel=EXACT_RTOL)
    weights = load_checkpoint(os.path.join(run_dir, "checkpoint", "last.pt"))["model"]
    expected = load_checkpoint(os.path.join(single, "checkpoint", "last.pt"))["model"]
    for name, value in expected.items():
        torch.testing.assert_close(weights[name], value, rtol=EXACT_RTOL, atol=1e-6, msg=name)


def test_diffusion_pretraining_on_two_processes(tmp_path):
    _, run_dir, single = pretrain_both_ways("pre_diffusion_mlp", tmp_path)

    assert sorted(os.listdir(os.path.join(run_dir, "checkpoint"))) == ["last.pt", "policy.pt", "state_2.pt"]
    assert [json.loads(line)["step"] for line in open(os.path.join(run_dir, "metrics.jsonl"))] == [1, 2]
    assert abs(losses(run_dir)[-1] - losses(single)[-1]) < DIFFUSION_LOSS_TOL


LEAVE_GROUP = """
import os, sys
sys.path.insert(0, sys.argv[1])
import torch
from dppo.distributed import close_distributed, init_distributed

def threads():
    return len(os.listdir("/proc/self/task"))

before = threads()
init_distributed("cpu")
torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())  # torch imports torch._dynamo, and torch.distributed.nn with it
close_distributed()
with open(os.path.join(sys.argv[2], f"threads_{os.environ['RANK']}.txt"), "w") as f:  # ranks share one stdout
    f.write(f"{before} {threads()}")
"""


def test_leaving_the_group_ends_its_threads_after_torch_imported_its_lazy_modules(tmp_path):
    """A group that outlives close_distributed keeps gloo's threads alive into interpreter shutdown, where one of
    them freeing a collective's tensors aborted 1 run in about 20 (SIGABRT): each rank's thread count after leaving
    must be the count before joining."""
    script = tmp_path / "leave_group.py"
    script.write_text(LEAVE_GROUP)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(script), REPO, str(tmp_path)], env=dict(os.environ, OMP_NUM_THREADS="1"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = [(tmp_path / f"threads_{rank}.txt").read_text().split() for rank in range(2)]
    assert all(before == after for before, after in counts), f"threads before joining, after leaving: {counts}"
