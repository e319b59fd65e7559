"""dppo: Diffusion Policy Policy Optimization in pure PyTorch."""

from setuptools import find_packages, setup

GYM = ["gymnasium==1.4.*", "mujoco==3.8.0", "imageio-ffmpeg>=0.5"]
ROBOMIMIC = ["robosuite==1.5.2", "mujoco==3.8.0", "h5py>=3.8"]
# Meta-World: metaworld 3.1.1 itself is installed by install.sh with --no-deps (it pins mujoco==3.3.0; it runs on
# the mujoco 3.8.0 the other families need, tests/test_metaworld_env.py); these are its other dependencies.
METAWORLD = ["gymnasium==1.4.*", "mujoco==3.8.0", "scipy>=1.4.1", "imageio>=2.30"]
DATA = ["stable-baselines3>=2.3", "h5py>=3.8"]
DEV = ["pytest>=8", "h5py>=3.8"]
SWEEP = ["hydra-joblib-launcher==1.2.*", "hydra-submitit-launcher==1.2.*"]  # hydra/launcher=joblib | submitit_local | slurm

setup(
    name="dppo",
    version="0.1.0",
    description="Diffusion Policy Policy Optimization (Ren et al., ICLR 2025) in pure PyTorch",
    python_requires=">=3.10",
    packages=find_packages(include=["dppo*", "agent*", "model*", "env*"]),
    install_requires=[
        "torch>=2.13,<2.15",
        "numpy>=1.24",
        "hydra-core==1.3.*",
        "omegaconf>=2.3",
        "wandb>=0.17",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "imageio>=2.30",
        "einops>=0.7",
    ],
    extras_require={
        "gym": GYM,
        "robomimic": ROBOMIMIC,
        "metaworld": METAWORLD,
        "data": DATA,
        "dev": DEV,
        "sweep": SWEEP,
        "all": sorted(set(GYM + ROBOMIMIC + METAWORLD + DATA + DEV + SWEEP)),
    },
)
