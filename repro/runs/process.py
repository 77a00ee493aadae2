"""What a run's process sets before its first step, and when it evaluates: seeds, CPU threads and cuDNN as
the config says, and the log-spaced evaluations below the regular grid. Shared by repro.train and the
convolutional stack (repro.stacked.convrun), so a stack's member starts as its single run does."""

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
