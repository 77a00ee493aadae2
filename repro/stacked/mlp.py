"""Many Figure 1 MLPs trained at once: the map of BN's advantage over rates and inits (issue 10).

    python -m repro.stacked experiment=fig1_baseline,fig1_bn optim.lr=0.01,0.1 model.init_std=0.01,0.1 \
        seed=1,2,3 scale=cpu runs_dir=runs/fig1_map

Comma lists expand to their product, as in `python -m repro.train -m`; every member is composed and
validated exactly as a single run, and writes the same run directory (config.yaml, env.json,
metrics.jsonl, summary.json, ckpt.pt), so `repro.report` reads it and `python -m repro.train` could
resume it. The members of one seed form a stack: they share the batch order (common random numbers,
which pairs every comparison across the grid), so their first layers are one matrix product
x (B, 784) @ W1 (784, members x 100); the other layers are batched matmuls. Forward and backward are
written out (sigmoid, BN, cross-entropy), and plain SGD updates each weight inside the GEMM that
computes its gradient (W -= (lr x_in)^T dz), so no gradient tensor of the 784-wide layer is ever stored.
The baseline and BN nets share one set of tensors: a baseline layer is a BN layer with its statistics
switched off (s = 0: no centring, no scaling, γ fixed at 1, β its bias). Members' run directories and
checkpoint commits are repro.stacked.members'; overrides naming Figures 2-3's networks go to
repro.stacked.convrun (one convolutional stack).
"""

from __future__ import annotations

import itertools
import logging
import sys
import time

import torch
import torch.nn.functional as F

from repro.config import Config, compose
from repro.data import loaders
from repro.data.mnist import load_splits
from repro.errors import ReproError
from repro.models.probe import SigmoidProbe
from repro.optim import build_optimizer, peak_lr
from repro.runs import process, rundir
from repro.runs.preempt import Preemption
from repro.stacked import convrun
from repro.stacked.members import Member, commit, open_members

log = logging.getLogger("repro.stacked")
EPS, MOMENTUM = 1e-5, 0.1  # nn.BatchNorm1d defaults, as repro.models.mlp uses them


def expand(overrides: list[str]) -> list[list[str]]:
    """`key=a,b` lists to the product of single overrides, in order (the last key varies fastest)."""
    options = [[f"{k}={v}" for v in vals.split(",")] for k, vals in (o.split("=", 1) for o in overrides)]
    return [list(c) for c in itertools.product(*options)]


def _check_member(cfg: Config) -> None:
    o = cfg.optim
    if cfg.model.name != "mnist_mlp" or cfg.model.act != "sigmoid" or cfg.data.augment or cfg.data.distort:
        raise ReproError(f"{cfg.experiment}: repro.stacked trains Figure 1's sigmoid MLP on plain in-memory data "
                         f"only; use python -m repro.train for it")
    if o.name != "sgd" or o.momentum or o.weight_decay or o.schedule != "constant" or o.nesterov:
        raise ReproError(f"{cfg.experiment}: repro.stacked implements plain SGD at a constant rate (optim.momentum=0, "
                         f"weight_decay=0, schedule=constant); use python -m repro.train for {o}")


# ----------------------------------------------------------------------------------------------
# The stack: one seed's members as stacked tensors


