"""The Inception variant of Ioffe & Szegedy (2015), appendix Figure 5, with and without BN.

The appendix table *is* the configuration (`STEM`, `TABLES` below); modules carry the paper's names
(conv1, pool1, conv2, pool2, inception_3a ... inception_5b, pool, fc). Two registered names:

* `inception_paper`: the §4.2 baseline "Inception": no BN, LRN as in GoogLeNet, dropout 40% (§4.2.3).
* `bn_inception`: BN before every nonlinearity (§3.2, §4.2), LRN and dropout removed (§4.2.1).

Every switch works on both names (see `Inception.__init__`); e.g. BN-Baseline (§4.2.2, BN added and
nothing else changed) is `inception_paper` with `norm="bn"`, BN-x5-Sigmoid is `bn_inception` with
`act="sigmoid"`.

The printed table disagrees with itself at 4c/4d: the branch widths add up to 608, the printed
output is 576 (and 4e's 1024 only follows from 576). `table` picks a reading:

* `"slim"` (default): TF-slim's pool projections of 96 at 4c/4d, so 4c/4d output 576 and 4e 1024.
  Default because it keeps every printed output size and is the only reading with published counts
  (11,178,336 parameters, 3.87 GFLOPs = 1.935 GMAC), which tests/test_inception.py reproduces.
* `"caffe"`: the printed branch widths (pool proj 128), so 4c/4d output 608 and 4e 1056, as the Caffe port.

timm's model API as timm's generic tests check it (tests/test_timm_contract.py): `global_pool=""` with
`num_classes=0` gives the (B, C, H, W) map, "catavgmax" widens the fc, `forward_intermediates` taps
`feature_info`, `set_grad_checkpointing()`; `pretrained_cfg` states the pipeline's input ([0, 1] pixels).

Choices the paper leaves open (docs/paper-notes.md); ours, each with its reason:
* Pools as the `table`'s reference port (`pools="port"`, the default), 3x3/2 for every stride-2 pool:
  `slim` pools as TF-slim, "SAME" (stride-2 max pools start their windows at 0 and pad only after the
  last row and column when needed; average pools exclude the padding); `caffe` pools as the Caffe port
  (stride-2 max pools in ceil mode with no padding; average pools count the padding). Both halve 224
  exactly to 112/56/28/14/7. `pools="symmetric"` is the layout before issue 20 (every pool padded by 1 on
  each side, floor; average pools exclude the padding), kept so that runs recorded with it rebuild.
* Convolutions are padded symmetrically (k // 2), as the Caffe port; TF-slim's stride-2 convolutions
  are "SAME" (padding after only), which differs at even sizes (a step not taken here).
* BN learns γ and β (Alg. 1), unlike TF-slim's `scale=False`; eps 1e-3 as TF-slim.
* The separable conv1 is depthwise (no bias) then pointwise; its norm/bias follow the pointwise conv.
* Init: fan-in He normal on convs (TF-slim's variance scaling) times `init_scale`; fc N(0, 0.01²).
* `per_activation_bn=k` (§4.2.3 ensemble, "non-convolutional, per-activation BN in the model's last
  hidden layers"): every norm layer inside the last k Inception modules (k <= 2: 5b, then 5a, both at
  the final resolution) normalizes each of the C*H*W activations separately (BatchNorm1d over the
  flattened map, one γ/β per activation) instead of per feature map, whatever `norm` says for the rest.
  It needs `img_size`. The block flattens around the BN, so the BN itself is an ordinary BatchNorm1d
  that SyncBatchNorm conversion keeps intact. `fold_bn` leaves these layers as they are (a
  per-position scale is no conv).
* `small_input` (a step beyond the paper, for 28-64 px): conv1 becomes 3x3/1 and pool1 is dropped, so
  28 px reaches 3a at 14x14 and the head at 4x4; all modules are the same.
"""
from collections import OrderedDict
from functools import partial
from typing import NamedTuple

