"""Alg. 2 population statistics: the m/(m-1) hand computation, frozen input, dropout off, DDP average."""

from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from repro.models.bnstats import bn_audit, bn_layers, buffers_identical_across_ranks, population_statistics


def batches(shape: tuple[int, ...], k: int = 4, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) * 3 + 1 for _ in range(k)]


def hand_population(inputs: list[torch.Tensor], dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Alg. 2 step 4 by hand: mean of batch means; m/(m-1) times the mean of biased batch variances."""
    m = inputs[0].numel() // inputs[0].shape[1]  # m' = N (BatchNorm1d) or N*H*W (BatchNorm2d)
    mean = torch.stack([x.double().mean(dims) for x in inputs]).mean(0)
    var = torch.stack([x.double().var(dims, unbiased=False) for x in inputs]).mean(0) * m / (m - 1)
    return mean, var


def trained(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """Give the BN layers non-trivial γ, β and moving averages, as a trained network has."""
    g = torch.Generator().manual_seed(1)
    for bn in (m for _, m in bn_layers(model)):
        bn.weight.data = torch.rand(bn.num_features, generator=g) + 0.5
        bn.bias.data = torch.randn(bn.num_features, generator=g)
    model.train()
    with torch.no_grad():
        for x in batches(shape, 3, seed=7):
            model(x)
    return model


def test_bn1d_population_variance_is_the_hand_computation_with_m_over_m_minus_1():
    # BN1 sees the inputs; BN2 sees what the network computes after BN1 normalized with *batch*
    # statistics; a 90% dropout in between would change BN2's statistics if it were left on.
    model = trained(nn.Sequential(nn.BatchNorm1d(6), nn.Linear(6, 5, bias=False), nn.Dropout(0.9),
                                  nn.BatchNorm1d(5), nn.Sigmoid(), nn.Linear(5, 3)), (20, 6))
    xs = batches((20, 6))
    pop = population_statistics(model, xs, len(xs))

    bn1, lin = model[0], model[1]
    mean1, var1 = hand_population(xs, (0,))
    h = [lin(F.batch_norm(x, None, None, bn1.weight, bn1.bias, training=True, eps=bn1.eps)) for x in xs]
    mean2, var2 = hand_population([t.detach() for t in h], (0,))
    for bn, mean, var in ((pop[0], mean1, var1), (pop[3], mean2, var2)):
        torch.testing.assert_close(bn.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var.double(), var, rtol=1e-5, atol=1e-6)
    assert not pop.training and not any(m.training for m in pop.modules())


def test_bn2d_uses_the_effective_batch_n_h_w_and_leaves_the_input_model_untouched():
    model = trained(nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3, bias=False), nn.Dropout2d(0.9),
                                  nn.BatchNorm2d(4), nn.ReLU()), (5, 3, 7, 6))
    before = copy.deepcopy(model.state_dict())
    xs = batches((5, 3, 7, 6))
    pop = population_statistics(model, iter(xs), num_batches=3)  # only the first 3 of 4 batches

    mean1, var1 = hand_population(xs[:3], (0, 2, 3))  # m' = 5*7*6 = 210
    bn1, conv = model[0], model[1]
    h = [conv(F.batch_norm(x, None, None, bn1.weight, bn1.bias, training=True, eps=bn1.eps)).detach()
         for x in xs[:3]]
    mean2, var2 = hand_population(h, (0, 2, 3))  # m' = 5*5*4 = 100
    torch.testing.assert_close(pop[0].running_var.double(), var1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pop[0].running_mean.double(), mean1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pop[3].running_var.double(), var2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pop[3].running_mean.double(), mean2, rtol=1e-5, atol=1e-6)
    # the trained network is untouched: buffers (num_batches_tracked too), mode, and BN flags
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and all(bn.track_running_stats for _, bn in bn_layers(model))
    assert torch.equal(pop[0].num_batches_tracked, model[0].num_batches_tracked)


def test_inception_matches_pytorch_cumulative_average_in_every_bn_layer():
    """Independent reference: BN with momentum=None keeps the running mean of batch means and of
    unbiased batch variances, which is Alg. 2 when every batch has the same size."""
    timm = pytest.importorskip("timm")
    try:
        import repro.models  # noqa: F401
        model = timm.create_model("bn_inception", num_classes=10, in_chans=1, width=0.25, small_input=True,
                                  per_activation_bn=1, img_size=28)
    except Exception as e:  # another engineer's model may be mid-edit; the small nets above still run
        pytest.skip(f"bn_inception unavailable: {e}")
    xs = batches((6, 1, 28, 28), k=3)
    pop = population_statistics(model, xs, len(xs))

    ref = copy.deepcopy(model).train()
    for _, bn in bn_layers(ref):
        bn.reset_running_stats()
        bn.momentum = None
    with torch.no_grad():
        for x in xs:
            ref(x)
    layers = bn_layers(pop)
    assert len(layers) > 50 and any(bn.num_features > 1000 for _, bn in layers)  # per-activation BN
    for (name, a), (_, b) in zip(layers, bn_layers(ref), strict=True):
        torch.testing.assert_close(a.running_mean, b.running_mean, rtol=1e-4, atol=1e-5, msg=name)
        torch.testing.assert_close(a.running_var, b.running_var, rtol=1e-4, atol=1e-5, msg=name)


def test_audit_measures_the_ema_gap_in_population_std_units():
    model = trained(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)), (10, 4))
    pop = population_statistics(model, batches((10, 4)), 4)
    ema = copy.deepcopy(pop)
    bn, p = ema[1], pop[1]
    std = (p.running_var + p.eps).sqrt()
    bn.running_mean.copy_(p.running_mean + 2 * std)
    bn.running_var.copy_((p.running_var + p.eps) * torch.e ** 2 - bn.eps)  # log ratio = 2
    (row,) = bn_audit(ema, pop)
    assert row["name"] == "1" and row["channels"] == 3
    assert row["dmean_max"] == pytest.approx(2, rel=1e-5) and row["dlogvar_mean"] == pytest.approx(2, rel=1e-5)
    assert bn_audit(pop, pop)[0]["dmean_max"] == 0
    assert buffers_identical_across_ranks(pop)  # world size 1


# ----------------------------------------------------------------------------------------------
# Two gloo processes: every rank ends with the average over all ranks' batches


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, model: nn.Module, xs: list[torch.Tensor], out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    model = copy.deepcopy(model)  # mp.spawn hands both ranks one shared-memory copy of the tensors
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        pop = population_statistics(model, xs[rank::2], len(xs[rank::2]))
        same = buffers_identical_across_ranks(pop)
        model[1].running_mean.fill_(rank)  # now the ranks disagree
        out[rank] = (pop[1].running_mean.clone(), pop[1].running_var.clone(), same,
                     buffers_identical_across_ranks(model))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_get_the_average_over_all_ranks_batches():
    model = trained(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)), (10, 4))
    xs = batches((10, 4), k=6)
    single = population_statistics(model, xs, len(xs))
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(_free_port(), model, xs, out), nprocs=2, join=True)
        out = dict(out)
    for rank in (0, 1):
        mean, var, same, differ = out[rank]
        torch.testing.assert_close(mean, single[1].running_mean)
        torch.testing.assert_close(var, single[1].running_var)
        assert same and not differ