def _inner(z, y, w, b4, gamma, beta, rmean, rvar, lr, s):
    """Everything of one step after the first layer's product z (M, B, H): forward, loss, backward and
    the in-place SGD updates of layers 2-4, γ, β and the running statistics. Returns each member's loss
    (M,) and lr x dL/dz1 laid out (B, M*H) for the first layer's update."""
    m, b, h_ = z.shape
    saved, h = [], None
    for i in range(3):
        if i:
            z = torch.bmm(h, w[i - 1])  # (M, B, H)
        mu = z.mean(1, keepdim=True)
        d = z - mu
        var = (d * d).mean(1, keepdim=True)  # biased, as BN normalizes (Alg. 1)
        r = torch.rsqrt(var + EPS) * s + (1 - s)  # §3 Alg. 1 for BN members; 1 for baselines
        xhat = (z - mu * s) * r
        h = torch.sigmoid(gamma[i] * xhat + beta[i])
        saved.append((xhat, r, h))
        # Alg. 1's inference statistics (unbiased variance); PyTorch's momentum = weight of the new batch.
        rmean[i].mul_(1 - MOMENTUM).add_(mu * MOMENTUM)
        rvar[i].mul_(1 - MOMENTUM).add_(var * (MOMENTUM * b / (b - 1)))
    logp = torch.baddbmm(b4, h, w[2]).log_softmax(-1)  # (M, B, 10)
    onehot = F.one_hot(y, 10).to(logp.dtype)  # (B, 10)
    loss = -(logp * onehot).sum(2).mean(1)
    dl = (logp.exp() - onehot) / b  # d(mean cross-entropy)/d logits
    dls = dl * lr
    dh = torch.bmm(dl, w[2].transpose(1, 2))
    w[2].baddbmm_(h.transpose(1, 2), dls, alpha=-1)
    b4.sub_(dls.sum(1, keepdim=True))
    for i in (2, 1, 0):
        xhat, r, h = saved[i]
        da = dh * h * (1 - h)  # sigmoid'
        dxhat = da * gamma[i]
        dz = r * (dxhat - s * (dxhat.mean(1, keepdim=True) + xhat * (dxhat * xhat).mean(1, keepdim=True)))
        gamma[i].sub_(lr * s * (da * xhat).sum(1, keepdim=True))
        beta[i].sub_(lr * da.sum(1, keepdim=True))
        dzs = dz * lr
        if i:
            dh = torch.bmm(dz, w[i - 1].transpose(1, 2))  # before W changes
            w[i - 1].baddbmm_(saved[i - 1][2].transpose(1, 2), dzs, alpha=-1)
    return loss, dzs.transpose(0, 1).reshape(b, m * h_)


