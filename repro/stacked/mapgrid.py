"""The launchers of stacked runs: `python -m repro.stacked --map LEDGER` (`make fig1-map`) runs the ledger's
grid (results/fig1/map/claims.yaml) as one `repro.stacked` process per net, side by side, and the report
(repro.report.fig1_map) rebuilds the same overrides to select its runs; `python -m repro.stacked --jobs N
... seed=LIST` (`make reproduce`) shares a seed list out over N processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

# How the map runs (the grid itself is in its ledger): evaluations and probes as the ledger says,
# checkpoints to resume from, one single-threaded process per net on a 2-core machine.
MAP_SETTINGS = ["train.log_every=500", "train.checkpoint_every=5000", "train.threads=1",
                "train.compile=true", "logger.wandb.mode=disabled", "logger.progress=off", "resume=auto"]


def map_commands(ledger: Path, extra: list[str]) -> list[list[str]]:
    """One `python -m repro.stacked` command per net of the ledger's grid (they share batch orders by seed)."""
    g = yaml.safe_load(Path(ledger).read_text())["grid"]
    grid = [f"optim.lr={','.join(map(str, g['lr']))}", f"model.init_std={','.join(map(str, g['init_std']))}",
            f"seed={','.join(map(str, g['seeds']))}", *schedule(g)]
    scale = [] if any(o.startswith("scale=") for o in extra) else ["scale=cpu"]
    return [[sys.executable, "-m", "repro.stacked", f"experiment={e}", *grid, *scale, *MAP_SETTINGS, *extra]
            for e in g["experiments"]]


def schedule(grid: dict) -> list[str]:
    """The ledger's steps, evaluations and probes as overrides."""
    return [f"train.steps={grid['steps']}", f"train.eval_every={grid['eval_every']}",
            f"train.probe_every={grid['probe_every']}"]


def run_map(ledger: Path, extra: list[str]) -> int:
    """Run the map's processes side by side; the exit status of the first that fails, else 0."""
    procs = [subprocess.Popen(c) for c in map_commands(ledger, extra)]
    codes = [p.wait() for p in procs]
    return next((c for c in codes if c), 0)


def split_seeds(overrides: list[str], jobs: int) -> list[list[str]]:
    """The overrides once per process, the `seed=` list dealt out round-robin over `jobs` processes (each
    trains its seeds as stacks; the members of one seed stay in one process, sharing their batch order)."""
    seeds = next(o.split("=", 1)[1].split(",") for o in overrides if o.startswith("seed="))
    rest = [o for o in overrides if not o.startswith("seed=")]
    return [[*rest, f"seed={','.join(seeds[j::jobs])}"] for j in range(min(jobs, len(seeds)))]


def run_split(args: list[str]) -> int:
    """`--jobs N OVERRIDES`: N `repro.stacked` processes side by side, one per share of the seed list; the
    exit status of the first that fails, else 0."""
    if not args or not args[0].isdigit() or int(args[0]) < 1 or not any(a.startswith("seed=") for a in args[1:]):
        print("error: --jobs N needs a number of processes >= 1 and a seed=... list to share out "
              "(e.g. --jobs 2 experiment=fig1_baseline,fig1_bn seed=1,2,3,4)", file=sys.stderr)
        return 2
    procs = [subprocess.Popen([sys.executable, "-m", "repro.stacked", *part]) for part in split_seeds(args[1:], int(args[0]))]
    codes = [p.wait() for p in procs]
    return next((c for c in codes if c), 0)

