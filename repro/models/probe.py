"""The Figure 1b/1c probe: percentiles of the input to the last hidden layer's sigmoids during training."""

from __future__ import annotations

import torch
from torch import nn


class SigmoidProbe:
    """Figure 1b/1c: 15th/50th/85th percentiles of the input to last-hidden-layer sigmoids.

    Measured on a fixed held-out batch with the inference network, for the first `units` units.
    """

    QUANTILES = (0.15, 0.50, 0.85)

    def __init__(self, model: nn.Module, x: torch.Tensor, units: int):
        sigmoids = [m for m in model.modules() if isinstance(m, nn.Sigmoid)]
        self.module = sigmoids[-1] if sigmoids else None
        self.x, self.units = x, units
        self.q = torch.tensor(self.QUANTILES, device=x.device)

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> dict | None:
        if self.module is None:
            return None
        captured = []
        handle = self.module.register_forward_hook(lambda m, inp, out: captured.append(inp[0]))
        model.eval()
        model(self.x)
        model.train()
        handle.remove()
        pre = captured[0].flatten(1)[:, : self.units].float()  # (B, units)
        p = torch.quantile(pre, self.q, dim=0).cpu().tolist()  # (3, units)
        return {"p15": p[0], "p50": p[1], "p85": p[2]}