import torch
from timm.layers import create_classifier
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from repro.models.features import BlockFeatures
from repro.models.layers import LocalResponseNorm, make_norm, make_pool

__all__ = ["Inception", "make_norm", "PerActivationBN", "TABLES", "STEM"]


# ---------------------------------------------------------------------------------------------------
# The appendix table (Figure 5)


class Row(NamedTuple):
    """One Inception row: #1x1, #3x3 reduce, #3x3, double #3x3 reduce, double #3x3, pool, proj, stride."""

    n1x1: int
    n3x3red: int
    n3x3: int
    d3x3red: int
    d3x3: int
    pool: str
    proj: int  # 0 = "pass through"
    stride: int = 1


# conv1: convolution* 7x7/2 to 64, separable with depth multiplier 8; conv2: 1x1 reduce 64, 3x3 to 192.
STEM = dict(conv1=64, conv1_kernel=7, depth_multiplier=8, conv2_reduce=64, conv2=192)

PRINTED = OrderedDict(
    [
        ("3a", Row(64, 64, 64, 64, 96, "avg", 32)),  # 28x28x256
        ("3b", Row(64, 64, 96, 64, 96, "avg", 64)),  # 28x28x320
        ("3c", Row(0, 128, 160, 64, 96, "max", 0, stride=2)),  # 14x14x576 (printed at input size)
        ("4a", Row(224, 64, 96, 96, 128, "avg", 128)),  # 14x14x576
        ("4b", Row(192, 96, 128, 96, 128, "avg", 128)),  # 14x14x576
        ("4c", Row(160, 128, 160, 128, 160, "avg", 128)),  # widths sum to 608, printed 576
        ("4d", Row(96, 128, 192, 160, 192, "avg", 128)),  # widths sum to 608, printed 576
        ("4e", Row(0, 128, 192, 192, 256, "max", 0, stride=2)),  # 7x7x1024 (printed at input size)
        ("5a", Row(352, 192, 320, 160, 224, "avg", 128)),  # 7x7x1024
        ("5b", Row(352, 192, 320, 192, 224, "max", 128)),  # 7x7x1024
    ]
)
TABLES = {
    "caffe": PRINTED,  # printed branch widths: 4c/4d output 608, 4e 1056
    "slim": OrderedDict(  # printed output sizes: 4c/4d pool proj 96 (TF-slim inception_v2.py)
        (k, r._replace(proj=96) if k in ("4c", "4d") else r) for k, r in PRINTED.items()
    ),
}


# ---------------------------------------------------------------------------------------------------
# Components


ACTS = {"relu": partial(nn.ReLU, inplace=True), "sigmoid": nn.Sigmoid}


class PerActivationBN(nn.BatchNorm1d):
    """§4.2.3 ensemble: non-convolutional BN, statistics and (γ, β) per activation, not per map.

    It takes the flattened map (B, C*H*W); `ConvPerActBNAct` flattens around it. The reshape lives
    outside the BN so that SyncBatchNorm.convert_sync_batchnorm (or timm's), which swaps every
    _BatchNorm for a plain SyncBatchNorm, cannot drop it.
    """

    def __init__(self, num_channels: int, hw: int, **kwargs):
        super().__init__(num_channels * hw * hw, **kwargs)


class ConvNormAct(nn.Sequential):
    """conv -> norm -> act. BN normalizes Wu before the nonlinearity and replaces the bias b (§3.2)."""

    def __init__(self, cin, cout, kernel, stride=1, *, norm=None, act=ACTS["relu"], depth_multiplier=0):
        layers = OrderedDict()
        if depth_multiplier:  # conv1*: depthwise kxk (cin -> cin*mult) then pointwise 1x1 (appendix)
            mid = cin * depth_multiplier
            layers["dw"] = nn.Conv2d(cin, mid, kernel, stride, kernel // 2, groups=cin, bias=False)
            layers["conv"] = nn.Conv2d(mid, cout, 1, bias=norm is None)
        else:
            layers["conv"] = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=norm is None)
        if norm is not None:
            layers["norm"] = norm(cout)
        layers["act"] = act()
        super().__init__(layers)


