"""Figure 2's plateau check (issue 9): how many steps Inception needs to plateau at a longer scale,
measured on one long run against the ledger's own precondition, and what the six variants would cost
at that length on 2 cores.

Writes results/fig2_plateau/<scale>/: runs.csv, meta.json, plateau.png, report.md. The cpu-scale
Inception curves and the six variants' wall times it compares with are read from the committed
Figure 2 report (results/fig2/cpu/) and copied into runs.csv and meta.json, so verify needs nothing else.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.pyplot as plt

from repro.report import Long, md_table, read_long, runs_by_experiment, runs_section
from repro.report.fig2 import PAPER, VARIANTS, finish_plot
from repro.report.provenance import ROOT
from repro.report.stats import plateau_gain, plateau_step

EXPERIMENTS = ["inception"]
REFERENCE = Path("results/fig2/cpu")  # the committed cpu-scale report: Inception's curves, every variant's wall time
BUDGET_H = 2.0  # issue 9: run the six variants, one seed, if they fit in about two hours on 2 cores
CORES = 2


def collect(sel, **_) -> tuple[list[tuple], dict]:
    """The long runs' validation curves, the cpu-scale Inception curves beside them, and the
    cpu-scale wall time of every variant's runs (the cost basis)."""
    runs = sel.runs["inception"]
    rows = [(r.name, r.seed, s, "test_acc", a) for r in runs for s, a in zip(*r.curve("test_acc"))]
    ref_meta = json.loads((ROOT / REFERENCE / "meta.json").read_text())
    ref_long = read_long(ROOT / REFERENCE / "runs.csv")
    ref_runs = [r for r in ref_meta["runs"] if r["status"] == "complete"]
    rows += [(r["run"], r["seed"], s, "test_acc", a) for r in ref_runs if r["experiment"] == "inception"
             for s, a in zip(*ref_long.curve(r["run"], "test_acc"))]
    first = runs[0]
    return rows, {"config": {k: first.config[k] for k in ("train", "optim", "model", "data")},
                  "data": first.summary["data"], "env": {k: first.env.get(k) for k in ("device", "torch", "cpu_threads")},
                  "reference": {"dir": str(REFERENCE), "steps": ref_meta["config"]["train"]["steps"],
                                "eval_every": ref_meta["config"]["train"]["eval_every"],
                                "runs": [{k: r[k] for k in ("run", "experiment", "seed", "wall_s")} for r in ref_runs]}}


def curve(long: Long, run: str):
    s, a = long.curve(run, "test_acc")
    return s[s > 0], a[s > 0]  # step 0 (the untrained network) left out, as in the ledger's precondition


def check(long: Long, runs: list[dict], k: int, x: float) -> list[list]:
    """Per run: steps, best accuracy and its step, the precondition's gain over the last k
    evaluations, whether it holds, and the step after which the run never gained more than x."""
    rows = []
    for r in runs:
        s, a = curve(long, r["run"])
        gain, at = plateau_gain(a, k), plateau_step(s, a, x)
        rows.append([f"`{r['run']}`", f"{int(s[-1]):,}", f"{a.max() * 100:.2f} (step {int(s[a.argmax()]):,})",
                     f"{gain * 100:.2f}", "yes" if gain <= x else "**no**",
                     f"{at:,.0f} ({at / s[-1]:.0%} of the run)" if math.isfinite(at) else "not within the run"])
    return rows


def cost(meta: dict, steps: int) -> tuple[list[list], float]:
    """Each variant's least contended cpu-scale wall time (the machine's own speed: a lower bound)
    scaled to `steps`; and the six together, two at a time on 2 cores, in hours."""
    ref = meta["reference"]
    rows, total = [], 0.0
    for v in VARIANTS:
        walls = [r["wall_s"] for r in ref["runs"] if r["experiment"] == v]
        est = min(walls) * steps / ref["steps"] if walls else math.nan
        total += est
        rows.append([PAPER[v][0], ", ".join(f"{w:,.0f}" for w in walls), f"{est / 60:,.0f}"])
    return rows, total / CORES / 3600


