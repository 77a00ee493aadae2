"""The appendix Fig. 5 network: shapes, counts from the table, switches, BN folding (Alg. 2), gradients."""
import timm
import torch
from torch import nn

import repro.models  # noqa: F401  (registers the names with timm)
from repro.models import count_macs, fold_bn
from repro.models.inception import PerActivationBN

# Appendix Fig. 5, typed in again here so counts are checked against the paper, not against the model:
# (#1x1, #3x3 reduce, #3x3, double #3x3 reduce, double #3x3, pool proj (0 = pass through), stride)
PAPER = {
    "3a": (64, 64, 64, 64, 96, 32, 1),
    "3b": (64, 64, 96, 64, 96, 64, 1),
    "3c": (0, 128, 160, 64, 96, 0, 2),
    "4a": (224, 64, 96, 96, 128, 128, 1),
    "4b": (192, 96, 128, 96, 128, 128, 1),
    "4c": (160, 128, 160, 128, 160, 128, 1),
    "4d": (96, 128, 192, 160, 192, 128, 1),
    "4e": (0, 128, 192, 192, 256, 0, 2),
    "5a": (352, 192, 320, 160, 224, 128, 1),
    "5b": (352, 192, 320, 192, 224, 128, 1),
}
SLIM = {**PAPER, "4c": (160, 128, 160, 128, 160, 96, 1), "4d": (96, 128, 192, 160, 192, 96, 1)}
# Printed output sizes (224 input): the (sic) rows 3c/4e printed at input resolution are shown at output.
STAGES_SLIM = {
    "conv2": (192, 56), "inception_3a": (256, 28), "inception_3b": (320, 28), "inception_3c": (576, 14),
    "inception_4a": (576, 14), "inception_4b": (576, 14), "inception_4c": (576, 14),
    "inception_4d": (576, 14), "inception_4e": (1024, 7), "inception_5a": (1024, 7), "inception_5b": (1024, 7),
}
STAGES_CAFFE = {**STAGES_SLIM, "inception_4c": (608, 14), "inception_4d": (608, 14),
                "inception_4e": (1056, 7), "inception_5a": (1024, 7), "inception_5b": (1024, 7)}


def table_counts(table, separable=True, classes=1000):
    """(weights incl. FC bias, MACs per 224 image, channels of layers that get a norm or bias)."""
    weights = macs = normed = 0

    def conv(cin, cout, k, hw_out):
        nonlocal weights, macs, normed
        weights += cin * cout * k * k
        macs += cin * cout * k * k * hw_out**2
        normed += cout

    if separable:  # depthwise 7x7/2, 3 -> 24 (multiplier 8), then pointwise 24 -> 64
        weights += 3 * 8 * 49
        macs += 3 * 8 * 49 * 112**2
        conv(24, 64, 1, 112)
    else:
        conv(3, 64, 7, 112)
    conv(64, 64, 1, 56)
    conv(64, 192, 3, 56)
    cin, hw = 192, 28
    for n1, r3, n3, rd, nd, proj, s in table.values():
        out = hw // s
        if n1:
            conv(cin, n1, 1, hw)
        conv(cin, r3, 1, hw)
        conv(r3, n3, 3, out)
        conv(cin, rd, 1, hw)
        conv(rd, nd, 3, hw)
        conv(nd, nd, 3, out)
        if proj:
            conv(cin, proj, 1, out)
        cin, hw = n1 + n3 + nd + (proj or cin), out
    weights += cin * classes + classes
    macs += cin * classes
    return weights, macs, normed


def weight_count(model):
    """Conv weights plus FC weight and bias: the convention-independent count in docs/paper-notes.md."""
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))
    return n + sum(p.numel() for p in model.fc.parameters())


def stage_shapes(model, size=224):
    shapes = {}
    hooks = [getattr(model, n).register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, o.shape))
             for n in STAGES_SLIM]
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, size, size))
    for h in hooks:
        h.remove()
    return {n: (s[1], s[2]) for n, s in shapes.items()}


def small(name, **kw):
    return timm.create_model(name, **{"num_classes": 10, "in_chans": 1, "small_input": True, "width": 0.25, **kw})


def test_table_counts_reproduce_published_figures():
    # docs/paper-notes.md: TF-slim conv + FC weights 11,168,384 (+9,952 offsets = 11,178,336), 1.935 GMAC;
    # Caffe topology (plain conv1) 11,265,192 weights, 2.03 GMAC.
    w, macs, normed = table_counts(SLIM)
    assert (w, w + normed) == (11_168_384, 11_178_336)
    assert round(macs / 1e9, 3) == 1.935
    w, macs, normed = table_counts(PAPER, separable=False)
    assert (w, normed, round(macs / 1e9, 2)) == (11_265_192, 10_016, 2.03)  # + 10,016 Caffe conv biases


