"""Optimizer and learning-rate schedule; the rate is a pure function of the step."""

from __future__ import annotations

import torch
from torch import nn

from repro.config import OptimConfig
from repro.errors import ReproError


def peak_lr(cfg: OptimConfig) -> float:
    """The initial rate actually used: base x multiplier (§4.2.1 change 1: x5 for BN-x5, x30 for BN-x30)."""
    return cfg.lr * cfg.lr_mult


def lr_at(step: int, cfg: OptimConfig) -> float:
    """Learning rate at `step`.

    exponential: lr0 * decay_rate ** (step * decay_speedup / decay_steps); §4.2.1 change 4 makes the
    decay "6 times faster" by decay_speedup=6, relative to whatever decay_steps the scale sets.
    """
    lr0 = peak_lr(cfg)
    if cfg.schedule == "constant":
        return lr0
    if cfg.schedule == "exponential":
        t = step * cfg.decay_speedup / cfg.decay_steps
        return lr0 * cfg.decay_rate ** (int(t) if cfg.staircase else t)
    raise ReproError(f"optim.schedule={cfg.schedule!r} is not valid: use constant or exponential")


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (with momentum, as §4.2 for Inception) or Adam; L2 = weight_decay x weight_decay_mult.

    L2 applies to weights only, not to biases or BN's β/γ (1-d tensors), as TF-slim regularizes only
    conv and FC weights (docs/paper-notes.md).
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    wd = cfg.weight_decay * cfg.weight_decay_mult
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    lr = lr_at(0, cfg)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, foreach=True)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=lr, foreach=True)
    raise ReproError(f"optim.name={cfg.name!r} is not valid: use sgd or adam")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr
