"""Benchmark: the Figure 1 map (issue 10) and the Figure 1 job against a bare torch loop, side by side.

bare      : one process, torch's default threads, trains the two MLPs (no BN, BN) one after the
            other for --bare-steps steps of --batch images — nothing but forward, backward and SGD.
            Timed before and after the map (the machine is shared; the mean is used). Its time per step
            does not depend on the rate or init, so the bare loop training the map's runs one after
            another takes (settings x seeds) x this pair's time, scaled to --steps.
map       : `python -m repro.stacked --map results/fig1/map/claims.yaml train.steps=N` as `make fig1-map`
            runs it: every net, rate, init and seed of the ledger's grid, with its evaluations on the whole
            test set, sigmoid probes, metrics and checkpoints, timed from launch to exit (process start-up
            and torch.compile included).
pipeline  : (--pipeline) `python -m repro.train -m experiment=fig1_baseline,fig1_bn` as `make reproduce`
            runs it, against the bare pair (target <= 1.0).
The last line is the ratio map / bare (target <= 0.25).

    python scripts/bench_fig1.py [--steps 50000] [--runs-dir DIR] [--pipeline]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
LEDGER = ROOT / "results" / "fig1" / "map" / "claims.yaml"


def bare_mlp(bn: bool) -> nn.Sequential:
    layers, width = [nn.Flatten()], 784
    for _ in range(3):
        layers += [nn.Linear(width, 100, bias=not bn), *([nn.BatchNorm1d(100)] if bn else []), nn.Sigmoid()]
        width = 100
    return nn.Sequential(*layers, nn.Linear(100, 10))


def bare(steps: int, batch: int, cpu: list | None = None) -> float:
    """Seconds for the bare loop to train both nets on MNIST-sized in-memory data (its CPU seconds, all
    threads, appended to `cpu`)."""
    from repro.config import DataConfig
    from repro.data.mnist import load_splits

    splits = load_splits(DataConfig(name="mnist", binarize=True, download=False, root=str(ROOT / "data")))
    x, y = splits.x_train, splits.y_train
    t0, c0 = time.perf_counter(), time.process_time()
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
    if cpu is not None:
        cpu.append(time.process_time() - c0)
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


def run_map(steps: int, runs_dir: str | None, cpu: list) -> float:
    """Wall seconds of the whole map (its processes' CPU seconds appended to `cpu`)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory() as tmp:
        out = runs_dir or f"{tmp}/runs"
        cmd = [sys.executable, "-m", "repro.stacked", "--map", str(LEDGER), f"train.steps={steps}", f"runs_dir={out}"]
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        done = list(Path(out).glob("*/summary.json"))
        print(f"map: {len(done)} runs finished in {out}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50000, help="steps per net (paper: 50,000)")
    parser.add_argument("--bare-steps", type=int, default=None, help="steps of the timed bare pair (default: min(steps, 5000))")
    parser.add_argument("--batch", type=int, default=60, help="batch size (paper: 60)")
    parser.add_argument("--runs-dir", default=None, help="keep the map's run directories here (default: a temporary folder)")
    parser.add_argument("--pipeline", action="store_true", help="also time the Figure 1 job (make reproduce)")
    args = parser.parse_args()
    grid = yaml.safe_load(LEDGER.read_text())["grid"]
    pairs = len(grid["lr"]) * len(grid["init_std"]) * len(grid["seeds"])
    bare_steps = args.bare_steps or min(args.steps, 5000)
    print(f"Figure 1 map, {2 * pairs} runs x {args.steps:,} steps of {args.batch}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
    if args.pipeline:
        t_bare = bare(args.steps, args.batch)
        print(f"bare torch loop     : {t_bare:7.1f} s  ({2 * args.steps / t_bare:,.0f} steps/s)")
        t_pipe = pipeline(args.steps, args.batch)
        print(f"pipeline (full job) : {t_pipe:7.1f} s  ({2 * args.steps / t_pipe:,.0f} steps/s, evals, probes, records)")
        print(f"ratio pipeline/bare : {t_pipe / t_bare:.2f}  (target <= 1.0)")
    bare_cpu, map_cpu = [], []
    before = bare(bare_steps, args.batch, bare_cpu)
    print(f"bare pair, {bare_steps:,} steps each, before the map: {before:7.1f} s")
    t_map = run_map(args.steps, args.runs_dir, map_cpu)
    after = bare(bare_steps, args.batch, bare_cpu)
    print(f"bare pair, {bare_steps:,} steps each, after the map : {after:7.1f} s (load average {os.getloadavg()[0]:.2f})")
    t_bare = (before + after) / 2 * args.steps / bare_steps * pairs
    print(f"bare loop, the map's {2 * pairs} runs one after another: {t_bare:8.1f} s ({pairs} pairs x the mean pair, "
          f"scaled to {args.steps:,} steps)")
    print(f"map (stacked, 2 processes, evals, probes, records): {t_map:8.1f} s "
          f"({2 * pairs * args.steps / t_map:,.0f} member-steps/s)")
    cpu_bare = sum(bare_cpu) / len(bare_cpu) * args.steps / bare_steps * pairs
    print(f"CPU seconds (all threads; less sensitive to other jobs on a shared machine): bare {cpu_bare:.1f}, map "
          f"{map_cpu[0]:.1f}, ratio {map_cpu[0] / cpu_bare:.3f}")
    print(f"ratio map/bare : {t_map / t_bare:.3f}  (target <= 0.25)")


if __name__ == "__main__":
    main()
