"""The MNIST network of Figure 1 (§4.1): 784-100-100-100-10, sigmoid, optional BN.

Each hidden layer computes y = g(Wu + b). With `norm="bn"` it computes y = g(BN(Wu)): BN sits
immediately before the sigmoid and the bias b is dropped, since BN's mean subtraction cancels it
and β takes its role (§3.2). The output layer has no BN (§4.1).
"""

from __future__ import annotations

import torch
from timm.models import register_model
from torch import nn

# §4.1: three fully connected hidden layers of 100 sigmoid units.
PAPER_HIDDEN = (100, 100, 100)

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}


class HiddenLayer(nn.Module):
    """One hidden layer: linear, then BN (or nothing), then the nonlinearity."""

    def __init__(self, in_features: int, out_features: int, norm: str, act: str):
        super().__init__()
        if norm not in ("bn", "none"):
            raise ValueError(f"mnist_mlp: norm must be 'bn' or 'none', got {norm!r}")
        if act not in ACTIVATIONS:
            raise ValueError(f"mnist_mlp: act must be one of {sorted(ACTIVATIONS)}, got {act!r}")
        self.fc = nn.Linear(in_features, out_features, bias=norm == "none")
        # §3 Alg. 1 per activation; eps is not stated by the paper (our choice: PyTorch's 1e-5).
        self.norm = nn.BatchNorm1d(out_features) if norm == "bn" else nn.Identity()
        self.act = ACTIVATIONS[act]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.fc(x)))  # (B, out_features)


class MLP(nn.Module):
    """Fully connected classifier; the input image is flattened."""

    def __init__(self, in_features: int = 784, hidden=PAPER_HIDDEN, num_classes: int = 10,
                 norm: str = "none", act: str = "sigmoid", init_std: float = 0.1):
        super().__init__()
        widths = [in_features, *hidden]
        self.hidden = nn.Sequential(*(HiddenLayer(a, b, norm, act) for a, b in zip(widths, widths[1:])))
        self.head = nn.Linear(widths[-1], num_classes)
        self.num_classes = num_classes
        self._init_weights(init_std)

    def _init_weights(self, std: float) -> None:
        # §4.1: "small random Gaussian values"; the std is not stated (our choice, conf/model/mlp.yaml).
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (B, 784)
        return self.head(self.hidden(x))  # (B, 10)


# Arguments timm.create_model passes to every constructor; they mean nothing for this network.
_TIMM_ARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


@register_model
def mnist_mlp(pretrained: bool = False, in_chans: int = 1, img_size: int = 28, **kwargs) -> MLP:
    """Figure 1's network; `norm="bn"` gives the BN variant."""
    if pretrained:
        raise ValueError("mnist_mlp has no pretrained weights")
    for k in _TIMM_ARGS:
        kwargs.pop(k, None)
    return MLP(in_features=in_chans * img_size * img_size, **kwargs)
