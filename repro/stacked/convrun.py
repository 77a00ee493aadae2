"""Train the seeds (or any members) of one Figures 2-3 variant as one convolutional stack (issue 20):

    python -m repro.stacked experiment=bn_x30 scale=gpu seed=1,2,3

`repro.stacked` hands every member list whose network is not Figure 1's MLP to `run` here. Each member
is composed and validated exactly as a single run and writes the run directory its single run would
(same name, config.yaml, env.json, metrics.jsonl with the same records, summary.json, ckpt.pt with the
same keys), so repro.report reads it and `python -m repro.train` resumes it, and a stack resumes a single
run's checkpoint. The stack itself is repro.stacked.conv; checkpoints are one commit for the stack
(repro.stacked.members). On the CPU use repro.train instead: the stack does not pay there (conv's
docstring has the numbers).
"""

from __future__ import annotations

import logging
import random
import sys
import time

import numpy as np
import torch

from repro.config import Config
from repro.config.names import DATASETS
from repro.data import loaders
from repro.data.mnist import load_splits
from repro.errors import ReproError
from repro.models.probe import SigmoidProbe
from repro.optim import build_optimizer, lr_at, set_lr
from repro.runs import rundir
from repro.runs.process import dense_eval_steps, seed_and_backends
from repro.stacked import members as mem
from repro.stacked.conv import ConvStack, Stepper

log = logging.getLogger("repro.stacked")
CPU = torch.device("cpu")


def check(cfgs: list[Config]) -> None:
    """Refuse, in one line each, what the stack does not implement."""
    c = cfgs[0]
    if c.data.name not in DATASETS:
        raise ReproError(f"data.name={c.data.name}: the stack trains on in-memory images ({', '.join(DATASETS)}); "
                         f"use python -m repro.train for folder datasets")
    if any(x.optim.name != "sgd" for x in cfgs):
        raise ReproError("the stack implements SGD (with momentum and L2), as every Figures 2-3 variant uses; "
                         "use python -m repro.train for optim.name=adam")
    if c.train.sync_bn:
        raise ReproError("train.sync_bn=true needs several processes; the stack is one: use python -m repro.train")
    differ = [k for k in ("model", "data", "train") if any(getattr(x, k) != getattr(c, k) for x in cfgs)]
    if differ or any(x.optim.nesterov != c.optim.nesterov for x in cfgs):
        raise ReproError(f"every member of a stack must share model.*, data.*, train.* and optim.nesterov (one "
                         f"architecture, one batch size); these differ: {', '.join(differ) or 'optim.nesterov'}: "
                         f"stack them separately")
    names = [rundir.run_name(x) for x in cfgs]
    if len(set(names)) < len(names):
        raise ReproError(f"a member is named twice ({max(names, key=names.count)}): name each run once")


