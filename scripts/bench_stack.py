"""Per-step time of the convolutional stack (repro.stacked.conv) against the same members trained one
after another as repro.train trains them (issue 20), side by side.

    python scripts/bench_stack.py                                  # 3 BN-x30 members, smoke width, CPU
    python scripts/bench_stack.py --width 0.25 --batch 32 --device cuda --members 3,6,12

Both sides train the same members (seeds 1..M) on the same draws of the runner's data pipeline: `serial`
runs repro.train's step body per member (augment, forward, F.cross_entropy, backward,
torch.optim.SGD), `stack` one stack step for all (on CUDA captured as a CUDA graph after 3 eager steps,
as `python -m repro.stacked` runs it). Each prints milliseconds per step of all M members. On CUDA
`--check` also replays the graph and runs the eager step from the same state and prints how far apart
their weights end. Timings mean something only from a quiet machine (nothing else running).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from repro.config import compose
from repro.data import loaders
from repro.data.mnist import load_splits
from repro.models import build_model
from repro.optim import build_optimizer, lr_at, set_lr
from repro.stacked.conv import ConvStack, Stepper

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _members(args, m: int):
    over = [f"experiment={args.experiment}", f"scale={args.scale}", f"data.root={args.data_root}",
            f"model.width={args.width}", f"train.batch_size={args.batch}", "runs_dir=/tmp/bench_stack"]
    cfgs = [compose([*over, f"seed={s}"]) for s in range(1, m + 1)]
    splits = load_splits(cfgs[0].data)
    shape = (splits.x_train.shape[1], splits.num_classes, splits.x_train.shape[-1])
    nets = []
    for c in cfgs:
        torch.manual_seed(c.seed)
        nets.append(build_model(c.model, *shape).to(args.device))
    return cfgs, splits, nets


def _draws(cfgs, splits, batch: int):
    streams = [loaders.InMemoryStream(splits.x_train, splits.y_train, batch, c.seed, c.data) for c in cfgs]
    return lambda: [s.draw(CPU) for s in streams]


def time_serial(args, m: int) -> float:
    cfgs, splits, nets = _members(args, m)
    x, y, draw = splits.x_train.to(args.device), splits.y_train.to(args.device), _draws(cfgs, splits, args.batch)
    opts = [build_optimizer(n, c.optim) for n, c in zip(nets, cfgs)]
    for n in nets:
        n.train()

    def step(i: int) -> None:
        for d, net, opt, c in zip(draw(), nets, opts, cfgs):
            idx = d.idx.to(args.device)
            crop = None if d.crop is None else d.crop.to(args.device)
            photo = None if d.photo is None else d.photo.to(args.device)
            set_lr(opt, lr_at(i, c.optim))
            loss = F.cross_entropy(net(loaders.augment(x[idx], crop, photo, c.data)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return _time(step, args)


def _stack(args, m: int):
    cfgs, splits, nets = _members(args, m)
    c = cfgs[0]
    drop = c.model.drop_rate or 0.0
    stack = ConvStack(nets, splits.x_train.to(args.device), splits.y_train.to(args.device), c.data, args.batch,
                      [x.optim for x in cfgs], drop)
    draw, gen = _draws(cfgs, splits, args.batch), torch.Generator().manual_seed(0)

    def fill(i: int) -> None:
        masks = [torch.empty(args.batch, stack.features).bernoulli_(1 - drop, generator=gen).div_(1 - drop)
                 for _ in cfgs] if drop else None
        stack.inputs.fill(draw(), masks, [lr_at(i, x.optim) for x in cfgs])

    return stack, fill


def time_stack(args, m: int) -> float:
    stack, fill = _stack(args, m)
    stepper = Stepper(stack, graph=args.device.type == "cuda")

    def step(i: int) -> None:
        fill(i)
        stepper()

    return _time(step, args)


def _time(step, args) -> float:
    for i in range(args.warmup):
        step(i)
    _sync(args.device)
    t0 = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        step(i)
    _sync(args.device)
    return (time.perf_counter() - t0) / args.steps * 1000


def check_graph(args, m: int) -> float:
    """Largest weight difference after `steps` graph replays against as many eager steps from the same state."""
    stack, fill = _stack(args, m)
    eager = copy.copy(stack)
    eager.params = {k: v.detach().clone().requires_grad_() for k, v in stack.params.items()}
    eager.buffers = {k: v.clone() for k, v in stack.buffers.items()}
    eager.momentum = {k: v.clone() for k, v in stack.momentum.items()}
    graphed = Stepper(stack, graph=True)
    for i in range(args.steps):
        fill(i)
        graphed()
        eager.inputs = stack.inputs  # the same draws
        eager.step()
    return max((stack.params[k] - eager.params[k]).abs().max().item() for k in stack.params)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", default="3", help="comma list of stack sizes M")
    p.add_argument("--experiment", default="bn_x30")
    p.add_argument("--scale", default="smoke")
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-root", default=str(ROOT / "data"))
    p.add_argument("--check", action="store_true", help="CUDA: graph replay against the eager step")
    args = p.parse_args()
    args.device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if args.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else f"CPU, {args.threads} thread(s)"
    print(f"# {args.experiment} at {args.scale}, width {args.width}, batch {args.batch}, {name}; ms per step of "
          f"all members, mean of {args.steps} after {args.warmup} warm-up steps")
    print(f"{'members':>7} {'serial':>10} {'stack':>10} {'stack/serial':>12}")
    for m in (int(x) for x in args.members.split(",")):
        serial, stacked = time_serial(args, m), time_stack(args, m)
        print(f"{m:>7} {serial:>10.1f} {stacked:>10.1f} {stacked / serial:>12.2f}")
        if args.check and args.device.type == "cuda":
            print(f"        graph vs eager, max weight difference after {args.steps} steps: {check_graph(args, m):.3g}")


if __name__ == "__main__":
    main()
