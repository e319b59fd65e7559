"""Metric logging to JSONL, CSV, stdout, optionally Weights & Biases, and PNG curves.

Every run directory gets `metrics.jsonl` (one JSON object per `log` call) and
`metrics.csv` (one column per metric ever logged), so curves can be read and
plotted without wandb. wandb is optional: a failure to start it prints a
warning and the run goes on.
"""

import csv
import json
import math
import os
import uuid

import numpy as np
import torch
from matplotlib.figure import Figure

from dppo.paths import atomic_write

WANDB_KEYS = ("project", "entity", "mode", "group", "name")
MAX_DEFAULT_PLOTS = 12


def to_float(key: str, value) -> float:
    """A python float from a number, numpy scalar or one-element tensor/array; raises for anything else."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        n_elements = value.numel() if isinstance(value, torch.Tensor) else value.size
        if n_elements == 1:
            return float(value.item())
        raise ValueError(f"Metric '{key}' has shape {tuple(value.shape)}: log a scalar, e.g. its .mean().")
    if isinstance(value, (int, float, np.number)):
        return float(value)
    raise TypeError(f"Metric '{key}' is a {type(value).__name__}: log a number.")


class MetricLogger:
    """Writes metrics of one run to `<run_dir>/metrics.jsonl`, `<run_dir>/metrics.csv`, stdout and wandb.

    Args:
        run_dir: directory of the run (created if needed).
        wandb_cfg: None for no wandb; else a dict with keys among `WANDB_KEYS`
            (`mode` defaults to "offline"). The wandb run id is kept in
            `<run_dir>/wandb_id.txt` so a resumed run continues the same wandb run.
        config: plain dict of the run's config, stored by wandb.
        resume: keep the metrics already in `run_dir` and append to them;
            without it, existing metric files in `run_dir` are replaced.
        resume_step: with `resume`, the step of the checkpoint the run resumes from: rows logged
            after it (by the run that died after its last checkpoint) are dropped, so the steps that
            run again are not logged twice. If any were dropped, wandb starts a new run that gets the
            kept history first, so its steps match the local files too.
    """

    def __init__(self, run_dir: str, wandb_cfg: dict | None = None, config: dict | None = None, resume: bool = False,
                 resume_step: int | None = None):
        self.run_dir = run_dir
        self.jsonl_path = os.path.join(run_dir, "metrics.jsonl")
        self.csv_path = os.path.join(run_dir, "metrics.csv")
        self.history: list[dict] = []
        self.keys: dict[str, None] = {}  # metric keys in order of first appearance
        os.makedirs(run_dir, exist_ok=True)
        dropped = False
        if resume and os.path.isfile(self.jsonl_path):
            self.history = self._read_jsonl()
            if resume_step is not None:
                kept = [row for row in self.history if row["step"] <= resume_step]
                dropped = len(kept) < len(self.history)
                self.history = kept
            for row in self.history:
                self.keys.update(dict.fromkeys(key for key in row if key != "step"))
        with atomic_write(self.jsonl_path) as f:
            f.writelines(json.dumps(row) + "\n" for row in self.history)
        self._rewrite_csv()
        self.run = None
        if wandb_cfg is not None:
            self.run = self._init_wandb(wandb_cfg, config, resume=resume and not dropped)
            if self.run is not None and dropped:
                for row in self.history:
                    self.run.log({key: value for key, value in row.items() if key != "step"}, step=row["step"])

    def _read_jsonl(self) -> list[dict]:
        """Rows of an existing metrics.jsonl; a line cut short by a crash is skipped with a warning."""
        rows = []
        with open(self.jsonl_path) as f:
            for line_number, line in enumerate(f, start=1):
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    print(f"Warning: skipping unreadable line {line_number} of {self.jsonl_path}.")
        return rows

    def _init_wandb(self, wandb_cfg: dict, config: dict | None, resume: bool):
        """Start a wandb run, or return None after a one-line warning if wandb cannot start."""
        unknown = sorted(set(wandb_cfg) - set(WANDB_KEYS))
        if unknown:
            raise ValueError(f"Unknown wandb config keys {unknown}: use only {list(WANDB_KEYS)}.")
        id_path = os.path.join(self.run_dir, "wandb_id.txt")
        if resume and os.path.isfile(id_path):
            with open(id_path) as f:
                run_id = f.read().strip()
        else:
            run_id = uuid.uuid4().hex[:12]
            with open(id_path, "w") as f:
                f.write(run_id + "\n")
        try:
            import wandb

            return wandb.init(
                project=wandb_cfg.get("project", "dppo"),
                entity=wandb_cfg.get("entity"),
                mode=wandb_cfg.get("mode", "offline"),
                group=wandb_cfg.get("group"),
                name=wandb_cfg.get("name"),
                dir=self.run_dir,
                config=config,
                resume="allow" if resume else None,
                id=run_id,
            )
        except Exception as e:
            first_line = (str(e).strip().splitlines() or [""])[0]
            print(
                f"Warning: wandb is off for this run ({type(e).__name__}: {first_line}); "
                f"metrics still go to {self.run_dir}."
            )
            return None

    def _rewrite_csv(self) -> None:
        """Write metrics.csv from the whole history, with a column for every key seen (atomic)."""
        with atomic_write(self.csv_path, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["step", *sorted(self.keys)], restval="")
            writer.writeheader()
            writer.writerows(self.history)

    def log(self, metrics: dict, step: int, prefix: str | None = None) -> None:
        """Record scalar `metrics` at `step`; keys become `"{prefix}/{key}"` when `prefix` is given."""
        values = {f"{prefix}/{key}" if prefix else key: to_float(key, value) for key, value in metrics.items()}
        row = {"step": step, **values}
        self.history.append(row)
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        new_keys = [key for key in values if key not in self.keys]
        if new_keys:
            self.keys.update(dict.fromkeys(new_keys))
            self._rewrite_csv()
        else:
            with open(self.csv_path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=["step", *sorted(self.keys)], restval="").writerow(row)
        print(f"[step {step}] " + " | ".join(f"{key} {value:.4g}" for key, value in values.items()), flush=True)
        if self.run is not None:
            self.run.log(values, step=step)

    def plot(self, groups: dict[str, list[str]] | None = None, filename: str = "curves.png") -> str:
        """Save a PNG in run_dir with one subplot per group of keys plotted against step; returns its path.

        groups: title -> metric keys, e.g. `{"loss": ["train/loss"]}`; keys never
        logged are skipped, and so are groups with none logged. Default: one
        subplot per logged key (the first `MAX_DEFAULT_PLOTS`).
        """
        if groups is None:
            groups = {key: [key] for key in list(self.keys)[:MAX_DEFAULT_PLOTS]}
        panels = [(title, [key for key in keys if key in self.keys]) for title, keys in groups.items()]
        panels = [(title, keys) for title, keys in panels if keys]
        n_cols = min(3, max(1, len(panels)))
        n_rows = max(1, math.ceil(len(panels) / n_cols))
        fig = Figure(figsize=(4.5 * n_cols, 3.2 * n_rows), layout="constrained")
        axes = fig.subplots(n_rows, n_cols, squeeze=False).flatten()
        for ax, (title, keys) in zip(axes, panels):
            for key in keys:
                rows = [row for row in self.history if key in row]
                ax.plot([row["step"] for row in rows], [row[key] for row in rows], label=key)
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.legend(fontsize="small")
        for ax in axes[len(panels):]:
            ax.set_axis_off()
        if not panels:
            axes[0].text(0.5, 0.5, "no metrics logged yet", ha="center", va="center")
        path = os.path.join(self.run_dir, filename)
        with atomic_write(path, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
        return path

    def close(self) -> None:
        """Finish the wandb run, if any."""
        if self.run is not None:
            self.run.finish()
            self.run = None