def _device(name: str) -> torch.device:
    """train.device as repro.train resolves it (auto: the GPU if there is one)."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ReproError(f"train.device={name} but no CUDA GPU is visible: use train.device=cpu")
    if name.startswith("cpu") or not torch.cuda.is_available():
        return CPU
    return torch.device(name if name.startswith("cuda") else "cuda")


def run(cfgs: list[Config]) -> list[dict]:
    """Train the members `cfgs` as one stack; return their summaries (finished members' as they are)."""
    check(cfgs)
    t = cfgs[0].train
    device = _device(t.device)
    seed_and_backends(cfgs[0], device)  # threads, cuDNN autotuning or deterministic kernels, as repro.train
    splits = load_splits(cfgs[0].data)
    shape = (splits.x_train.shape[1], splits.num_classes, splits.x_train.shape[-1])
    members = [mem.Member(c, splits.describe(), shape, device) for c in cfgs]
    summaries = [m.summary() for m in members if m.finished]
    live = [m for m in members if not m.finished]
    env = rundir.environment(device) | {"stacked": {"members": len(live), "argv": sys.argv}}
    try:
        if live:
            summaries += _train(live, splits, device, env)
    finally:  # an error or Ctrl-C leaves no lock behind; the last commit is the resume point
        for m in live:
            m.close()
    return summaries


def _rng(m: mem.Member, gen: torch.Generator) -> dict:
    """The member's RNG states under repro.train's keys: torch is the generator its dropout draws from."""
    numpy = np.random.RandomState(m.cfg.seed).get_state()
    return {"torch": gen.get_state(), "python": random.Random(m.cfg.seed).getstate(), "numpy": numpy, "cuda": None}


def _momentum(m: mem.Member) -> dict[str, torch.Tensor]:
    """The SGD momentum buffers of a member's checkpoint, by parameter name."""
    opt = build_optimizer(m.net, m.cfg.optim)
    opt.load_state_dict(m.ckpt["optimizer"])
    return {n: opt.state[p]["momentum_buffer"] for n, p in m.net.named_parameters() if "momentum_buffer" in opt.state[p]}


def _optimizer_state(m: mem.Member, buffers: dict[str, torch.Tensor], lr: float) -> dict:
    """What torch.optim.SGD's state_dict would hold for the member: its settings, rate and momentum."""
    opt = build_optimizer(m.net, m.cfg.optim)
    set_lr(opt, lr)
    if m.cfg.optim.momentum:
        for n, p in m.net.named_parameters():
            opt.state[p]["momentum_buffer"] = buffers[n]
    return opt.state_dict()


class _Run:
    """One stack's training state besides the stack: its members, their batch streams and dropout
    generators, the loss window, the test set; draws a step's inputs, records and checkpoints as
    repro.train does (its evaluation and probe code, run on each member's own network)."""

    def __init__(self, members: list[mem.Member], splits, device: torch.device):
        self.members, cfg = members, members[0].cfg
        self.t, self.drop = cfg.train, cfg.model.drop_rate or 0.0
        t = self.t
        self.streams = [loaders.InMemoryStream(splits.x_train, splits.y_train, t.batch_size, m.cfg.seed, cfg.data)
                        for m in members]
        self.gens = [torch.Generator() for _ in members]
        for m, s, g in zip(members, self.streams, self.gens):
            g.set_state(m.ckpt["rng"][0]["torch"] if m.ckpt else m.rng)
            if m.ckpt:
                s.load_state_dict(m.ckpt["data"])
        self.stack = ConvStack([m.net for m in members], splits.x_train.to(device), splits.y_train.to(device),
                               cfg.data, t.batch_size, [m.cfg.optim for m in members], self.drop, t.amp)
        self.window = torch.zeros(t.log_every, len(members), device=device)  # per-step losses, read at log steps
        for j, m in enumerate(members):
            if m.ckpt:
                self.stack.load_momentum(j, _momentum(m))
                self.window[:, j] = m.ckpt["losses"][0].to(device)
        self.x_test, self.y_test = splits.x_test.to(device), splits.y_test.to(device)
        self.probes = [SigmoidProbe(m.net, self.x_test[: t.probe_batch], t.probe_units) if t.probe_every else None
                       for m in members]
        self.dense = dense_eval_steps(t)
        self.t0 = time.perf_counter()

    def wall(self) -> float:
        return time.perf_counter() - self.t0

    def fill(self, step: int) -> None:
        """Step `step`'s batches, augmentation uniforms, dropout masks and rates into the stack's inputs."""
        masks, drop = None, self.drop
        if drop:  # F.dropout's noise, from each member's generator
            shape = (self.t.batch_size, self.stack.features)
            masks = [torch.empty(shape, dtype=self.stack.x.dtype).bernoulli_(1 - drop, generator=g).div_(1 - drop)
                     for g in self.gens]
        self.stack.inputs.fill([s.draw(CPU) for s in self.streams], masks,
                               [lr_at(step, m.cfg.optim) if m.status == "running" else 0.0 for m in self.members])

    def records_at(self, done: int) -> bool:
        t = self.t
        return not (done % t.log_every and done % t.eval_every and done != t.steps and done not in self.dense)

    def record(self, done: int) -> list[dict]:
        """At a log or eval step: stop the members that diverged by repro.train's rule (repro.runs.divergence:
        a NaN/inf loss, or one that stays far above its start), record the others; the stopped ones' summaries."""
        w = self.window[: (done - 1) % self.t.log_every + 1].cpu()
        summaries = []
        for j, m in enumerate(self.members):
            at = m.divergence.check(w[:, j], done) if m.status == "running" else None
            if at is not None:
                m.status, m.diverged_at = "diverged", at
                summaries.append(m.finish(m.diverged_at, self.wall()))
                self.stack.silence(j)
        self.observe(done, w.mean(0))
        return summaries

    def observe(self, step: int, losses: torch.Tensor | None) -> None:
        """Each running member's metrics record as repro.train writes it."""
        t, stack = self.t, self.stack
        evaluate = step % t.eval_every == 0 or step == t.steps or step in self.dense
        accs = []
        for j, m in enumerate(self.members):
            if m.status != "running":
                continue
            rec = {"step": step, "lr": lr_at(step, m.cfg.optim), "wall": round(m.wall0 + self.wall(), 3)}
            if losses is not None:
                rec["loss"] = float(losses[j])
            probe = self.probes[j] is not None and (step % t.probe_every == 0 or step == t.steps)
            if evaluate or probe:
                m.net.load_state_dict(stack.member_state(j))
            if evaluate:
                batches = loaders.tensor_eval_batches(self.x_test, self.y_test, t.eval_batch_size)
                rec |= loaders.evaluate(m.net, batches, len(self.y_test))
                accs.append(f"{rec['test_acc']:.4f}")
            if probe and (p := self.probes[j](m.net)) is not None:
                rec["probe"] = p
            m.log.log(rec)
        if accs:
            log.info("step %d/%d: test accuracy %s", step, t.steps, " ".join(accs))

    def checkpoint(self, step: int) -> None:
        """Every running member's checkpoint, with the keys repro.train's hold, committed as one."""
        stack, wall = self.stack, self.wall()

        def state(j: int) -> dict:
            m = self.members[j]
            return {"model": stack.member_state(j),
                    "optimizer": _optimizer_state(m, stack.momentum_state(j), lr_at(max(step - 1, 0), m.cfg.optim)),
                    "data": self.streams[j].state_dict(), "rng": [_rng(m, self.gens[j])], "step": step,
                    "wall": m.wall0 + wall, "wandb_id": m.wandb_id, "losses": [self.window[:, j].clone().cpu()],
                    "identity": rundir.run_identity(m.cfg, m.facts), "data_identity": m.describe, "resumes": m.resumes,
                    "divergence": m.divergence.state_dict()}

        mem.commit(self.members, state)


def _train(members: list[mem.Member], splits, device: torch.device, env: dict) -> list[dict]:
    """repro.train's loop for a stack: steps from the last commit (or 0), recording at log and eval
    steps, committing checkpoints on the schedule and at the end."""
    t = members[0].cfg.train
    start = mem.open_members(members, env)
    run, summaries = _Run(members, splits, device), []
    step_fn = Stepper(run.stack, graph=device.type == "cuda")
    if start == 0:
        run.observe(0, None)
    for step in range(start, t.steps):
        run.fill(step)
        run.window[step % t.log_every].copy_(step_fn())
        done = step + 1
        if run.records_at(done):
            summaries += run.record(done)
        if not any(m.status == "running" for m in members):
            break  # every member diverged
        if t.checkpoint_every and done % t.checkpoint_every == 0 and done != t.steps:
            run.checkpoint(done)
    run.checkpoint(t.steps)
    for m in members:
        if m.status == "running":
            m.status = "complete"
            summaries.append(m.finish(t.steps, run.wall()))
    return summaries