def test_stage_shapes_match_table():
    assert stage_shapes(timm.create_model("bn_inception")) == STAGES_SLIM
    assert stage_shapes(timm.create_model("bn_inception", table="caffe")) == STAGES_CAFFE


def test_params_and_macs_match_table():
    x = torch.randn(1, 3, 224, 224)
    for kw, table, separable in [({}, SLIM, True), ({"table": "caffe", "conv1": "plain"}, PAPER, False)]:
        w, macs, normed = table_counts(table, separable)
        bn = timm.create_model("bn_inception", **kw)
        plain = timm.create_model("inception_paper", **kw)
        assert weight_count(bn) == weight_count(plain) == w
        assert sum(p.numel() for p in bn.parameters()) == w + 2 * normed  # BN: γ and β per map
        assert sum(p.numel() for p in plain.parameters()) == w + normed  # no BN: one bias per map
        assert count_macs(bn, x) == count_macs(plain, x) == macs


def test_norm_none_differs_only_by_bn_and_bias():
    bn = dict(small("bn_inception", lrn=True, drop_rate=0.4).named_parameters())
    plain = dict(small("inception_paper").named_parameters())
    bn_only = {n for n in bn if ".norm." in n}
    bias_only = {n for n in plain if n.endswith("conv.bias")}
    assert bn.keys() - bn_only == plain.keys() - bias_only
    assert all(bn[n].shape == plain[n].shape for n in bn.keys() - bn_only)
    # every conv feeding a nonlinearity has exactly one of the two; the depthwise conv1 has neither
    assert {n.removesuffix(".norm.weight") for n in bn_only if n.endswith("weight")} == {
        n.removesuffix(".conv.bias") for n in bias_only}
    assert "conv1.dw.bias" not in plain


def test_act_lrn_dropout_switches():
    m = small("bn_inception", act="sigmoid")
    blocks = [b for b in m.modules() if isinstance(b, nn.Sequential) and hasattr(b, "act")]
    assert len(blocks) == sum(isinstance(c, nn.Conv2d) and not n.endswith(".dw") for n, c in m.named_modules())
    assert all(isinstance(b.act, nn.Sigmoid) for b in blocks)
    assert not any(isinstance(x, nn.ReLU) for x in m.modules())
    for name, lrn, drop in [("bn_inception", False, 0.0), ("inception_paper", True, 0.4)]:
        m = small(name)
        assert [n for n, x in m.named_modules() if isinstance(x, nn.LocalResponseNorm)] == (
            ["lrn1", "lrn2"] if lrn else [])
        assert [(n, x.p) for n, x in m.named_modules() if isinstance(x, nn.Dropout)] == (
            [("head_drop", drop)] if drop else [])
    # GoogLeNet placement: pool1 -> LRN -> conv2 -> LRN -> pool2, dropout just before fc
    m, order = small("inception_paper", small_input=False), []
    for n in ["pool1", "lrn1", "conv2", "lrn2", "pool2", "head_drop", "fc"]:
        getattr(m, n).register_forward_hook(lambda *a, n=n: order.append(n))
    m(torch.randn(2, 1, 64, 64))
    assert order == ["pool1", "lrn1", "conv2", "lrn2", "pool2", "head_drop", "fc"]


def test_fold_bn_matches_eval_model():
    torch.manual_seed(0)
    m = small("bn_inception", per_activation_bn=1, img_size=28)
    for bn in m.modules():  # random statistics and affine so an unfolded or misfolded BN shows
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.uniform_(bn.bias, -0.5, 0.5)
    x = torch.randn(4, 1, 28, 28)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    folded = fold_bn(m)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    assert m.training and any(isinstance(b, nn.BatchNorm2d) for b in m.modules())  # input untouched
    assert not any(isinstance(b, nn.BatchNorm2d) for b in folded.modules())
    assert sum(isinstance(b, PerActivationBN) for b in folded.modules()) == 7  # every norm layer of 5b
    with torch.no_grad():
        ref, out = m.eval()(x), folded(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_linear_bn1d_fold():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Sigmoid())
    m[1].running_mean.uniform_(-1, 1)
    m[1].running_var.uniform_(0.5, 2)
    x = torch.randn(3, 5)
    torch.testing.assert_close(fold_bn(m)(x), m.eval()(x))


