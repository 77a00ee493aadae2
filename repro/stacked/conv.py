"""Every seed of a Figures 2-3 variant trained as one stack, for the GPU (issue 20): M Inception networks
of one architecture held as stacked tensors (`torch.func.stack_module_state`) and one step that trains
them all.

The step (`ConvStack.step`) is a pure tensor function of the stack's tensors and its input buffers
(`Inputs`): it gathers each member's batch from the training images on the device by index, augments
it with the runner's own code (`repro.data.loaders.augment`) from uniforms drawn beforehand, runs the M
forward passes as one `vmap`ped call (a convolution becomes one grouped convolution, a BN layer one
batch norm over M x C channels that updates each member's running statistics in place in its slice),
takes every gradient in one backward pass, and applies SGD with momentum and L2 at the rates in the
input buffer. Nothing in it reads a value back to the host (no .item(), no shape that depends on data),
so on CUDA `Stepper` captures it once as a CUDA graph and replays it every step.

Randomness is each member's own and is what its single run draws, on the host, by the runner's code:
batch order and augmentation uniforms by the member's `InMemoryStream`, dropout masks by a generator
holding the state repro.train's global generator has after building the network (same seed), drawn as
F.dropout draws them (bernoulli(1 - p) / (1 - p)). `Inputs.fill` sends one step's draws and rates to the
device with one copy per dtype, outside the graph. So a member computes its single run up to rounding:
tests/test_stacked_conv.py holds members of BN-x30 and of Inception (dropout, LRN) to their repro.train
runs within 1e-10 in float64, over 200 and 20 steps. Rounding is all that separates them, but these
small networks amplify it: in float32 a near-tie in a max pool soon sends a gradient elsewhere, and at
BN-x30's own rate on the smoke network even a float64 difference grows tenfold a step; a run on a CPU
and the same run on a GPU part the same way, so on a GPU a member is its single run's statistical twin
(there also its dropout masks differ: a GPU run draws them from the CUDA generator).

On the CPU the stack does not pay: three vmapped quarter-width BN-Inceptions took 805 ms a step against
391 ms for the three single runs one after another, at one thread (issue 20). The CPU suite therefore
runs with repro.train, one process per core; the stack is built and tested on the CPU for the GPU,
where these small networks are launch-bound (scripts/bench_stack.py times both).
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from repro.config import DataConfig, OptimConfig
from repro.data import loaders
from repro.data.loaders import Draw


class _Member(nn.Module):
    """A network called with its dropout mask given: pool -> x * mask -> fc, F.dropout's arithmetic with
    the mask drawn outside the step (None: no dropout)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        net.head_drop = nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = self.net.forward_head(self.net.forward_features(x), pre_logits=True)
        return self.net.fc(h if mask is None else h * mask)


class Inputs:
    """What one step reads besides the stack's own tensors, as device buffers a captured graph reads in
    place: batch indices idx (M, B); augmentation uniforms crop (4, M*B) and photo (2, M*B, 1, 1, 1) as
    repro.data.loaders draws them per image (None where the recipe has no such augmentation); dropout
    masks (M, B, F) (None without dropout); each member's rate lr (M,)."""

    def __init__(self, m: int, batch: int, features: int, data: DataConfig, dtype: torch.dtype,
                 device: torch.device):
        n = m * batch
        self.m, self.batch, self.device = m, batch, device
        self.idx = torch.zeros(m, batch, dtype=torch.long, device=device)
        sizes = {"crop": 4 * n if data.augment else 0, "photo": 2 * n if data.distort else 0,
                 "mask": n * features, "lr": m}
        self.floats = torch.zeros(sum(sizes.values()), dtype=dtype, device=device)
        views, at = {}, 0
        for k, size in sizes.items():
            views[k] = self.floats[at:at + size] if size else None
            at += size
        self.crop = views["crop"].view(4, n) if data.augment else None
        self.photo = views["photo"].view(2, n, 1, 1, 1) if data.distort else None
        self.mask = views["mask"].view(m, batch, features) if features else None
        self.lr = views["lr"]
        self._sizes = sizes

    def fill(self, draws: list[Draw], masks: list[torch.Tensor] | None, lrs: list[float]) -> None:
        """One step's draws (one per member, on the CPU), dropout masks and rates into the device buffers."""
        pin = self.device.type == "cuda"  # from pinned memory the copies do not wait for the host
        idx = torch.stack([d.idx for d in draws])
        parts = []
        if self.crop is not None:
            parts.append(torch.stack([d.crop for d in draws], 1).flatten())  # (4, M, B): image j*B + i
        if self.photo is not None:
            parts.append(torch.stack([d.photo for d in draws], 1).flatten())
        if self.mask is not None:
            parts.append(torch.stack(masks).flatten())
        parts.append(torch.tensor(lrs, dtype=self.floats.dtype))
        floats = torch.cat([p.to(self.floats.dtype) for p in parts])
        if pin:
            idx, floats = idx.pin_memory(), floats.pin_memory()
        self.idx.copy_(idx, non_blocking=pin)
        self.floats.copy_(floats, non_blocking=pin)


