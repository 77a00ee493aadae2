"""Figure 1's MLP: BN placement (§3.2), no bias before BN, and Alg. 1 in train mode."""

from __future__ import annotations

import timm
import torch
from torch import nn

import repro.models  # noqa: F401


def _mlp(norm: str) -> nn.Module:
    return timm.create_model("mnist_mlp", num_classes=10, in_chans=1, norm=norm, init_std=0.1)


def test_bn_sits_before_each_sigmoid_and_bias_is_dropped():
    model = _mlp("bn")
    layers = list(model.hidden)
    assert len(layers) == 3
    for layer in layers:
        kinds = [type(m) for m in layer.children()]
        assert kinds == [nn.Linear, nn.BatchNorm1d, nn.Sigmoid]  # z = g(BN(Wu))
        assert layer.fc.bias is None  # β takes the bias's role
        assert layer.norm.num_features == 100
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.head.modules())  # no BN on the output


def test_baseline_has_biases_and_no_bn():
    model = _mlp("none")
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    assert all(layer.fc.bias is not None for layer in model.hidden)
    widths = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]
    assert widths == [100, 100, 100, 10]


def test_bn_output_is_normalized_per_unit_in_train_mode():
    """Alg. 1: with γ=1, β=0, each unit's BN output has mini-batch mean 0 and (biased) variance 1."""
    torch.manual_seed(0)
    model = _mlp("bn").train()
    captured = []
    model.hidden[1].norm.register_forward_hook(lambda m, i, o: captured.append(o))
    model(torch.rand(256, 1, 28, 28) * 3 + 1)
    out = captured[0]
    assert torch.allclose(out.mean(0), torch.zeros(100), atol=1e-5)
    assert torch.allclose(out.var(0, unbiased=False), torch.ones(100), atol=1e-3)


def test_mlp_rejects_unknown_switch():
    try:
        timm.create_model("mnist_mlp", num_classes=10, lrn=True)
    except TypeError as e:
        assert "lrn" in str(e)
    else:
        raise AssertionError("unknown switch accepted")


def test_fold_bn_folds_all_three_of_the_bn_mlps_norms():
    """fold_bn finds the MLP's Linear -> BN pairs inside each hidden layer (no Sequential holds them) and the
    folded network gives the eval-mode outputs."""
    from repro.models import fold_bn

    torch.manual_seed(0)
    m = _mlp("bn")
    for bn in (b for b in m.modules() if isinstance(b, nn.BatchNorm1d)):  # statistics a misfold would show
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -0.5, 0.5)
    folded = fold_bn(m)
    assert sum(isinstance(b, nn.BatchNorm1d) for b in m.modules()) == 3 and m.training  # input untouched
    assert not any(isinstance(b, nn.BatchNorm1d) for b in folded.modules())
    assert all(layer.fc.bias is not None for layer in folded.hidden)  # β and the statistics went into the bias
    x = torch.rand(16, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), m.eval()(x), rtol=1e-5, atol=1e-6)