class ConvPerActBNAct(ConvNormAct):
    """conv -> per-activation BN over the flattened map -> act (§4.2.3, the ensemble's last layers)."""

    def forward(self, x):
        x = self.conv(x)  # (B, C, H, W)
        x = self.norm(x.flatten(1)).view(x.shape)  # (B, C*H*W): one statistic per activation
        return self.act(x)


class InceptionModule(nn.Module):
    """One table row: 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3 (replaces GoogLeNet's 5x5) | pool (-> 1x1)."""

    def __init__(self, cin: int, row: Row, conv, pools: str = "symmetric"):
        super().__init__()
        s = row.stride  # 3c and 4e: stride-2 conv and pooling inside the module, before the concat
        self.branch_1x1 = conv(cin, row.n1x1, 1) if row.n1x1 else None
        self.branch_3x3 = nn.Sequential(
            OrderedDict(reduce=conv(cin, row.n3x3red, 1), conv=conv(row.n3x3red, row.n3x3, 3, s))
        )
        self.branch_dbl3x3 = nn.Sequential(
            OrderedDict(
                reduce=conv(cin, row.d3x3red, 1),
                conv_a=conv(row.d3x3red, row.d3x3, 3),
                conv_b=conv(row.d3x3, row.d3x3, 3, s),
            )
        )
        pool = make_pool(row.pool, s, pools)
        proj = OrderedDict(pool=pool, proj=conv(cin, row.proj, 1)) if row.proj else OrderedDict(pool=pool)
        self.branch_pool = nn.Sequential(proj)
        self.out_chs = row.n1x1 + row.n3x3 + row.d3x3 + (row.proj or cin)  # pass through keeps cin

    def forward(self, x):
        branches = [self.branch_3x3(x), self.branch_dbl3x3(x), self.branch_pool(x)]
        if self.branch_1x1 is not None:
            branches.insert(0, self.branch_1x1(x))
        return torch.cat(branches, 1)  # filter concatenation


# ---------------------------------------------------------------------------------------------------
# The network


