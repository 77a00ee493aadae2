"""The MNIST network of Figure 1 (§4.1): 784-100-100-100-10, sigmoid, optional BN.

Each hidden layer computes y = g(Wu + b). With `norm="bn"` it computes y = g(BN(Wu)): BN sits
immediately before the sigmoid and the bias b is dropped, since BN's mean subtraction cancels it
and β takes its role (§3.2). The output layer has no BN (§4.1).

timm's model API: `forward_features` gives the last hidden layer (B, 100), `forward_head` the logits;
`num_classes=0` / `reset_classifier(0)` drop the output layer. The `pretrained_cfg` states what the
pipeline feeds the net: 28x28 MNIST pixels scaled to [0, 1], nothing subtracted.
"""

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
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

    def __init__(self, in_chans: int = 1, img_size: int = 28, hidden=PAPER_HIDDEN, num_classes: int = 10,
                 norm: str = "none", act: str = "sigmoid", init_std: float = 0.1):
        super().__init__()
        widths = [in_chans * img_size * img_size, *hidden]
        self.hidden = nn.Sequential(*(HiddenLayer(a, b, norm, act) for a, b in zip(widths, widths[1:])))
        self.num_features = self.head_hidden_size = widths[-1]
        self.num_classes, self.init_std = num_classes, init_std
        self.head = nn.Linear(widths[-1], num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights(init_std)

    def _init_weights(self, std: float) -> None:
        # §4.1: "small random Gaussian values"; the std is not stated (our choice, conf/model/mlp.yaml).
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new output layer, drawn as the others were; there is no pooling to change."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            nn.init.normal_(self.head.weight, std=self.init_std)
            nn.init.zeros_(self.head.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden(x.flatten(1))  # (B, 784) -> (B, 100)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x)  # (B, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# What the pipeline feeds the net (repro.data): MNIST's 28x28 pixels divided by 255, nothing subtracted.
default_cfgs = generate_default_cfgs({"mnist_mlp": dict(
    url="", num_classes=10, input_size=(1, 28, 28), pool_size=None, crop_pct=1.0, interpolation="bilinear",
    mean=(0.0,), std=(1.0,), first_conv="hidden.0.fc", classifier="head")})


@register_model
def mnist_mlp(pretrained: bool = False, **kwargs) -> MLP:
    """Figure 1's network; `norm="bn"` gives the BN variant."""
    if pretrained:
        raise ValueError("mnist_mlp has no pretrained weights")
    return build_model_with_cfg(MLP, "mnist_mlp", pretrained, **kwargs)
