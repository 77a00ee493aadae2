"""Benchmark: the runner's training throughput against a bare torch loop, side by side in one run.

Both train the CPU-scale BN-x30 network (quarter-width BN-Inception, small-input stem,
channels_last, SGD with momentum) on in-memory Fashion-MNIST with the same batch and threads.
bare     : forward, backward, step on randomly indexed batches, nothing else.
runner   : `repro.train.run` with its data stream (shift + photometric augmentation, shuffling),
           learning-rate schedule, loss window, metrics records and checkpoints. Its training
           throughput is read from its own metrics.jsonl between the first and the last logged
           step, so the evaluations at step 0 and at the end are not counted.
Prints images/s for both and the ratio runner / bare (target >= 0.95).

    python scripts/bench_runner.py [--steps 300] [--experiment bn_x30]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from need_data import main as need_data  # noqa: E402  (scripts/, beside this file, is on sys.path)

import repro.models  # noqa: E402,F401
from repro.config import compose as compose_config  # noqa: E402
from repro.data.mnist import load_splits  # noqa: E402
from repro.optim import build_optimizer  # noqa: E402
from repro.runs import files  # noqa: E402
from repro.train import run  # noqa: E402

torch.set_num_threads(os.cpu_count())  # use every core


def bare(cfg, steps: int, warmup: int) -> float:
    """Images/s of a bare loop on the runner's model, optimizer, batch and data."""
    splits = load_splits(cfg.data)
    x, y = splits.x_train, splits.y_train
    m = cfg.model
    model = timm.create_model(m.name, num_classes=10, in_chans=1, width=m.width, small_input=m.small_input,
                              norm=m.norm, act=m.act, lrn=m.lrn, drop_rate=m.drop_rate)
    model = model.to(memory_format=torch.channels_last).train()
    opt = build_optimizer(model, cfg.optim)
    gen = torch.Generator().manual_seed(0)
    b = cfg.train.batch_size
    for i in range(steps):
        if i == warmup:
            t0 = time.perf_counter()
        idx = torch.randint(len(y), (b,), generator=gen)
        loss = F.cross_entropy(model(x[idx].contiguous(memory_format=torch.channels_last)), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (steps - warmup) * b / (time.perf_counter() - t0)


def runner(cfg, steps: int, warmup: int) -> float:
    summary = run(cfg)
    rows = [r for r in files.read_jsonl(Path(summary["run_dir"]) / "metrics.jsonl") if "loss" in r]
    first = next(r for r in rows if r["step"] >= warmup)
    last = rows[-1]
    return (last["step"] - first["step"]) * cfg.train.batch_size / (last["wall"] - first["wall"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--experiment", default="bn_x30")
    args = parser.parse_args()
    if need_data([f"experiment={args.experiment}", "scale=cpu", "scripts/bench_runner.py"]):
        sys.exit(2)  # it said in one line what to run
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config([f"experiment={args.experiment}", "scale=cpu", f"train.steps={args.steps}",
                              f"train.eval_every={args.steps}", f"train.log_every={args.warmup}",
                              "data.limit_test=500", f"runs_dir={tmp}", "logger.wandb.mode=disabled",
                              "logger.progress=off", "train.checkpoint_every=100"])
        print(f"{args.experiment} at cpu scale: batch {cfg.train.batch_size}, {args.steps} steps "
              f"({args.warmup} warm-up), torch {torch.__version__}, {torch.get_num_threads()} threads")
        b = bare(cfg, args.steps, args.warmup)
        print(f"bare torch loop : {b:8.1f} images/s")
        r = runner(cfg, args.steps, args.warmup)
        print(f"runner          : {r:8.1f} images/s (augmentation, schedule, records, checkpoints every 100 steps)")
        print(f"ratio runner/bare: {r / b:.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
