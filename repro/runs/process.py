"""What a run's process sets before its first step, and when it evaluates: seeds, CPU threads and cuDNN as
the config says, the RNG states a checkpoint keeps for an exact resume, and the log-spaced evaluations
below the regular grid. Shared by repro.train and the stacks (repro.stacked), so a stack's member starts
and resumes as its single run does."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

from repro.config import Config, TrainConfig
from repro.runs import dist

log = logging.getLogger("repro.train")


def seed_and_backends(cfg: Config, device: torch.device) -> None:
    """Seeds, CPU threads and cuDNN as the config says; the scale's estimated cost, logged."""
    t_cfg = cfg.train
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed + dist.rank())  # dropout differs per replica; data order does not
    if t_cfg.threads > 0:
        torch.set_num_threads(t_cfg.threads)
    if device.type == "cuda":  # autotuned cuDNN kernels are fastest but may differ between runs
        torch.backends.cudnn.benchmark = not t_cfg.deterministic
        if t_cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)  # warns where an op has no such kernel
    if cfg.scale.images_per_gpu_s and dist.is_main():
        images = t_cfg.steps * t_cfg.batch_size * dist.world_size()
        log.info("scale %s: %.3g images, about %.0f GPU-hours at %.0f images/s per GPU", cfg.scale.name, images,
                 images / cfg.scale.images_per_gpu_s / 3600, cfg.scale.images_per_gpu_s)


def dense_eval_steps(t: TrainConfig) -> frozenset[int]:
    """The evaluations `train.eval_log` adds below the regular grid: that many log-spaced steps from
    eval_every / 64 up to eval_every, rounded (so speed-ups far beyond the regular grid stay resolved)."""
    if not t.eval_log:
        return frozenset()
    return frozenset(int(round(x)) for x in np.geomspace(t.eval_every / 64, t.eval_every, t.eval_log + 1)[:-1]) - {0}


def rng_state() -> dict:
    """This process's RNG states (torch, Python, NumPy, CUDA), as a checkpoint keeps them for an exact resume:
    tensors, tuples and numbers only, so the checkpoint loads under torch.load(weights_only=True)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    n = s["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
                        if isinstance(n, dict) else n)
    if s["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
