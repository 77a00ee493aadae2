"""Alg. 2, step 4: population statistics for the inference network, and how far the EMA is from them.

Training leaves PyTorch's moving averages in each BN layer's running_mean/running_var (the §3.1
alternative). Alg. 2 itself freezes the trained network and, for each BN input x^(k), averages over
K training mini-batches B of size m:

    E[x]   <- E_B[mu_B]
    Var[x] <- m/(m-1) * E_B[sigma^2_B]        (sigma^2_B the biased batch variance of Alg. 1)

In conv layers B is a feature map over the batch and all positions, so m is the effective batch
m' = m*p*q (§3.2). We apply the m/(m-1) factor per batch (the mean of unbiased batch
variances), which is the same thing when every batch has size m, as here.

During the pass every BN layer normalizes with its batch statistics, as in training, so x^(k) are
the activations of the trained network; dropout is off (inference network), and the forward itself
updates no running buffer. Under DDP the per-rank sums are all-reduced, so every rank ends with the
same statistics: the average over all ranks' batches.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from repro.runs import dist

# ----------------------------------------------------------------------------------------------
# Components


def bn_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """Every BN layer that keeps running statistics (those are what inference uses)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm) and m.running_mean is not None]


def _batch_moments(bn: _BatchNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Biased variance and mean per feature of one batch (float64), and m' the values behind each."""
    c, x = bn.num_features, x.detach().to(torch.float64)
    if x.dim() >= 2 and x.shape[1] == c:  # per channel: B spans the batch and all positions (§3.2)
        dims = [0, *range(2, x.dim())]
    elif x[0].numel() == c:  # per-activation BN over a flattened map (§4.2.3 ensemble members)
        x, dims = x.reshape(len(x), c), [0]
    else:
        raise ValueError(f"BN layer with {c} features got input of shape {tuple(x.shape)}")
    var, mean = torch.var_mean(x, dim=dims, correction=0)  # Alg. 1: the biased batch variance
    return var, mean, x.numel() // c


class _Accumulator:
    """Float64 sums of batch means and unbiased batch variances of one BN input."""

    def __init__(self, bn: _BatchNorm):
        self.bn = bn
        self.sums = torch.zeros(2, bn.num_features, dtype=torch.float64, device=bn.running_mean.device)
        self.batches = 0

    def __call__(self, module: nn.Module, args: tuple) -> None:
        var, mean, m = _batch_moments(self.bn, args[0])
        if m < 2:
            raise ValueError("population statistics need batches of at least 2 values per feature")
        self.sums[0] += mean
        self.sums[1] += var * (m / (m - 1))  # Alg. 2: m/(m-1) makes the average unbiased
        self.batches += 1


# ----------------------------------------------------------------------------------------------
# Population statistics (Alg. 2)


@torch.no_grad()
def population_statistics(model: nn.Module, batches: Iterable[torch.Tensor], num_batches: int) -> nn.Module:
    """An eval-mode copy of `model` whose BN buffers hold Alg. 2's population mean and variance.

    Uses the first `num_batches` of `batches` (this rank's share under DDP); `model` is untouched.
    """
    pop = copy.deepcopy(model)
    pop.eval()  # inference network: dropout off
    layers = bn_layers(pop)
    accs = {name: _Accumulator(bn) for name, bn in layers}
    handles = [acc.bn.register_forward_pre_hook(acc) for acc in accs.values()]
    for _, bn in layers:
        # Batch statistics, as the trained network computed x^(k); with track_running_stats off
        # PyTorch neither reads nor updates the running buffers (nor num_batches_tracked).
        bn.train()
        bn.track_running_stats = False
    if not layers:
        return pop
    device = layers[0][1].running_mean.device
    seen = 0
    try:
        for x in batches:
            if seen == num_batches:
                break
            pop(x.to(device))
            seen += 1
    finally:
        for h in handles:
            h.remove()
        for _, bn in layers:
            bn.track_running_stats = True
            bn.eval()
    # One all-reduce for all layers (sums and batch counts): every batch of every rank weighs the same.
    flat = torch.cat([torch.cat([a.sums.flatten(), a.sums.new_tensor([a.batches])]) for a in accs.values()])
    dist.all_reduce_sum(flat)
    offset = 0
    for name, bn in layers:
        c = bn.num_features
        sums, count = flat[offset:offset + 2 * c].view(2, c), flat[offset + 2 * c].item()
        offset += 2 * c + 1
        if count == 0:
            raise ValueError(f"no batch reached BN layer {name!r}: pass num_batches >= 1")
        bn.running_mean.copy_(sums[0] / count)
        bn.running_var.copy_(sums[1] / count)
    return pop


# ----------------------------------------------------------------------------------------------
# Audit: moving averages against population statistics


@torch.no_grad()
def bn_audit(ema_model: nn.Module, pop_model: nn.Module) -> list[dict]:
    """Per BN layer, how far the training EMA is from the population statistics.

    Both gaps are measured in the units inference uses: `dmean` is |mu_ema - mu_pop| over the
    population std sqrt(var_pop + eps), i.e. the shift the EMA adds to the normalized activation x-hat;
    `dlogvar` is |log((var_ema + eps) / (var_pop + eps))|, twice the log of the scale error of x-hat.
    Max and mean are over the layer's channels (or activations, for per-activation BN).
    """
    pop = dict(bn_layers(pop_model))
    rows = []
    for name, ema in bn_layers(ema_model):
        p = pop[name]
        var_pop = p.running_var.double() + p.eps
        dmean = (ema.running_mean.double() - p.running_mean.double()).abs() / var_pop.sqrt()
        dlogvar = ((ema.running_var.double() + ema.eps) / var_pop).log().abs()
        rows.append({
            "name": name, "channels": ema.num_features,
            "dmean_max": dmean.max().item(), "dmean_mean": dmean.mean().item(),
            "dlogvar_max": dlogvar.max().item(), "dlogvar_mean": dlogvar.mean().item(),
        })
    return rows


def buffers_identical_across_ranks(model: nn.Module) -> bool:
    """True when every rank holds bit-identical BN running statistics (always True at world size 1)."""
    h = hashlib.sha1()
    for name, bn in bn_layers(model):
        h.update(name.encode())
        for buf in (bn.running_mean, bn.running_var):
            h.update(buf.detach().cpu().contiguous().numpy().tobytes())
    return len(set(dist.all_gather_objects(h.hexdigest()))) == 1

