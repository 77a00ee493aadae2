"""timm's model contract, as timm's generic tests (tests/test_models.py) check it, and SyncBN conversion.

Modelled on timm's test_model_default_cfgs(_non_std), test_model_forward_intermediates(_features) and
test_model_forward (grad checkpointing), at width 0.25 so they stay fast on CPU.
"""
import copy

import pytest
import timm
import torch
from timm.layers import convert_sync_batchnorm
from torch import nn
from torchvision.transforms import InterpolationMode

import repro.models  # noqa: F401  (registers the names with timm)
from repro.config import DataConfig
from repro.data.loaders import folder_transforms
from repro.errors import ReproError
from repro.models.inception import PerActivationBN
from repro.runs import dist
from repro.train import build_model
from tests.conftest import compose_config

CONV_NETS = ["bn_inception", "inception_paper"]


def net(name, **kw):
    torch.manual_seed(0)
    return timm.create_model(name, **{"width": 0.25, **kw}).eval()


def x224(b=2):
    return torch.randn(b, 3, 224, 224, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------------------------------
# Head: pooling off, classifier off, pools that widen the features


@pytest.mark.parametrize("name", CONV_NETS)
def test_default_cfg_contract(name):
    """timm's test_model_default_cfgs: unpooled features at pool_size, (B, C) without a classifier,
    (B, C, H, W) without pool and classifier, whether reset or created so."""
    m = net(name)
    x, cfg = x224(), m.pretrained_cfg
    with torch.no_grad():
        feats = m.forward_features(x)
        pre = m.forward_head(feats, pre_logits=True)
        assert feats.shape[1:] == (m.num_features, *cfg["pool_size"]) and pre.shape == (2, m.head_hidden_size)
        m.reset_classifier(0)
        assert m.num_classes == 0 and torch.equal(m(x), pre)
        m.reset_classifier(0, "")
        assert torch.equal(m(x), feats)  # the map itself, not flattened
        headless = net(name, num_classes=0, global_pool="")
        headless.load_state_dict(m.state_dict())  # the same weights (no fc: the init draws differ)
        assert torch.equal(headless(x), feats)
    sd = m.state_dict()
    assert f"{cfg['classifier']}.weight" in net(name).state_dict() and f"{cfg['first_conv']}.weight" in sd


@pytest.mark.parametrize("name", CONV_NETS)
def test_catavgmax_widens_head(name):
    m = net(name, num_classes=7, global_pool="catavgmax")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = m.forward_features(x)
        pre = m.forward_head(feats, pre_logits=True)
        expected = torch.cat([feats.mean((2, 3)), feats.amax((2, 3))], 1)
        torch.testing.assert_close(pre, expected)
        assert m(x).shape == (2, 7)
    assert (m.num_features, m.head_hidden_size, m.fc.in_features) == (256, 512, 512)
    m.reset_classifier(3)  # keeps the pool and its width
    assert m.fc.in_features == 512 and m(x).shape == (2, 3)


def test_no_pool_with_classifier_fails_at_construction():
    with pytest.raises(ValueError, match="num_classes=0"):
        net("bn_inception", global_pool="")
    m = net("bn_inception", num_classes=0, global_pool="")
    with pytest.raises(ValueError, match="num_classes=0"):
        m.reset_classifier(5)  # the pool is still off


# ---------------------------------------------------------------------------------------------------
# Feature API and checkpointing


@pytest.mark.parametrize("name", CONV_NETS)
def test_forward_intermediates_match_feature_hooks(name):
    """timm's test_model_forward_intermediates(_features): the maps of feature_info, the same as the
    hook-based features_only net, and the final output equal to forward_features."""
    m, x = net(name), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out, inter = m.forward_intermediates(x)
        torch.testing.assert_close(out, m.forward_features(x))
        hooked = net(name, features_only=True)(x)
        getter = net(name, features_only=True, feature_cls="getter")
        got = getter(x)
        last2 = m.forward_intermediates(x, indices=2, intermediates_only=True)
        pruned = net(name, features_only=True, feature_cls="getter", out_indices=(0, 1))  # prunes after conv2
        first2 = pruned(x)
    assert isinstance(pruned.model.inception_3a, nn.Identity) and isinstance(pruned.model.fc, nn.Identity)
    assert len(first2) == 2 and all(torch.equal(a, b) for a, b in zip(first2, inter[:2], strict=True))
    assert [t.shape[1] for t in inter] == [f["num_chs"] for f in m.feature_info] == getter.feature_info.channels()
    for a, b, c in zip(inter, hooked, got, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert len(last2) == 2 and all(torch.equal(a, b) for a, b in zip(last2, inter[-2:], strict=True))
    assert inter[0].shape[-1] == 32 and inter[-1].shape[-1] == 2  # reductions 2 and 32 at 64 px


def test_grad_checkpointing_same_output_and_gradients():
    """timm's --grad-checkpointing calls set_grad_checkpointing(); outputs and gradients are unchanged."""
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    kw = dict(num_classes=10, in_chans=1, small_input=True, per_activation_bn=1, img_size=28)
    runs = []
    for ckpt in (False, True):
        m = net("bn_inception", **kw).train()
        m.set_grad_checkpointing(ckpt)
        loss = nn.functional.cross_entropy(m(x), y)
        loss.backward()
        runs.append((loss.detach(), {n: p.grad for n, p in m.named_parameters()}, m))
    (l0, g0, m0), (l1, g1, m1) = runs
    torch.testing.assert_close(l1, l0)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-6, msg=n)
    # the recomputation in backward runs BN a second time: two running-statistic updates per step
    assert m0.conv2.conv.norm.num_batches_tracked.item() == 1
    assert m1.conv2.conv.norm.num_batches_tracked.item() == 2


# ---------------------------------------------------------------------------------------------------
# pretrained_cfg: what the pipeline feeds the net and which layer sees the image


@pytest.mark.parametrize("conv1", ["separable", "plain"])
def test_pretrained_cfg_states_the_pipeline(conv1):
    m = net("bn_inception", conv1=conv1, in_chans=3)
    cfg = m.pretrained_cfg
    seen = []
    first = m.get_submodule(cfg["first_conv"])
    first.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        m(x)
    assert seen and seen[0] is x  # first_conv is the layer the image goes into
    assert first.in_channels == cfg["input_size"][0] == len(cfg["mean"]) == len(cfg["std"])
    # repro.data.loaders: pixels scaled to [0, 1], no Normalize; validation resizes to 256/224 of the crop
    val = folder_transforms(DataConfig(name="imagenet", image_size=224))[1]
    names = [type(t).__name__ for t in val.transforms]
    assert "Normalize" not in names and set(cfg["mean"]) == {0.0} and set(cfg["std"]) == {1.0}
    resize = next(t for t in val.transforms if type(t).__name__ == "Resize")
    assert resize.size == [round(224 / cfg["crop_pct"])] and cfg["interpolation"] == "bilinear"
    assert InterpolationMode(resize.interpolation) == InterpolationMode(cfg["interpolation"])


def test_mnist_mlp_contract():
    """timm's test_model_default_cfgs_non_std for the Figure 1 MLP, and a pretrained_cfg true to the data."""
    m = timm.create_model("mnist_mlp", norm="bn").eval()
    cfg, sd = m.pretrained_cfg, m.state_dict()
    assert cfg["input_size"] == (1, 28, 28) and cfg["mean"] == (0.0,) and cfg["std"] == (1.0,)
    assert f"{cfg['first_conv']}.weight" in sd and sd[f"{cfg['first_conv']}.weight"].shape[1] == 784
    assert f"{cfg['classifier']}.weight" in sd and cfg["num_classes"] == m.num_classes == 10
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        feats = m.forward_features(x)
        assert feats.shape == (3, m.num_features) == (3, m.head_hidden_size)
        assert torch.equal(m.forward_head(feats), m(x))
        m.reset_classifier(0)
        assert m.num_classes == 0 and torch.equal(m(x), feats)
        assert timm.create_model("mnist_mlp", num_classes=0)(x).shape == (3, 100)
    m.reset_classifier(4)
    assert m(x).shape == (3, 4) and m.get_classifier() is m.head
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("mnist_mlp", pretrained=True)


# ---------------------------------------------------------------------------------------------------
# train.sync_bn: conversion keeps per-activation BN (ensemble_4/5/6 crashed before)


def _ensemble_member():
    torch.manual_seed(0)
    m = timm.create_model("bn_inception", num_classes=10, in_chans=1, small_input=True, width=0.25,
                          per_activation_bn=2, img_size=28, init_scale=2.0)
    for bn in m.modules():  # statistics and affine away from the defaults, so a swapped layer shows
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.uniform_(bn.bias, -0.5, 0.5)
    return m


def _same_in_train_and_eval(ref: nn.Module, conv: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        for mode in (True, False):  # train: batch statistics (and a running update); eval: running ones
            outs = []
            for m in (ref, conv):
                torch.manual_seed(1)  # the same dropout mask (ensemble members keep 5-10% dropout)
                outs.append(m.train(mode)(x))
            torch.testing.assert_close(outs[1], outs[0])
    for (n, a), (_, b) in zip(ref.state_dict().items(), conv.state_dict().items(), strict=True):
        torch.testing.assert_close(b, a, msg=n)  # the same running updates


@pytest.mark.parametrize("convert", [nn.SyncBatchNorm.convert_sync_batchnorm, convert_sync_batchnorm])
def test_sync_bn_conversion_keeps_per_activation_bn(convert):
    """torch's and timm's converters swap each BN class; per-activation BN keeps its statistics per
    activation. Without a process group SyncBatchNorm computes plain BN, so outputs must match."""
    ref = _ensemble_member()
    conv = convert(copy.deepcopy(ref))
    n_bn = sum(isinstance(b, nn.modules.batchnorm._BatchNorm) for b in ref.modules())
    assert sum(isinstance(b, nn.SyncBatchNorm) for b in conv.modules()) == n_bn
    assert not any(isinstance(b, PerActivationBN) for b in conv.modules())
    assert sum(isinstance(b, PerActivationBN) for b in ref.modules()) == 14  # every norm of 5a and 5b
    _same_in_train_and_eval(ref, conv, torch.randn(4, 1, 28, 28))


@pytest.mark.parametrize("member", [4, 5, 6])
def test_sync_bn_ensemble_members_from_their_configs(member):
    """The members that crashed under train.sync_bn=true, built by the runner from their experiment files."""
    cfg = compose_config([f"experiment=ensemble_{member}", "scale=smoke"])
    assert cfg.model.per_activation_bn
    torch.manual_seed(0)
    ref = build_model(cfg.model, in_chans=1, num_classes=10, img_size=28)
    _same_in_train_and_eval(ref, nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(ref)), torch.randn(4, 1, 28, 28))


def test_runner_sync_bn_path_in_a_one_process_group(tmp_path):
    """repro.runs.dist.sync_batchnorm, as the runner calls it: a no-op without a group; in a (1-process gloo)
    group it refuses CPU in one line (torch's SyncBatchNorm would raise at the first training step);
    the converted model evaluates like the original there (eval never synchronizes)."""
    ref = _ensemble_member()
    assert dist.sync_batchnorm(ref, torch.device("cpu")) is ref
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        with pytest.raises(ReproError, match="train.sync_bn=true needs GPUs"):
            dist.sync_batchnorm(ref, torch.device("cpu"))
        conv = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(ref)).eval()
        x = torch.randn(4, 1, 28, 28)
        with torch.no_grad():
            torch.testing.assert_close(conv(x), ref.eval()(x))
    finally:
        torch.distributed.destroy_process_group()