class Stack:
    """Parameters of M MLPs (784-H-H-H-10) in stacked tensors, trained on one shared batch stream."""

    def __init__(self, nets: list[torch.nn.Module], norms: list[str], lrs: list[float]):
        m = len(nets)
        sds = [n.state_dict() for n in nets]
        self.m, self.h = m, sds[0]["hidden.0.fc.weight"].shape[0]
        self.s = torch.tensor([1.0 if nm == "bn" else 0.0 for nm in norms]).view(m, 1, 1)
        self.lr = torch.tensor(lrs, dtype=torch.float32).view(m, 1, 1)
        self.w1 = torch.cat([sd["hidden.0.fc.weight"].t() for sd in sds], 1).contiguous()  # (784, M*H)
        self.w = [torch.stack([sd[f"hidden.{i}.fc.weight"].t() for sd in sds]).contiguous() for i in (1, 2)]
        self.w.append(torch.stack([sd["head.weight"].t() for sd in sds]).contiguous())  # (M, H, 10)
        self.b4 = torch.stack([sd["head.bias"].view(1, -1) for sd in sds])  # (M, 1, 10)
        ones, zeros = torch.ones(1, self.h), torch.zeros(1, self.h)
        # γ, β, running mean and var per hidden layer; a baseline's β is its fc bias.
        self.gamma = [torch.stack([sd.get(f"hidden.{i}.norm.weight", ones).view(1, -1) for sd in sds]) for i in range(3)]
        self.beta = [torch.stack([sd.get(f"hidden.{i}.norm.bias", sd.get(f"hidden.{i}.fc.bias")).view(1, -1)
                                  for sd in sds]) for i in range(3)]
        self.rmean = [torch.stack([sd.get(f"hidden.{i}.norm.running_mean", zeros).view(1, -1) for sd in sds]) for i in range(3)]
        self.rvar = [torch.stack([sd.get(f"hidden.{i}.norm.running_var", ones).view(1, -1) for sd in sds]) for i in range(3)]
        self.batches = max(int(sd.get("hidden.0.norm.num_batches_tracked", 0)) for sd in sds)
        self._inner = _inner

    def _layer1(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 784) @ W1 as a sum of W1's rows at each image's nonzero pixels: §4.1's binary MNIST images
        have ~13% of them on, so this reads a seventh of what the dense product does."""
        nz = x.nonzero()  # (nnz, 2), rows in image order
        offsets = torch.searchsorted(nz[:, 0].contiguous(), torch.arange(len(x)))
        z = F.embedding_bag(nz[:, 1], self.w1, offsets, mode="sum", per_sample_weights=x[nz[:, 0], nz[:, 1]])
        return z.view(len(x), self.m, self.h).transpose(0, 1)  # (M, B, H)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One SGD step of every member on the batch (x, y); returns each member's loss (M,)."""
        x = x.flatten(1)  # (B, 784)
        loss, dzs = self._inner(self._layer1(x), y, self.w, self.b4, self.gamma, self.beta, self.rmean,
                                self.rvar, self.lr, self.s)
        on = x.any(0).nonzero().squeeze(1)  # pixels on in some image of the batch; other rows get no gradient
        self.w1.index_add_(0, on, x[:, on].t() @ dzs, alpha=-1)  # W1 -= x^T (lr dz), no dense gradient kept
        self.batches += 1
        return loss

    def compile(self) -> None:
        """Fuse the elementwise work between the 784-wide GEMMs (torch.compile; the GEMMs stay eager)."""
        self._inner = torch.compile(_inner, dynamic=False)

    @torch.no_grad()
    def infer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The inference networks (BN with its moving averages): logits (M, N, 10) and the last sigmoid's input."""
        z, h = self._layer1(x), None
        for i in range(3):
            if i:
                z = torch.bmm(h, self.w[i - 1])
            r = torch.rsqrt(self.rvar[i] + EPS) * self.s + (1 - self.s)
            a = self.gamma[i] * (z - self.rmean[i] * self.s) * r + self.beta[i]
            h = torch.sigmoid(a)
        return torch.baddbmm(self.b4, h, self.w[2]), a

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, chunk: int) -> tuple[list[float], list[float]]:
        """Test accuracy and mean loss of every member over all of (x, y), in chunks of images."""
        correct, loss = torch.zeros(self.m, dtype=torch.float64), torch.zeros(self.m, dtype=torch.float64)
        for i in range(0, len(y), chunk):
            logits, _ = self.infer(x[i:i + chunk])
            yy = y[i:i + chunk].view(1, -1).expand(self.m, -1)
            correct += (logits.argmax(-1) == yy).sum(1).double()
            loss += -logits.log_softmax(-1).gather(2, yy.unsqueeze(2)).sum((1, 2)).double()
        return (correct / len(y)).tolist(), (loss / len(y)).tolist()

    def probe(self, x: torch.Tensor, units: int) -> torch.Tensor:
        """Figure 1b/1c: 15th/50th/85th percentiles of the last sigmoid's input, (3, M, units)."""
        _, a = self.infer(x)
        q = torch.tensor(SigmoidProbe.QUANTILES)
        return torch.quantile(a[:, :, :units].float(), q, dim=1)

    def state_dict(self, j: int, norm: str) -> dict:
        """Member j's parameters under repro.models.mlp's names: what a single run's checkpoint holds."""
        h, sd = self.h, {}
        ws = [self.w1[:, j * h:(j + 1) * h]] + [w[j] for w in self.w[:2]]
        for i in range(3):
            sd[f"hidden.{i}.fc.weight"] = ws[i].t().clone()
            if norm == "bn":
                sd |= {f"hidden.{i}.norm.weight": self.gamma[i][j, 0].clone(),
                       f"hidden.{i}.norm.bias": self.beta[i][j, 0].clone(),
                       f"hidden.{i}.norm.running_mean": self.rmean[i][j, 0].clone(),
                       f"hidden.{i}.norm.running_var": self.rvar[i][j, 0].clone(),
                       f"hidden.{i}.norm.num_batches_tracked": torch.tensor(self.batches)}
            else:
                sd[f"hidden.{i}.fc.bias"] = self.beta[i][j, 0].clone()
        return sd | {"head.weight": self.w[2][j].t().clone(), "head.bias": self.b4[j, 0].clone()}

    def silence(self, j: int) -> None:
        """Stop a diverged member: zero rate and weights, so its NaNs cost nothing and reach no one."""
        self.lr[j] = 0.0
        for t in [self.w1[:, j * self.h:(j + 1) * self.h], *(w[j] for w in self.w), self.b4[j],
                  *(g[j] for g in self.gamma + self.beta + self.rmean), *(v[j] for v in self.rvar)]:
            t.zero_()