class ConvStack:
    """M networks of one architecture (built by repro.train's build_model) as stacked tensors, with
    each member's SGD momentum, trained by `step` on the inputs `inputs` holds."""

    def __init__(self, nets: list[nn.Module], x: torch.Tensor, y: torch.Tensor, data: DataConfig, batch: int,
                 optims: list[OptimConfig], drop_rate: float, amp: bool = False):
        """`x`, `y`: the training images and labels, on the device the nets are on."""
        self.m, self.batch, self.data, self.x, self.y = len(nets), batch, data, x, y
        self.keys = list(nets[0].state_dict())  # a single run's checkpoint order
        self.member = _Member(copy.deepcopy(nets[0]).to("meta"))
        self.params, self.buffers = stack_module_state(nets)
        # build_optimizer's L2 groups: weights (ndim > 1) decay, biases and BN's γ/β do not
        self.decay = {n for n, p in nets[0].named_parameters() if p.ndim > 1}
        dtype, device = x.dtype, x.device
        self.wd = torch.tensor([o.weight_decay * o.weight_decay_mult for o in optims], dtype=dtype, device=device)
        self.mom = torch.tensor([o.momentum for o in optims], dtype=dtype, device=device)
        self.nesterov = optims[0].nesterov
        self.momentum = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self.drop = drop_rate
        features = nets[0].head_hidden_size if drop_rate else 0
        self.features = features
        self.inputs = Inputs(self.m, batch, features, data, dtype, device)
        self.amp = amp

    def _autocast(self):
        # cache_enabled=False: a captured graph must not keep autocast's weight casts across replays
        return (torch.autocast(self.x.device.type, dtype=torch.bfloat16, cache_enabled=False) if self.amp
                else contextlib.nullcontext())

    def _logits(self, params: dict, buffers: dict, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        state = {f"net.{k}": v for k, v in (params | buffers).items()}
        return functional_call(self.member, state, (x, mask))

    def step(self) -> torch.Tensor:
        """One SGD step of every member on the batch `inputs` names; returns each member's loss (M,).
        A pure tensor function: no host sync, no data-dependent shape (capturable as a CUDA graph)."""
        m, b, inp = self.m, self.batch, self.inputs
        x = loaders.augment(self.x[inp.idx.flatten()], inp.crop, inp.photo, self.data)
        x, y = x.view(m, b, *x.shape[1:]), self.y[inp.idx]
        with self._autocast():
            logits = vmap(self._logits, in_dims=(0, 0, 0, None if inp.mask is None else 0),
                          randomness="error")(self.params, self.buffers, x, inp.mask)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(m, b).mean(1)
        grads = torch.autograd.grad(loss.sum(), list(self.params.values()))
        with torch.no_grad():
            self._sgd(grads, inp.lr)
        return loss.detach()

    def _sgd(self, grads: list[torch.Tensor], lr: torch.Tensor) -> None:
        """torch.optim.SGD's update (weight decay, momentum, dampening 0, Nesterov) with per-member
        tensors: lr, momentum and L2 weight are (M,) columns, not Python numbers."""
        for (name, p), g in zip(self.params.items(), grads):
            col = (self.m,) + (1,) * (p.ndim - 1)
            if name in self.decay:
                g = g + p * self.wd.view(col)
            buf = self.momentum[name]
            buf.mul_(self.mom.view(col)).add_(g)  # the first step: 0 * momentum + g = g, SGD's clone of g
            d = g + buf * self.mom.view(col) if self.nesterov else buf
            p.sub_(d * lr.view(col))

    # --------------------------------------------------------------------------------------------
    # Members in and out, in a single run's names

    def member_state(self, j: int) -> dict[str, torch.Tensor]:
        """Member j's network state_dict (parameters and BN buffers), as its single run's checkpoint holds it."""
        flat = self.params | self.buffers
        return {k: flat[k][j].detach().clone() for k in self.keys}

    def momentum_state(self, j: int) -> dict[str, torch.Tensor]:
        return {k: v[j].clone() for k, v in self.momentum.items()}

    @torch.no_grad()
    def load_momentum(self, j: int, buffers: dict[str, torch.Tensor]) -> None:
        for k, v in buffers.items():
            self.momentum[k][j].copy_(v)

    @torch.no_grad()
    def silence(self, j: int) -> None:
        """Stop a diverged member: zero weights, statistics and momentum (its rate is 0 from now on), so its
        NaNs cost nothing and reach no one."""
        for t in (*self.params.values(), *self.buffers.values(), *self.momentum.values()):
            t[j].zero_()


class Stepper:
    """Calls `stack.step()`: eagerly on the CPU; on CUDA eagerly on a side stream for the first WARMUP
    steps (cuDNN picks its kernels, autograd its buffers), then captured once as a CUDA graph and
    replayed. A replay runs the captured kernels on the same buffers, so it computes what the eager
    step computes. The loss it returns is the graph's own tensor: copy it before the next call."""

    WARMUP = 3

    def __init__(self, stack: ConvStack, graph: bool):
        self.stack, self.capture, self.graph, self.out, self.n = stack, graph, None, None, 0

    def __call__(self) -> torch.Tensor:
        if self.capture and self.graph is None and self.n >= self.WARMUP:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self.stack.step()
        if self.graph is not None:
            self.graph.replay()
            return self.out
        self.n += 1
        if not self.capture:
            return self.stack.step()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = self.stack.step()
        torch.cuda.current_stream().wait_stream(side)
        return out
