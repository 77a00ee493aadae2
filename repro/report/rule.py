"""Figure 1's rate and init std by its ledger's rule: results/fig1/rule.md, rendered from the map's committed
data (results/fig1/map/runs.csv, whose baseline runs' first 5,000 steps are the rule runs' own) and checked
by `python -m repro.report verify` together with the setting conf/family/fig1.yaml holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from repro.report import md_table, read_long, write_text
from repro.report.stats import value_at

BASE = "fig1_baseline"
STEP = 5000  # the rule reads the baseline's test accuracy at 5,000 steps (results/fig1/claims.yaml)
COMMAND = """    python -m repro.stacked experiment=fig1_baseline optim.lr=0.01,0.04,0.16,0.63,2.5,10.0 \\
        model.init_std=0.01,0.1,1.0 seed=1,2,3 scale=cpu train.steps=5000 train.eval_every=500 \\
        train.probe_every=2500 train.log_every=500 train.checkpoint_every=0 train.threads=1 \\
        train.compile=true logger.wandb.mode=disabled runs_dir=/work/runs10/fig1_rule
    (run as two processes, rates 0.01-0.16 and 0.63-10; from commit eceb554 with the map launcher being
    edited, so their env.json records eceb554-dirty; full MNIST, 60,000 / 10,000 images, canonical MD5s)"""


def baseline_at_rule_step(map_dir: Path) -> dict[tuple[float, float], dict[int, float]]:
    """(lr, init std) -> {seed: the baseline's test accuracy at 5,000 steps}, from the map's committed files."""
    meta = json.loads((Path(map_dir) / "meta.json").read_text())
    long = read_long(Path(map_dir) / "runs.csv")
    out: dict[tuple[float, float], dict[int, float]] = {}
    for r in meta["runs"]:
        if r["experiment"] == BASE:
            out.setdefault(tuple(meta["cells"][r["run"]]), {})[r["seed"]] = value_at(*long.curve(r["run"], "test_acc"), STEP)
    return out


def render(map_dir: Path, family: Path) -> str:
    """rule.md: the rule, how its runs were made, the cell it picks and whether Figure 1's config holds it."""
    acc = baseline_at_rule_step(map_dir)
    seeds = sorted({s for v in acc.values() for s in v})
    mean = {c: float(np.mean([v[s] for s in seeds])) for c, v in acc.items()}
    best = max(sorted(mean), key=lambda c: (mean[c], -c[0]))  # ties to the smaller rate
    cfg = yaml.safe_load(Path(family).read_text())
    held = (cfg["optim"]["lr"], cfg["model"]["init_std"])
    result = f"Result: **lr {best[0]}, init std {best[1]}** (conf/family/fig1.yaml)."
    if held != best:
        result += f" **conf/family/fig1.yaml holds lr {held[0]}, init std {held[1]}: not the rule's result.**"
    rows = [[c[0], c[1], ", ".join(f"{acc[c][s]:.4f}" for s in seeds), f"{mean[c]:.4f}" + (" **(best)**" if c == best else "")]
            for c in sorted(acc)]
    return f"""# Figure 1's rate and init std, by the ledger's rule

The rule (results/fig1/claims.yaml, committed before any full-MNIST run): the cell of the map's grid where the
**baseline's** test accuracy at {STEP:,} steps, averaged over seeds {seeds[0]}-{seeds[-1]}, is highest; ties to the smaller rate.
BN's runs are not consulted. Read from {STEP:,}-step runs of the map's baseline cells (the map's own first {STEP:,}
steps: same seeds, batch order, initial weights and settings), made first so that Figure 1 could start
before the map:

{COMMAND}

{result}

The table is rendered from the map's committed `results/fig1/map/runs.csv` (its baseline runs at step {STEP:,},
which equal the rule runs' to the last digit); `python -m repro.report verify` re-renders it and checks the
setting in conf/family/fig1.yaml.

{md_table(['lr', 'init std', f'baseline test acc at {STEP:,} steps, seeds {", ".join(map(str, seeds))}', 'mean'], rows)}"""


def write(map_dir: Path, family: Path, out: Path) -> Path:
    write_text(Path(out), render(map_dir, family))
    return Path(out)
