"""Alg. 2, step 5: replace each trained BN with the fixed affine map it computes at inference."""
import copy

import torch
from torch import nn


def _foldable(layer: nn.Module, bn: nn.Module) -> bool:
    """A conv/linear whose output feeds straight into a BN with population statistics."""
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_mean is None:
        return False
    if type(bn) is nn.BatchNorm2d and isinstance(layer, nn.Conv2d):
        return layer.out_channels == bn.num_features
    if type(bn) is nn.BatchNorm1d and isinstance(layer, nn.Linear):
        return layer.out_features == bn.num_features
    return False  # e.g. per-activation BN after a conv: a per-position scale is no conv


@torch.no_grad()
def _fold(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """y = γ/sqrt(Var+ε)·(Wu + b) + (β − γE[x]/sqrt(Var+ε)) as one layer (float64, then cast back)."""
    w = layer.weight.double()
    b = layer.bias.double() if layer.bias is not None else torch.zeros_like(bn.running_mean, dtype=w.dtype)
    gamma = bn.weight.double() if bn.affine else torch.ones_like(b)
    beta = bn.bias.double() if bn.affine else torch.zeros_like(b)
    # running_var is already the unbiased population estimate (Alg. 2: m/(m-1)·E_B[σ²_B])
    scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
    folded = copy.deepcopy(layer)
    folded.weight.copy_((w * scale.view(-1, *([1] * (w.dim() - 1)))).to(layer.weight.dtype))
    new_bias = (b - bn.running_mean.double()) * scale + beta
    folded.bias = nn.Parameter(new_bias.to(layer.weight.dtype), requires_grad=layer.weight.requires_grad)
    return folded


def fold_bn(model: nn.Module) -> nn.Module:
    """Eval-mode copy of `model` with every Conv2d->BatchNorm2d and Linear->BatchNorm1d pair folded.

    Pairs are adjacent children of an nn.Sequential, whose order is its execution order; the BN is
    replaced by nn.Identity. The input model is not modified.
    """
    model = copy.deepcopy(model).eval()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:], strict=False):
            layer, bn = seq._modules[a], seq._modules[b]
            if layer is not None and bn is not None and _foldable(layer, bn):
                seq._modules[a] = _fold(layer, bn)
                seq._modules[b] = nn.Identity()
    return model