def _checkpoint(stack: Stack, members: list[Member], stream, step: int, wall: float, window: torch.Tensor) -> None:
    """Every running member's checkpoint, committed as one (repro.stacked.members)."""
    rng = [process.rng_state()]
    commit(members, lambda j: {
        "model": stack.state_dict(j, members[j].cfg.model.norm),
        "optimizer": build_optimizer(members[j].net, members[j].cfg.optim).state_dict(),  # plain SGD: settings only
        "data": stream.state_dict(), "rng": rng, "step": step, "wall": members[j].wall0 + wall,
        "wandb_id": members[j].wandb_id, "losses": [window[:, j].clone()],
        "identity": rundir.run_identity(members[j].cfg, members[j].facts), "data_identity": members[j].describe,
        "resumes": members[j].resumes, "divergence": members[j].divergence.state_dict()})


# ----------------------------------------------------------------------------------------------
# The run


def _stack_of(seed: int, members: list[Member], splits, t, env: dict) -> dict:
    """Start one seed's members (their run directories, resumed or new) and stack their networks."""
    start = open_members(members, env)  # a commit a kill interrupted is settled here
    stream = loaders.InMemoryStream(splits.x_train, splits.y_train, t.batch_size, seed, members[0].cfg.data)
    window = torch.zeros(t.log_every, len(members))
    if members[0].ckpt:
        stream.load_state_dict(members[0].ckpt["data"])
        window = torch.stack([m.ckpt["losses"][0] for m in members], 1)
    stack = Stack([m.net for m in members], [m.cfg.model.norm for m in members],
                  [peak_lr(m.cfg.optim) for m in members])
    if t.compile:
        stack.compile()
    return {"stack": stack, "members": members, "stream": stream, "start": start, "window": window}


def run(overrides: list[str]) -> list[dict]:
    """Train every member the overrides' product names, one stack per seed; return their summaries (a
    preemption signal stops every stack at the next step boundary, checkpointed: status "preempted")."""
    cfgs = [compose(o) for o in expand(overrides)]
    if any(c.train.init_from or c.train.resume_from for c in cfgs):
        raise ReproError("repro.stacked starts each member from its seed or its own checkpoint (resume=auto): use "
                         "python -m repro.train for train.init_from or train.resume_from")
    if any(c.model.name != "mnist_mlp" for c in cfgs):  # Figures 2-3's networks: one convolutional stack
        return convrun.run(cfgs)
    for c in cfgs:
        _check_member(c)
    t = cfgs[0].train
    if any(c.train != t or c.data != cfgs[0].data for c in cfgs):
        raise ReproError("repro.stacked: every member must share train.* and data.* (one batch stream per seed); "
                         "vary only experiment, optim.lr, model.init_std and seed")
    if t.threads > 0:
        torch.set_num_threads(t.threads)
    splits = load_splits(cfgs[0].data)
    describe = splits.describe()
    env = rundir.environment(torch.device("cpu")) | {"stacked": {"members": len(cfgs), "argv": sys.argv}}
    summaries, by_seed = [], {}
    for c in cfgs:
        m = Member(c, describe, (1, 10, 28), torch.device("cpu"))
        if m.finished:
            summaries.append(m.summary())
        else:
            by_seed.setdefault(c.seed, []).append(m)
    try:
        stacks = [_stack_of(seed, ms, splits, t, env) for seed, ms in sorted(by_seed.items())]
        if stacks:
            with Preemption(t.preempt_signals) as preemption:
                summaries += _train(stacks, splits, t, preemption)
    finally:  # an error or Ctrl-C leaves no lock behind (and no wandb run open); checkpoints are the resume points
        for ms in by_seed.values():
            for m in ms:
                m.close()
    return summaries