class Inception(BlockFeatures, nn.Module):
    """Appendix Fig. 5 Inception; BN, LRN, dropout, activation and stem are switches."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        norm: str = "bn",
        act: str = "relu",
        drop_rate: float = 0.0,
        lrn: bool = False,
        conv1: str = "separable",
        table: str = "slim",
        pools: str = "port",
        per_activation_bn: int = 0,
        init_scale: float = 1.0,
        width: float = 1.0,
        small_input: bool = False,
        img_size: int | None = None,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.1,
        global_pool: str = "avg",
    ):
        super().__init__()
        if conv1 not in ("separable", "plain") or table not in TABLES or act not in ACTS:
            raise ValueError(f"bad conv1={conv1!r}, table={table!r} or act={act!r}")
        if not 0 <= per_activation_bn <= 2:
            raise ValueError("per_activation_bn counts modules at the final resolution: 0, 1 or 2")
        pools = table if pools == "port" else pools
        if pools == "caffe" and img_size is not None and img_size // (2 if small_input else 8) % 4:
            # ceil-mode pools beside floor-mode stride-2 convs agree only on even maps (3c and 4e)
            raise ValueError(f"pools as Caffe (ceil mode) need even maps before 3c and 4e: img_size={img_size} "
                             f"gives {img_size // (2 if small_input else 8)} after pool2; use a multiple of "
                             f"{8 if small_input else 32}, or pools='symmetric'")
        if per_activation_bn and img_size is None:
            raise ValueError("per_activation_bn needs img_size (one statistic per activation)")
        self.num_classes, self.drop_rate = num_classes, drop_rate

        def ch(c):  # width multiplier; 0 stays 0 (no 1x1 branch / pass through)
            return max(8, round(c * width)) if c else 0

        conv = partial(ConvNormAct, norm=make_norm(norm, bn_eps, bn_momentum), act=ACTS[act])
        stem = {k: ch(v) if k in ("conv1", "conv2_reduce", "conv2") else v for k, v in STEM.items()}
        k1, s1 = (3, 1) if small_input else (stem["conv1_kernel"], 2)
        mult = stem["depth_multiplier"] if conv1 == "separable" else 0

        self.conv1 = conv(in_chans, stem["conv1"], k1, s1, depth_multiplier=mult)
        # small_input keeps full resolution into conv2: a 28 px image cannot afford five halvings
        self.pool1 = nn.Identity() if small_input else make_pool("max", 2, pools)
        # LRN where GoogLeNet has it: after pool1 and after conv2 (§4.2.1 removes it with BN)
        self.lrn1 = LocalResponseNorm(5, alpha=1e-4, beta=0.75) if lrn else nn.Identity()
        self.conv2 = nn.Sequential(
            OrderedDict(
                reduce=conv(stem["conv1"], stem["conv2_reduce"], 1),
                conv=conv(stem["conv2_reduce"], stem["conv2"], 3),
            )
        )
        self.lrn2 = LocalResponseNorm(5, alpha=1e-4, beta=0.75) if lrn else nn.Identity()
        self.pool2 = make_pool("max", 2, pools)

        rows = list(TABLES[table].items())
        final_hw = None
        if per_activation_bn:  # halvings: conv1, pool1, pool2, 3c, 4e (small_input: pool2, 3c, 4e)
            final_hw = img_size
            for _ in range(3 if small_input else 5):
                final_hw = (final_hw - 1) // 2 + 1
        cin, reduction = stem["conv2"], 2 if small_input else 8  # after pool2
        # one feature per resolution (timm features_only): conv1, conv2, and the last module of each
        self.feature_info = [dict(num_chs=stem["conv1"], reduction=reduction // (2 if small_input else 4),
                                  module="conv1"), dict(num_chs=cin, reduction=reduction // 2, module="conv2")]
        for i, (name, row) in enumerate(rows):
            row = row._replace(**{f: ch(getattr(row, f)) for f in Row._fields if f not in ("pool", "stride")})
            mconv = conv
            if i >= len(rows) - per_activation_bn:  # last hidden layers: per-activation BN (§4.2.3)
                norm_pa = partial(PerActivationBN, hw=final_hw, eps=bn_eps, momentum=bn_momentum)
                mconv = partial(ConvPerActBNAct, norm=norm_pa, act=ACTS[act])
            module = InceptionModule(cin, row, mconv, pools)
            setattr(self, f"inception_{name}", module)
            cin, reduction = module.out_chs, reduction * row.stride
            if i + 1 == len(rows) or rows[i + 1][1].stride == 2:
                self.feature_info.append(dict(num_chs=cin, reduction=reduction, module=f"inception_{name}"))

        # forward_features' modules in execution order: forward_intermediates and checkpointing walk it
        self.block_names = ("conv1", "pool1", "lrn1", "conv2", "lrn2", "pool2", *(f"inception_{n}" for n, _ in rows))
        self.grad_checkpointing = False
        self.num_features = cin
        # Dropout before the classifier: 40% in Inception (§4.2.3), removed in BN-x5/x30 (§4.2.1)
        self.head_drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self._set_head(num_classes, global_pool)  # pool (avg pool 7x7/1 at 224) and fc
        self._init_weights(init_scale)

    def _set_head(self, num_classes: int, global_pool: str):
        """timm's pool + linear classifier; a pool that concatenates (catavgmax) widens the fc input."""
        if num_classes > 0 and not global_pool:
            raise ValueError(f"global_pool='' keeps the (B, C, H, W) map, which a linear classifier cannot take: "
                             f"pass num_classes=0 with it (got num_classes={num_classes})")
        self.num_classes = num_classes
        self.pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        self.head_hidden_size = self.num_features * self.pool.feat_mult()

    def _init_weights(self, init_scale: float = 1.0):
        """The paper gives no init; ensemble members use larger conv weights (§4.2.3)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                m.weight.data.mul_(init_scale)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
            # norm layers keep PyTorch's γ = 1, β = 0, i.e. BN starts as plain standardization

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None):
        self._set_head(num_classes, self.pool.pool_type if global_pool is None else global_pool)
        if num_classes > 0:
            nn.init.normal_(self.fc.weight, std=0.01)
            nn.init.zeros_(self.fc.bias)

    def forward_features(self, x):
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self._blocks(x, set(), None)[0]
        # shapes for the default 224x224 input and table="slim" (caffe: 608 at 4c/4d, 1056 from 4e)
        x = self.conv1(x)  # (B, 64, 112, 112)
        x = self.pool1(x)  # (B, 64, 56, 56)
        x = self.lrn1(x)
        x = self.conv2(x)  # (B, 192, 56, 56)
        x = self.lrn2(x)
        x = self.pool2(x)  # (B, 192, 28, 28)
        x = self.inception_3a(x)  # (B, 256, 28, 28)
        x = self.inception_3b(x)  # (B, 320, 28, 28)
        x = self.inception_3c(x)  # (B, 576, 14, 14)
        x = self.inception_4a(x)  # (B, 576, 14, 14)
        x = self.inception_4b(x)  # (B, 576, 14, 14)
        x = self.inception_4c(x)  # (B, 576, 14, 14)
        x = self.inception_4d(x)  # (B, 576, 14, 14)
        x = self.inception_4e(x)  # (B, 1024, 7, 7)
        x = self.inception_5a(x)  # (B, 1024, 7, 7)
        x = self.inception_5b(x)  # (B, 1024, 7, 7)
        return x

    def forward_head(self, x, pre_logits: bool = False):
        x = self.pool(x)  # (B, 1024); (B, 1024, 7, 7) with global_pool=""
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x)  # (B, num_classes)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


# ---------------------------------------------------------------------------------------------------
# Registered names


def _cfg(**kwargs):
    # What the pipeline feeds the net (repro.data.loaders): pixels scaled to [0, 1] and nothing subtracted
    # (mean 0, std 1), validation resized to 256/224 of the crop then center-cropped (crop_pct 0.875),
    # bilinear. first_conv is the conv that sees the image: the depthwise half of the separable conv1.
    return dict(
        url="", num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
        interpolation="bilinear", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
        first_conv="conv1.dw", classifier="fc", **kwargs,
    )


default_cfgs = generate_default_cfgs({"inception_paper": _cfg(), "bn_inception": _cfg()})


def _create(variant: str, pretrained: bool = False, **kwargs) -> Inception:
    if kwargs.get("conv1") == "plain":  # the image goes straight into conv1.conv
        kwargs["pretrained_cfg_overlay"] = {"first_conv": "conv1.conv", **(kwargs.get("pretrained_cfg_overlay") or {})}
    return build_model_with_cfg(Inception, variant, pretrained, **kwargs)


@register_model
def inception_paper(pretrained: bool = False, **kwargs) -> Inception:
    """§4.2 "Inception": no BN, LRN (§4.2.1), dropout 40% (§4.2.3)."""
    args = dict(norm="none", lrn=True, drop_rate=0.4)
    return _create("inception_paper", pretrained, **{**args, **kwargs})


@register_model
def bn_inception(pretrained: bool = False, **kwargs) -> Inception:
    """BN-Inception: BN before every nonlinearity, no LRN, no dropout (§4.2.1, BN-x5/x30)."""
    args = dict(norm="bn", lrn=False, drop_rate=0.0)
    return _create("bn_inception", pretrained, **{**args, **kwargs})