def plot(long: Long, meta: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in runs_by_experiment(meta)["inception"]:
        ax.plot(*curve(long, r["run"]), color="tab:blue", label=f"{meta['scale']}: {r['run']}")
    styles = [("tab:gray", "-"), ("tab:olive", "--"), ("tab:brown", ":"), ("tab:pink", "-.")]
    for k, r in enumerate(r for r in meta["reference"]["runs"] if r["experiment"] == "inception"):
        color, ls = styles[k % len(styles)]  # each seed its own colour and dash
        ax.plot(*curve(long, r["run"]), color=color, ls=ls, lw=1.2, label=f"cpu: seed {r['seed']}")
    finish_plot(fig, ax, f"Inception at {meta['scale']} scale against cpu scale", path)


def render(long: Long, meta: dict, ledger: dict, out: Path) -> str:
    scale, ref = meta["scale"], meta["reference"]
    pre = ledger["preconditions"]["inception_plateaued"]
    k, x = pre["k"], pre["x"]
    t, o, m, data = meta["config"]["train"], meta["config"]["optim"], meta["config"]["model"], meta["data"]
    long_runs = runs_by_experiment(meta)["inception"]
    ref_runs = [r for r in ref["runs"] if r["experiment"] == "inception"]
    plot(long, meta, out / "plateau.png")
    gains = [plateau_gain(curve(long, r["run"])[1], k) for r in long_runs]
    holds = all(g <= x for g in gains)
    costs, hours = cost(meta, t["steps"])
    fits = hours <= BUDGET_H
    measured = [r["wall_s"] for r in long_runs]
    lr_end = o["decay_rate"] ** (t["steps"] / o["decay_steps"])
    answer = (f"At {t['steps']:,} steps Inception **has plateaued** by the ledger's definition" if holds else
              f"At {t['steps']:,} steps Inception **has not plateaued** by the ledger's definition")
    return f"""# Figure 2 at {scale} scale: does Inception plateau?

Issue 9: at cpu scale Inception was still gaining at its last evaluations, so the Figure 3 speed-up
claims were not testable there (`{ref['dir']}/report.md`, Preconditions). This measures, with one long
Inception run, whether {t['steps']:,} steps are enough, and what Figures 2-3 would cost at that length.
Built by `python -m repro.report fig2-plateau --scale {scale} --runs-dir {meta['runs_dir']}`; every number is
re-derived from `runs.csv` and `meta.json` beside this file by `python -m repro.report verify` (the cpu-scale
curves and wall times are copied there from `{ref['dir']}/`).

{answer} (best of its last {k} evaluations minus its best before them: {", ".join(f"{g * 100:.2f}" for g in gains)} points; the precondition asks ≤ {x * 100:g}).
Six variants, one seed, at this length: about **{hours:.1f} h on {CORES} cores** (estimate below), which
{"fits" if fits else "does not fit"} the issue's budget of about {BUDGET_H:g} h{"" if fits else ", so they are not run here: `make reproduce-fig2 SCALE=" + scale + " SEEDS=1` runs them"}.

## What was run
| | |
|---|---|
| data | {data['dataset']}: {data['source']} — {data['n_train']:,} training / {data['n_test']:,} validation images |
| network | `{m['name']}` at width {m['width']}, small-input stem={m['small_input']} (as at cpu scale) |
| steps, schedule | {t['steps']:,} steps of {t['batch_size']} ({t['steps'] / ref['steps']:g}x cpu scale's {ref['steps']:,}); SGD, momentum {o['momentum']}, rate {o['lr']} decayed by {o['decay_rate']} every {o['decay_steps']} steps (steps / 30, as at cpu scale), so it ends at {lr_end:.2f} of its start |
| evaluation | single-crop top-1 on the {data['n_test']:,} validation images every {t['eval_every']} steps ({t['steps'] // t['eval_every']} evaluations, as at cpu scale: the precondition's last {k} are the last {k * t['eval_every']:,} steps) |
| hardware | {meta['env']['device']}, torch {meta['env']['torch']}, {meta['env']['cpu_threads']} thread(s) |

{runs_section(meta)}
## Plateau
The ledger's precondition `inception_plateaued` (`{meta['claims']}`): per seed, the best of the last {k}
evaluations minus the best of all earlier ones (step 0 left out) is at most {x * 100:g} points. The last
column looks back over the whole curve: the first evaluation after which the run never beat its best so far
by more than {x * 100:g} points.

{md_table(["run", "steps", "best accuracy, % (step)", f"gain in the last {k} evaluations (points)", "plateaued", f"no later gain above {x * 100:g} points after step"],
          check(long, long_runs, k, x) + check(long, ref_runs, k, x))}
The long run's schedule is stretched with its length, so its curve at step {ref['steps']:,} is not a cpu-scale run's:
each scale is judged at its own end, as the ledger's precondition is.

![Inception at both scales](plateau.png)

## Cost of Figures 2-3 at this length
Each variant's cpu-scale wall times on one thread (`{ref['dir']}/meta.json`; runs shared the 2 cores with
other jobs, so the least contended one is taken as the machine's speed), scaled by {t['steps'] / ref['steps']:g}:

{md_table(["variant", f"cpu-scale wall times (s, {ref['steps']:,} steps)", f"estimate at {t['steps']:,} steps (min)"], costs)}
Six runs two at a time on {CORES} cores: about {hours:.1f} h, a lower bound (it assumes the least contended
speed and perfect pairing). The long Inception run itself took {", ".join(f"{w / 60:,.0f}" for w in measured)} min against the
estimate's {costs[VARIANTS.index("inception")][-1]} min: the ratio is how much the machine was shared while it ran.
"""