def _train(stacks: list[dict], splits, t, preemption: Preemption) -> list[dict]:
    """Step every stack in turn, logging, evaluating, probing and checkpointing as repro.train does."""
    summaries, t0 = [], time.perf_counter()
    x_test, y_test = splits.x_test.flatten(1), splits.y_test
    probe_x = x_test[: t.probe_batch]

    def observe(st: dict, step: int, losses: torch.Tensor | None) -> None:
        stack, recs = st["stack"], [{"step": step, "lr": peak_lr(m.cfg.optim)} for m in st["members"]]
        if step % t.eval_every == 0 or step == t.steps:
            acc, loss = stack.evaluate(x_test, y_test, t.eval_batch_size)
            for j, r in enumerate(recs):
                r |= {"test_acc": acc[j], "test_loss": loss[j]}
        if t.probe_every and (step % t.probe_every == 0 or step == t.steps):
            p = stack.probe(probe_x, t.probe_units).tolist()
            for j, r in enumerate(recs):
                r["probe"] = {"p15": p[0][j], "p50": p[1][j], "p85": p[2][j]}
        for j, (m, r) in enumerate(zip(st["members"], recs)):
            if m.status == "running":
                r["wall"] = round(m.wall0 + time.perf_counter() - t0, 3)
                if losses is not None:
                    r["loss"] = float(losses[j])
                m.log.log(dict(sorted(r.items(), key=lambda kv: _ORDER.index(kv[0]))))

    for st in stacks:
        if st["start"] == 0:
            observe(st, 0, None)
    for step in range(min(st["start"] for st in stacks), t.steps):
        done = step + 1
        for st in stacks:
            if step < st["start"]:
                continue
            x, y = st["stream"].next()
            st["window"][step % t.log_every] = st["stack"].step(x.flatten(1), y)
            if not (done % t.log_every and done % t.eval_every and done != t.steps):
                w = st["window"][: (done - 1) % t.log_every + 1]
                for j, m in enumerate(st["members"]):
                    if m.status != "running":
                        continue
                    if (bad := m.divergence.check(w[:, j], done)) is not None:  # as repro.train's rule
                        m.status, m.diverged_at = "diverged", bad
                        summaries.append(m.finish(m.diverged_at, time.perf_counter() - t0))
                        st["stack"].silence(j)
                observe(st, done, w.mean(0))
            if t.checkpoint_every and done % t.checkpoint_every == 0 and done != t.steps:
                _checkpoint(st["stack"], st["members"], st["stream"], done, time.perf_counter() - t0, st["window"])
        if preemption.signum is not None and done != t.steps:  # every stack stops here, checkpointed
            return summaries + _preempted(stacks, done, time.perf_counter() - t0, preemption.name)
    for st in stacks:
        _checkpoint(st["stack"], st["members"], st["stream"], t.steps, time.perf_counter() - t0, st["window"])
        for m in st["members"]:
            if m.status == "running":
                m.status = "complete"
                summaries.append(m.finish(t.steps, time.perf_counter() - t0))
    return summaries


def _preempted(stacks: list[dict], done: int, wall: float, signal: str) -> list[dict]:
    """Checkpoint every stack where it stands (a stack that has not reached its start keeps its checkpoint)
    and record its running members as preempted."""
    out = []
    for st in stacks:
        at = max(done, st["start"])
        if at == done:
            _checkpoint(st["stack"], st["members"], st["stream"], at, wall, st["window"])
        for m in st["members"]:
            if m.status == "running":
                m.status = "preempted"
                out.append(m.finish(at, wall, signal))
    return out


_ORDER = ("step", "lr", "wall", "loss", "test_acc", "test_loss", "probe")
