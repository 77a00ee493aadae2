"""Figure 4's evaluation speed: the eval-mode network against repro.evaluate's inference network.

`repro.evaluate` folds each BN that follows a conv into it (Alg. 2, step 5) and runs in channels_last
memory. This times a forward pass of 1,024 views (the evaluation's batch) through both, side by side in
one process, on the cpu-scale networks of Figure 4 (quarter-width BN-x30 and ensemble_5, which keeps
per-activation BN layers unfolded), and prints CPU seconds per 1,000 views, the ratio, and the largest
difference of the softmax outputs.

    .venv/bin/python scripts/bench_evaluate.py [--threads 1] [--reps 5]
"""
import argparse
import platform
import subprocess
import time

import torch

from repro.config import compose
from repro.evaluate import inference_network
from repro.models import build_model


def cpu_seconds(model, x, reps: int) -> float:
    """Best of `reps` timings (CPU time of this process, robust to other jobs on the machine)."""
    with torch.no_grad():
        model(x)  # warm-up: allocator and oneDNN primitive caches
        best = float("inf")
        for _ in range(reps):
            t = time.process_time()
            model(x)
            best = min(best, time.process_time() - t)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--views", type=int, default=1024)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"# scripts/bench_evaluate.py --threads {args.threads} --reps {args.reps} --views {args.views}; "
          f"commit {commit}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}")
    torch.manual_seed(0)
    x = torch.rand(args.views, 1, 28, 28)
    for experiment in ("bn_x30", "ensemble_5"):
        net = build_model(compose([f"experiment={experiment}", "scale=cpu"]).model, 1, 10, 28).eval()
        fast = inference_network(net)
        xc = x.contiguous(memory_format=torch.channels_last)
        plain_s, fast_s = cpu_seconds(net, x, args.reps), cpu_seconds(fast, xc, args.reps)
        with torch.no_grad():
            diff = (net(x).softmax(-1) - fast(xc).softmax(-1)).abs().max().item()
        k = 1000 / args.views
        print(f"{experiment:<11} eval-mode {plain_s * k:6.3f} s / 1,000 views, inference network {fast_s * k:6.3f} s: "
              f"ratio {plain_s / fast_s:.2f}x; max |softmax difference| {diff:.1e}")


if __name__ == "__main__":
    main()