def test_small_input_forward_backward_every_switch():
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    variants = [("bn_inception", {}), ("inception_paper", {}), ("bn_inception", {"act": "sigmoid"}),
                ("inception_paper", {"norm": "bn", "table": "caffe", "conv1": "plain", "pools": "symmetric"}),
                ("bn_inception", {"norm": "gn"}), ("bn_inception", {"norm": "ln", "init_scale": 2.0}),
                ("bn_inception", {"per_activation_bn": 2, "img_size": 28, "drop_rate": 0.1})]
    for name, kw in variants:
        m = small(name, **kw).to(memory_format=torch.channels_last)
        out = m(x.to(memory_format=torch.channels_last))
        assert out.shape == (4, 10) and torch.isfinite(out).all()
        nn.functional.cross_entropy(out, y).backward()
        for n, p in m.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), (name, kw, n)


def test_timm_conventions():
    m = small("bn_inception")
    assert m.num_classes == 10 and m.num_features == 256 and m.get_classifier() is m.fc
    feats = m.forward_features(torch.randn(2, 1, 28, 28))
    assert feats.shape == (2, 256, 4, 4)  # 28 -> 14 (pool2) -> 7 (3c) -> 4 (4e)
    assert m.forward_head(feats, pre_logits=True).shape == (2, 256)
    m.reset_classifier(5)
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 5)
    assert timm.create_model("inception_paper", pretrained=False).pretrained_cfg["classifier"] == "fc"
    feats = timm.create_model("bn_inception", features_only=True, width=0.25)(torch.randn(1, 3, 64, 64))
    assert [f.shape[1:] for f in feats] == [(16, 32, 32), (48, 16, 16), (80, 8, 8), (144, 4, 4), (256, 2, 2)]
    convs = []
    for scale in (1.0, 3.0):  # §4.2.3 "larger initial weights": same draw, scaled
        torch.manual_seed(0)
        convs.append([c.weight for c in small("bn_inception", init_scale=scale).modules() if isinstance(c, nn.Conv2d)])
    assert all(torch.allclose(3 * a, b) for a, b in zip(*convs, strict=True))


def test_pools_lay_out_windows_as_the_reference_ports():
    """Issue 20: stride-2 max pools start their windows at 0 in both ports (slim "SAME": padding after
    only; Caffe: no padding, ceil mode), where the pre-issue-20 layout padded 1 before; Caffe's average
    pools count the padding, TF-slim's leave it out."""
    from repro.models.layers import make_pool

    x = torch.arange(36.0).view(1, 1, 6, 6)  # x[i, j] = 6 i + j: a window's max is its bottom-right cell
    first_rows = {p: make_pool("max", 2, p)(x)[0, 0, :, 0].tolist() for p in ("slim", "caffe", "symmetric")}
    assert first_rows["slim"] == first_rows["caffe"] == [14.0, 26.0, 32.0]  # rows 0-2, 2-4, 4-5(+pad)
    assert first_rows["symmetric"] == [7.0, 19.0, 31.0]  # rows -1-1, 1-3, 3-5
    odd = torch.zeros(1, 1, 7, 7)  # 4e's input at 28 px: SAME gives ceil(7/2), Caffe's ceil mode (7-3)/2+1
    assert [make_pool("max", 2, p)(odd).shape[-1] for p in ("slim", "caffe", "symmetric")] == [4, 3, 4]
    ones = torch.ones(1, 1, 4, 4)
    assert make_pool("avg", 1, "caffe")(ones)[0, 0, 0, 0] == 4 / 9  # corner: 4 real cells of 9
    assert make_pool("avg", 1, "slim")(ones)[0, 0, 0, 0] == 1.0  # padding left out of the count
    net = timm.create_model("bn_inception", table="caffe", num_classes=0)
    pools = [m for m in net.modules() if isinstance(m, nn.MaxPool2d) and m.stride == 2]
    assert len(pools) == 4 and all(m.padding == 0 and m.ceil_mode for m in pools)  # pool1, pool2, 3c, 4e
    assert timm.create_model("bn_inception", pools="symmetric").pool2.padding == 1
    try:
        timm.create_model("bn_inception", table="caffe", small_input=True, img_size=28)
        raise AssertionError("Caffe's ceil-mode pools at 28 px must be refused")
    except ValueError as e:
        assert "pools='symmetric'" in str(e)


def test_lrn_equals_torchs():
    from repro.models.layers import LocalResponseNorm

    for fmt in (torch.contiguous_format, torch.channels_last):
        x = (torch.randn(4, 16, 7, 5) * 3).to(memory_format=fmt).requires_grad_()
        x2 = x.detach().clone().requires_grad_()
        ours, ref = LocalResponseNorm(5, alpha=1e-4, beta=0.75)(x), nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75)(x2)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
        (ours ** 2).sum().backward()
        (ref ** 2).sum().backward()
        torch.testing.assert_close(x.grad, x2.grad, rtol=1e-6, atol=1e-6)
