"""Section 2 of scripts/gpu_check.py: the runner against a bare loop on the same model, batch and data."""

from __future__ import annotations

import collections
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_models import seconds
from torch.utils._python_dispatch import TorchDispatchMode

from repro.config import compose
from repro.data.mnist import load_splits
from repro.optim import build_optimizer
from repro.runs import files, rundir
from repro.train import build_model, run


class _OpCounter(TorchDispatchMode):
    """Counts the operators dispatched (each a kernel launch or a view) while active."""

    def __init__(self):
        super().__init__()
        self.n = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def _bare_step(cfg, device):
    """One step of the bare loop: the runner's model, optimizer, batch and precision, on the images of
    the runner's data already on the device, indices drawn there; no augmentation, schedule or records."""
    x = load_splits(cfg.data).x_train.to(device)
    model = build_model(cfg.model, 1, 10, 28).to(device, memory_format=torch.channels_last).train()
    opt = build_optimizer(model, cfg.optim)
    gen = torch.Generator(device=device).manual_seed(0)
    y = torch.randint(0, 10, (len(x),), device=device, generator=gen)
    b = cfg.train.batch_size

    def step():
        idx = torch.randint(len(x), (b,), device=device, generator=gen)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.amp):
            loss = F.cross_entropy(model(x[idx].contiguous(memory_format=torch.channels_last)), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _ops_per_step(overrides: list[str], bare, n: int = 10) -> dict:
    """Operators dispatched per training step: the runner's (its whole run at n and 2n steps, the
    difference over n) and the bare loop's."""
    counts = []
    for steps in (n, 2 * n):
        with _OpCounter() as c:
            run(compose([*overrides, f"train.steps={steps}", f"train.eval_every={4 * n}", f"train.log_every={4 * n}",
                         "data.limit_test=64", "resume=never"]))
        counts.append(c.n)
    runner = {k: (counts[1][k] - counts[0][k]) / n for k in counts[1]}
    with _OpCounter() as c:
        for _ in range(n):
            bare()
    plain = {k: v / n for k, v in c.n.items()}
    extra = {k: runner.get(k, 0) - plain.get(k, 0) for k in set(runner) | set(plain)}
    return {"runner": sum(runner.values()), "bare": sum(plain.values()),
            "extra": dict(sorted(((k, v) for k, v in extra.items() if abs(v) >= 0.5), key=lambda kv: -abs(kv[1])))}


def runner(sz, device, fmnist: Path, tmp: Path) -> dict:
    """bn_x30 at gpu-scale width, batch and precision on in-memory Fashion-MNIST already on the GPU."""
    n = sz.runner_steps
    overrides = ["experiment=bn_x30", "scale=gpu", "data.name=fashion_mnist", "data.source=debian",
                 f"data.debian_dir={fmnist}", f"train.device={device.type}", f"runs_dir={tmp / 'runner'}",
                 "logger.wandb.mode=disabled", "logger.progress=off"]
    if device.type == "cpu":
        overrides += [f"model.width={sz.width}", "train.batch_size=8", "train.amp=false"]
    cfg = compose([*overrides, f"train.steps={n}", f"train.eval_every={n}", f"train.log_every={n // 6}",
                   f"data.limit_test={1000 if device.type == 'cuda' else 64}"])
    bare, b = _bare_step(cfg, device), cfg.train.batch_size
    log_every = cfg.train.log_every
    timed = n - log_every  # the runner is timed from its first logged step to its last

    def bare_rate() -> float:
        for _ in range(log_every):
            bare()
        return b * timed / seconds(bare, timed, device)

    before = bare_rate()
    summary = run(cfg)
    after = bare_rate()
    rows = [r for r in files.read_jsonl(Path(summary["run_dir"]) / "metrics.jsonl") if "loss" in r]
    first, last = rows[0], rows[-1]  # steps log_every .. n: no evaluation inside
    runner_ips = (last["step"] - first["step"]) * b / (last["wall"] - first["wall"])
    bare_ips = max(before, after)
    return {"experiment": "bn_x30", "batch": b, "amp": cfg.train.amp, "width": cfg.model.width,
            "data": summary["data"]["source"], "timed_steps": timed, "runner_images_s": runner_ips,
            "bare_images_s": bare_ips, "bare_before_after": [before, after], "ratio": runner_ips / bare_ips,
            "checkpoint_s": _checkpoint_seconds(Path(summary["run_dir"])),
            "checkpoint_every_gpu_scale": compose(["experiment=bn_x30", "scale=gpu"]).train.checkpoint_every,
            "ops_per_step": _ops_per_step(overrides, bare)}


def _checkpoint_seconds(run_dir: Path) -> float:
    """Seconds to write the run's checkpoint once more (what each checkpoint_every costs)."""
    state = torch.load(run_dir / "ckpt.pt", map_location="cpu", weights_only=False)
    t0 = time.perf_counter()
    rundir.save_checkpoint(run_dir, state)
    return time.perf_counter() - t0
