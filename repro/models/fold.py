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


def _traced_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(layer, BN) names where torch.fx's trace shows the BN called on the layer's output and on nothing
    else, each module called once: the pairs of any network fx traces (the MLP's fc -> norm inside each
    hidden layer, which no Sequential holds). [] where fx cannot trace the network."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # e.g. data-dependent control flow: the Sequential pairs only
        return []
    calls = [n for n in graph.nodes if n.op == "call_module"]
    once = {t for t in (n.target for n in calls) if sum(m.target == t for m in calls) == 1}
    return [(n.args[0].target, n.target) for n in calls
            if len(n.args) == 1 and not n.kwargs and isinstance(n.args[0], torch.fx.Node)
            and n.args[0].op == "call_module" and len(n.args[0].users) == 1
            and n.target in once and n.args[0].target in once]


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def fold_bn(model: nn.Module) -> nn.Module:
    """Eval-mode copy of `model` with every Conv2d->BatchNorm2d and Linear->BatchNorm1d pair folded.

    Pairs are adjacent children of an nn.Sequential, whose order is its execution order, and, in a network
    torch.fx traces, a layer whose only use is a BN's input (the Figure 1 MLP's three); the BN is replaced
    by nn.Identity. The input model is not modified.
    """
    model = copy.deepcopy(model).eval()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:], strict=False):
            layer, bn = seq._modules[a], seq._modules[b]
            if layer is not None and bn is not None and _foldable(layer, bn):
                seq._modules[a] = _fold(layer, bn)
                seq._modules[b] = nn.Identity()
    for a, b in _traced_pairs(model):
        layer, bn = model.get_submodule(a), model.get_submodule(b)
        if _foldable(layer, bn):
            _replace(model, a, _fold(layer, bn))
            _replace(model, b, nn.Identity())
    return model
