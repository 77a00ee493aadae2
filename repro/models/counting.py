"""Per-image multiply-accumulates of conv and linear layers, counted with forward hooks."""
import torch
from torch import nn


@torch.no_grad()
def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs per image: output elements x (in_channels / groups) x kh x kw for each Conv2d and Linear."""
    total = 0

    def hook(m, inp, out):
        nonlocal total
        per_out = m.in_features if isinstance(m, nn.Linear) else (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        total += out.numel() // x.shape[0] * per_out

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    was_training = model.training
    model.eval()  # no BN running-statistics update
    try:
        model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total
