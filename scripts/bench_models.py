"""Training-step throughput of bn_inception against timm's inception_v3, compared per multiply-accumulate.

Each network runs at its own input size (timm's inception_v3 needs about 75 px), so the fair figure is
MAC/s = images/s x MACs per image; the script prints the ratio ours/timm. Two more comparisons say where
a gap comes from:

* `cpu w1`: our network at full width (width 1.0, same 28 px stem), since narrow layers do fewer MACs
  per memory access whatever the implementation;
* `floor`: both networks with every BN and activation replaced by an identity (convolutions, pools,
  concatenations and the SGD update remain). Our stripped network's MAC/s over timm's *complete* one
  bounds what any BN/activation implementation (fused kernels, torch.compile) could reach at this
  setting; below 1.0, the ratio target cannot be met by changing our modules' normalization code.

On a GPU it adds both networks at 224 px.

    .venv/bin/python scripts/bench_models.py --steps 10
"""
import argparse
import os
import time

import timm
import torch
from torch import nn

import repro.models  # noqa: F401  (registers bn_inception with timm)
from repro.models import count_macs


def make_step(model, size, in_chans, batch, device, amp, compile_=False, lr=0.01):
    """One SGD training step (forward, backward, update) on fixed random data, channels_last.
    `compile_`: False, True (torch.compile's default mode) or a torch.compile mode such as "reduce-overhead"."""
    model = model.to(device, memory_format=torch.channels_last).train()
    mode = compile_ if isinstance(compile_, str) else None
    forward = torch.compile(model, mode=mode) if compile_ else model
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    x = torch.randn(batch, in_chans, size, size, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, model.num_classes, (batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = nn.functional.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def strip_norm_act(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm and activation module (ours and timm's) by nn.Identity, in place."""
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm | nn.ReLU | nn.Sigmoid):
            setattr(model, name, nn.Identity())
        else:
            strip_norm_act(child)
    return model


def seconds(step, steps, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def compare(label, nets, in_chans, args, device, lr=0.01):
    """nets: [(name, model, input size)]; rounds alternate between the nets, best round counts."""
    steps, macs = [], []
    for _, model, size in nets:
        macs.append(count_macs(model, torch.randn(1, in_chans, size, size)))
        steps.append(make_step(model, size, in_chans, args.batch, device, args.amp, args.compile, lr))
        for _ in range(args.warmup):
            steps[-1]()
    # interleaved rounds and the fastest round: robust to other load on a shared machine
    best = [min(t) for t in zip(*([seconds(s, args.steps, device) for s in steps] for _ in range(args.rounds)),
                                strict=True)]
    mac_s = []
    for (name, _, size), m, t in zip(nets, macs, best, strict=True):
        ips = args.batch * args.steps / t
        mac_s.append(ips * m)
        print(f"{label:>8} {name:>30} {size:4d}px {m / 1e6:8.1f} MMAC/img {ips:8.1f} img/s "
              f"{ips * m / 1e9:7.2f} GMAC/s", flush=True)
    print(f"{label:>8} MAC/s ratio ours/timm = {mac_s[0] / mac_s[-1]:.2f}"
          + (" (ours over the last line)" if len(nets) > 2 else ""), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="timed training steps per round")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds; the best is kept")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--gpu-batch", type=int, default=128)
    p.add_argument("--amp", action="store_true", help="bf16 autocast (GPU run)")
    p.add_argument("--compile", action="store_true", help="torch.compile both networks (slow to start)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads (default: all cores)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    print(f"torch {torch.__version__}, timm {timm.__version__}, {args.threads} of {os.cpu_count()} CPU threads, "
          f"batch {args.batch}, compile {args.compile}")

    # CPU scale: the Fashion-MNIST setting (28 px, 1 channel, width 0.25, small-input stem)
    ours = timm.create_model("bn_inception", num_classes=10, in_chans=1, small_input=True, width=0.25)
    theirs = timm.create_model("inception_v3", num_classes=10, in_chans=1)  # smallest input: 75 px
    compare("cpu", [("bn_inception w0.25", ours, 28), ("timm inception_v3", theirs, 75)], 1, args, cpu)
    # the same modules at full width: separates the cost of narrow layers from the implementation
    ours = timm.create_model("bn_inception", num_classes=10, in_chans=1, small_input=True)
    compare("cpu w1", [("bn_inception w1.0", ours, 28), ("timm inception_v3", theirs, 75)], 1, args, cpu)
    # the floor: our convolutions, pools and concats alone against timm's complete network
    ours = strip_norm_act(timm.create_model("bn_inception", num_classes=10, in_chans=1, small_input=True, width=0.25))
    bare = strip_norm_act(timm.create_model("inception_v3", num_classes=10, in_chans=1))
    # lr 0 (the update still runs): without BN the stripped networks diverge to NaN within 2 steps
    compare("floor", [("bn_inception w0.25, no BN/act", ours, 28), ("timm inception_v3, no BN/act", bare, 75),
                      ("timm inception_v3", theirs, 75)], 1, args, cpu, lr=0.0)

    if torch.cuda.is_available():  # full network at the paper's 224 px
        gpu = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
        args.batch = args.gpu_batch
        print(f"GPU: {torch.cuda.get_device_name()}, batch {args.batch}, amp {args.amp}")
        ours = timm.create_model("bn_inception", num_classes=1000)
        theirs = timm.create_model("inception_v3", num_classes=1000)
        compare("gpu", [("bn_inception", ours, 224), ("timm inception_v3", theirs, 224)], 3, args, gpu)


if __name__ == "__main__":
    main()
