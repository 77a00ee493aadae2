"""Benchmark: the full Figure 1 job against a bare torch loop, measured side by side in one run.

bare      : one process, torch's default threads, trains the two MLPs (no BN, BN) one after the
            other for --steps steps of --batch images — nothing but forward, backward and SGD.
pipeline  : `python -m repro.train -m experiment=fig1_baseline,fig1_bn` as `make reproduce` runs it
            (both nets, full-test-set evals, sigmoid probes, metrics/checkpoints/wandb-offline
            records), timed from launch to exit, process start-up included.
Prints both wall times and the ratio pipeline / bare (target <= 1.0).

    python scripts/bench_fig1.py [--steps 50000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent


def bare_mlp(bn: bool) -> nn.Sequential:
    layers, width = [nn.Flatten()], 784
    for _ in range(3):
        layers += [nn.Linear(width, 100, bias=not bn), *([nn.BatchNorm1d(100)] if bn else []), nn.Sigmoid()]
        width = 100
    return nn.Sequential(*layers, nn.Linear(100, 10))


def bare(steps: int, batch: int) -> float:
    """Seconds for the bare loop to train both nets on MNIST-sized in-memory data."""
    from repro.config import DataConfig
    from repro.data import load_splits

    splits = load_splits(DataConfig(name="mnist", binarize=True, download=False))
    x, y = splits.x_train, splits.y_train
    t0 = time.perf_counter()
    for bn in (False, True):
        torch.manual_seed(0)
        model = bare_mlp(bn)
        opt = torch.optim.SGD(model.parameters(), lr=3.0, foreach=True)
        gen = torch.Generator().manual_seed(0)
        for _ in range(steps):
            idx = torch.randint(len(y), (batch,), generator=gen)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


def pipeline(steps: int, batch: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "repro.train", "-m", "experiment=fig1_baseline,fig1_bn", "scale=cpu",
               f"train.steps={steps}", f"train.batch_size={batch}", "seed=1", f"runs_dir={tmp}/runs",
               f"logger.wandb.dir={tmp}/wandb", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
               "train.threads=1", "logger.progress=off"]
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        wall = time.perf_counter() - t0
        assert len(list(Path(tmp, "runs").glob("*/summary.json"))) == 2, "pipeline did not finish both runs"
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50000, help="steps per net (paper: 50,000)")
    parser.add_argument("--batch", type=int, default=60, help="batch size (paper: 60)")
    args = parser.parse_args()
    print(f"Figure 1 job, 2 nets x {args.steps:,} steps of {args.batch}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    t_bare = bare(args.steps, args.batch)
    print(f"bare torch loop     : {t_bare:7.1f} s  ({2 * args.steps / t_bare:,.0f} steps/s)")
    t_pipe = pipeline(args.steps, args.batch)
    print(f"pipeline (full job) : {t_pipe:7.1f} s  ({2 * args.steps / t_pipe:,.0f} steps/s, evals, probes, records)")
    print(f"ratio pipeline/bare : {t_pipe / t_bare:.2f}  (target <= 1.0)")


if __name__ == "__main__":
    main()
