"""The map (issue 10): BN − baseline across learning rates and init stds, paired by seed.

Writes results/fig1/map/: runs.csv, meta.json, map.png, report.md. The grid, the statistics and the
cell marks are fixed by its ledger, results/fig1/map/claims.yaml.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from repro.report import fmt, load_ledger, md_table, run_meta, save_figure, write_outputs
from repro.report.pipeline import render as render_from_files
from repro.report.provenance import ledger_provenance
from repro.report.stats import (
    METHOD_NOTE,
    REPRODUCED,
    leave_one_out,
    stability_text,
    steps_to_reach,
    summarize,
    value_at,
    verdict,
)
from repro.runs.records import Selection, select_runs

BASE, BN = "fig1_baseline", "fig1_bn"
EXPERIMENTS = [BASE, BN]


def cell_overrides(ledger: dict, lr: float, std: float, extra: tuple[str, ...]) -> tuple[str, ...]:
    """The overrides that make the Figure 1 recipe one cell of the map, as `repro.stacked --map` runs it."""
    from repro.stacked.mapgrid import MAP_SETTINGS, schedule

    return (f"optim.lr={lr}", f"model.init_std={std}", *schedule(ledger["grid"]), *MAP_SETTINGS, *extra)


def build(runs_dir: Path, out: Path, claims: Path, steps: int | None = None, scale: str = "cpu",
          extra: tuple[str, ...] = ()) -> Path:
    """Select every cell's runs, write runs.csv and meta.json, render the report from them."""
    ledger = load_ledger(claims)
    if steps is not None:  # a shorter map than the ledger's, reported as such
        ledger["grid"]["steps"] = steps
    rows, cells, merged = [], {}, Selection({BASE: [], BN: []}, [], {}, {})
    for lr in ledger["grid"]["lr"]:
        for std in ledger["grid"]["init_std"]:
            sel = select_runs(runs_dir, EXPERIMENTS, scale, cell_overrides(ledger, lr, std, extra))
            for e, rs in sel.runs.items():
                merged.runs[e] += rs
                for r in rs:
                    cells[r.name] = [lr, std]
                    rows += [(r.name, r.seed, s, "test_acc", a) for s, a in zip(*r.curve("test_acc"))]
            merged.missing |= {f"{e} lr={lr} std={std}": m for e, m in sel.missing.items()}
            merged.identity |= {f"{e} lr={lr} std={std}": h for e, h in sel.identity.items()}
    used = [r for rs in merged.runs.values() for r in rs]
    meta = run_meta(merged, ledger_provenance(claims, used))
    first = used[0]
    meta |= {"figure": "fig1_map", "scale": scale, "runs_dir": str(runs_dir), "claims": str(claims), "overrides": [],
             "cells": cells, "steps": ledger["grid"]["steps"], "data": first.summary["data"],
             "env": {k: first.env.get(k) for k in ("device", "device_name", "torch", "cpu_threads")},
             "best_acc": {r.name: r.summary["best_test_acc"] for r in used}}
    write_outputs(Path(out), rows, meta)
    return render_from_files(Path(out), Path(out))


# ----------------------------------------------------------------------------------------------
# Per cell: the paired statistics and the marks


def _at(curve, step: int, diverged: bool) -> float:
    """The accuracy at `step`; a shorter run's last evaluation, but nothing for a run that diverged before it."""
    steps, values = curve
    if step > steps[-1] and diverged:
        return math.nan
    return value_at(steps, values, min(step, steps[-1]))


def cell_table(long, meta: dict, ledger: dict) -> dict:
    """(lr, std) -> {"marks": {net: mark}, stat_key: Summary} with seeds paired across the two nets."""
    by = {}
    for r in meta["runs"]:
        by.setdefault(tuple(meta["cells"][r["run"]]), {}).setdefault(r["experiment"], {})[r["seed"]] = r
    target, floor, out = ledger["target"], ledger["never_learns_below"], {}
    for cell, nets in by.items():
        seeds = sorted(set(nets.get(BASE, {})) & set(nets.get(BN, {})))
        marks = {}
        for e in EXPERIMENTS:
            rs = nets.get(e, {}).values()
            low = sum((meta["best_acc"][r["run"]] or 0) < floor for r in rs)
            if any(r["status"] == "diverged" for r in rs):
                marks[e] = "diverged"
            elif rs and low == len(rs):  # the ledger's mark: every seed
                marks[e] = "never learns"
            elif low:  # said, but not the ledger's mark
                marks[e] = f"never learns in {low} of {len(rs)} seeds"
        curves = {e: [long.curve(nets[e][s]["run"], "test_acc") for s in seeds] for e in EXPERIMENTS}
        reach = {e: [steps_to_reach(*c, target) for c in curves[e]] for e in EXPERIMENTS}
        gaps = [b - n if not (math.isinf(b) and math.isinf(n)) else math.nan for b, n in zip(reach[BASE], reach[BN])]
        row = {"seeds": seeds, "marks": marks, "reach": reach, "gaps": gaps, "steps_gap_to_target": gap_summary(gaps)}
        for step in ledger["checkpoints"]:
            row[f"acc_{step}"] = {e: [_at(c, step, nets[e][s]["status"] == "diverged") for c, s in zip(curves[e], seeds)]
                                  for e in EXPERIMENTS}
            row[f"acc_gap_{step}"] = summarize([n - b for b, n in zip(row[f"acc_{step}"][BASE], row[f"acc_{step}"][BN])])
        out[cell] = row
    return out


def gap_summary(gaps: list[float]):
    """The steps gap over the seeds where at least one net reaches the target (nan: neither); None if no seed."""
    values = [g for g in gaps if not math.isnan(g)]
    return summarize(values) if values else None


def steps_verdicts(row: dict, op: str = ">", threshold: float = 0.0) -> tuple[str | None, list[str | None]]:
    """A cell's "BN reaches the target in fewer steps" verdict, and the verdicts that leave one seed out."""
    judge = lambda s: verdict(s, op, threshold) if s is not None else None  # noqa: E731
    g = row["gaps"]
    return judge(gap_summary(g)), [judge(gap_summary(g[:i] + g[i + 1:])) for i in range(len(g))]


def _steps_text(reach: list[float]) -> str:
    return ", ".join("never" if math.isinf(v) else f"{v:,.0f}" for v in reach)


def _interval(s) -> str:
    if s is None:
        return "neither reaches"
    if math.isnan(s.lo):
        return f"{fmt(s.mean)} (no interval: {s.method})"
    return f"{fmt(s.mean)} [{fmt(s.lo)}, {fmt(s.hi)}]"


def read_at(step: int, steps: int) -> str:
    """Where an accuracy "at `step`" was read in runs of `steps` steps."""
    return f"{step:,}" if step <= steps else f"{steps:,} (the runs' end; the ledger asks {step:,})"


def _k(x: float) -> str:
    """Steps compactly: 15,760 -> 15.8k, -70 -> -70."""
    return f"{x / 1000:.1f}k" if abs(x) >= 1000 else f"{x:.0f}"


def cell_text(key: str, row: dict, target: float) -> tuple[str, str]:
    """What a map cell says, and its kind: "value" (a finite mean, coloured), "one" (only one net reaches
    the target in some seed: no finite mean, hatched) or "none" (neither reaches, or no value: grey)."""
    s = row[key]
    if key == "steps_gap_to_target":
        if s is None:
            return f"neither reaches\n{target:.0%}", "none"
        if math.isinf(s.mean) or math.isnan(s.mean):
            n = len(row["seeds"])
            counts = {e: sum(math.isfinite(v) for v in row["reach"][e]) for e in EXPERIMENTS}
            return f"seeds reaching {target:.0%}:\nBN {counts[BN]}/{n}, base {counts[BASE]}/{n}", "one"
        if math.isnan(s.lo):
            return f"{_k(s.mean)}\n(no interval)", "value"
        return f"{_k(s.mean)}\n[{_k(s.lo)}, {_k(s.hi)}]", "value"
    if math.isnan(s.mean):
        return "—", "none"
    pts = lambda x: f"{100 * x:+.1f}"  # noqa: E731  (accuracy in points)
    return (f"{pts(s.mean)}\n[{pts(s.lo)}, {pts(s.hi)}]" if not math.isnan(s.lo) else pts(s.mean)), "value"


def plot_map(table: dict, ledger: dict, path: Path) -> None:
    """One heatmap per statistic, stacked: colour the mean over seeds, text the mean and 95% interval;
    cells where only one net reaches the target hatched, cells where neither does grey."""
    from matplotlib.patches import Patch, Rectangle

    lrs, stds, steps, target = ledger["grid"]["lr"], ledger["grid"]["init_std"], ledger["grid"]["steps"], ledger["target"]
    panels = [("steps_gap_to_target", f"steps to {target:.0%}: baseline − BN (positive: BN faster)", 1.0),
              *[(f"acc_gap_{s}", f"test accuracy at {min(s, steps):,} steps: BN − baseline (points)", 100.0)
                for s in ledger["checkpoints"]]]
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 4.3 * len(panels)))
    for ax, (key, title, unit) in zip(axes, panels):
        grid = np.full((len(stds), len(lrs)), np.nan)
        for (lr, std), row in table.items():
            s = row[key]
            if s is not None and math.isfinite(s.mean):
                grid[stds.index(std), lrs.index(lr)] = s.mean * unit
        lim = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
        im = ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim, origin="lower", aspect="auto")
        for (lr, std), row in table.items():
            x, y = lrs.index(lr), stds.index(std)
            text, kind = cell_text(key, row, target)
            if kind != "value":  # no finite mean: its own look, never the white of "no difference"
                ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, facecolor="#d9d9d9" if kind == "none" else "#f3e3b5",
                                       hatch="//" if kind == "one" else None, edgecolor="#8c6d1f" if kind == "one" else "none", lw=0))
            marks = "\n".join(f"{'BN' if e == BN else 'base'} {m}".replace(" in ", " (").replace(" of ", "/").replace(" seeds", ")")
                              for e, m in row["marks"].items())
            dark = kind == "value" and abs(grid[y, x]) > 0.6 * lim
            ax.text(x, y, text + (f"\n{marks}" if marks else ""), ha="center", va="center", fontsize=8.5,
                    color="white" if dark else "black",
                    bbox=None if kind == "value" else {"facecolor": "white", "alpha": 0.8, "lw": 0, "pad": 1.5})
        ax.set_xticks(range(len(lrs)), [str(v) for v in lrs])
        ax.set_yticks(range(len(stds)), [str(v) for v in stds])
        ax.set(xlabel="learning rate", ylabel="init std", title=title)
        fig.colorbar(im, ax=ax, shrink=0.9, pad=0.02)
    axes[0].legend(handles=[Patch(facecolor="#f3e3b5", hatch="//", edgecolor="#8c6d1f", label=f"only one net reaches {target:.0%}"),
                            Patch(facecolor="#d9d9d9", label=f"neither reaches {target:.0%}")],
                   loc="upper left", bbox_to_anchor=(0, -0.13), ncol=2, fontsize=8.5, frameon=False)
    fig.suptitle(f"BN vs baseline across the map: mean over seeds [95% interval], {steps:,} steps a run", y=1.0)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# The report


def render(long, meta: dict, ledger: dict, out: Path) -> str:
    planned, ledger["grid"]["steps"] = ledger["grid"]["steps"], meta["steps"]
    table = cell_table(long, meta, ledger)
    plot_map(table, ledger, out / "map.png")
    cells = sorted(table)
    # The Figure 1 rule (results/fig1/claims.yaml): the baseline's best mean accuracy at 5,000 steps (the
    # ledger's first checkpoint), ties to the smaller rate.
    early = ledger["checkpoints"][0]
    best = max(cells, key=lambda c: (np.mean(table[c][f"acc_{early}"][BASE]), -c[0]))
    steps_claim = next((c for c in ledger["claims"] if c["statistic"] == "steps_gap_to_target"), {"op": ">", "threshold": 0.0})
    judged = {c: steps_verdicts(table[c], steps_claim["op"], float(steps_claim["threshold"])) for c in cells}
    verdicts = {c: v for c, (v, _) in judged.items()}
    comparable = [c for c in cells if verdicts[c] is not None]
    faster = [c for c in comparable if verdicts[c] == REPRODUCED]
    slower = [c for c in comparable if verdicts[c].strip("*") == "not reproduced"]
    fragile = [c for c in faster if any(v != REPRODUCED for v in judged[c][1])]
    b = table[best]["steps_gap_to_target"]
    pct = f"{ledger['target']:.0%}"
    headline = (f"**BN reaches {pct} in fewer steps in {len(faster)} of {len(comparable)} settings** (interval of the "
                f"per-seed gap above 0; the baseline is faster in {len(slower)}, the rest inconclusive; "
                f"{len(cells) - len(comparable)} settings where neither net reaches {pct} in any seed are not counted; "
                f"{len(fragile)} of the {len(faster)} flip when one seed is left out); "
                f"at the baseline's best setting (lr {best[0]}, init std {best[1]}) by {_interval(b)} steps.")
    rows = []
    for c in cells:
        t = table[c]
        marks = "; ".join(f"{'BN' if e == BN else 'baseline'} {m}" for e, m in t["marks"].items()) or ""
        rows.append([c[0], c[1], _steps_text(t["reach"][BASE]), _steps_text(t["reach"][BN]),
                     _interval(t["steps_gap_to_target"]), verdicts[c] or "—",
                     stability_text(*judged[c], t["seeds"]) if verdicts[c] else "—",
                     *[_interval(t[f"acc_gap_{s}"]) for s in ledger["checkpoints"]], marks])
    claim_rows = []
    for claim in ledger["claims"]:
        op, threshold = claim["op"], float(claim["threshold"])
        if claim["statistic"] == "steps_gap_to_target":
            key, loo = "steps_gap_to_target", {c: steps_verdicts(table[c], op, threshold) for c in comparable}
        else:
            key = f"acc_gap_{claim['step']}"
            loo = {c: (verdict(table[c][key], op, threshold), leave_one_out(table[c][key].values, op, threshold))
                   for c in cells}
        vs = [v for v, _ in loo.values()]
        n_rep = sum(v == REPRODUCED for v in vs)
        n_not = sum(v.strip("*") == "not reproduced" for v in vs)
        flips = [f"{c[0]} / {c[1]}" for c, (v, others) in loo.items() if any(o != v for o in others)]
        where = f" (read at {read_at(claim['step'], meta['steps'])})" if "step" in claim and claim["step"] > meta["steps"] else ""
        claim_rows.append([claim["id"], claim["paper"] + where, f"{n_rep} of {len(vs)}", f"{n_not} of {len(vs)}",
                           f"{len(vs) - n_rep - n_not} of {len(vs)}",
                           f"{len(flips)} of {len(vs)}" + (f" ({', '.join(flips)})" if flips else ""),
                           _interval(table[best][key])])
    data, steps, n_runs = meta["data"], meta["steps"], len(meta["runs"])
    scope = (f"**A shorter map than the ledger's {planned:,} steps: {steps:,} steps per run** (the time available); "
             "an accuracy asked for at a later step reads the last evaluation." if steps < planned else
             f"{steps:,} steps per run, as the ledger says.")
    div = [f"{r['run']} (step {r['diverged_at']:,})" for r in meta["runs"] if r["status"] == "diverged"]
    rule = f"\n\n{meta['notes']['rule_check']}" if meta.get("notes", {}).get("rule_check") else ""
    return f"""# Figure 1, beyond the paper: BN's advantage across rates and inits (cpu scale)

Built by `python -m repro.report fig1-map --runs-dir {meta['runs_dir']}` from runs made by `make fig1-map`
(`python -m repro.stacked --map {meta['claims']}`); `python -m repro.report verify` rebuilds every number from
`runs.csv` and `meta.json` beside this file. Ledger: `{meta['claims']}` (grid, statistics and marks fixed
before the runs; ledger commit `{(meta['ledger']['ledger_commit'] or 'uncommitted')[:10]}`).

{headline}

## What was run
| | |
|---|---|
| data | {data['dataset']}: {data['source']} — **{data['n_train']:,} training / {data['n_test']:,} test images**, binarized={data['binarized']} |
| grid | {', '.join(map(str, ledger['grid']['lr']))} (rate) x {', '.join(map(str, ledger['grid']['init_std']))} (init std) x seeds {ledger['grid']['seeds']} x 2 nets = {n_runs} runs |
| steps | {scope} Batch 60, plain SGD at a constant rate, the Figure 1 network with and without BN |
| evaluation | whole test set every {ledger['grid']['eval_every']} steps; steps to {ledger['target']:.0%} interpolated between evaluations |
| pairing | the members of one seed share their batch order and, per net, their initial weights' seed: each BN − baseline difference is paired by seed |
| hardware | {meta['env']['device']} ({meta['env']['device_name'] or 'cpu'}), torch {meta['env']['torch']}; trained by `repro.stacked` (one process per net, every member of a seed stacked); {max((r.get('wall_s') or 0) for r in meta['runs']) / 60:.0f} min wall time for the longest process (each run's in `meta.json`) |

Runs: {n_runs} used; missing: {meta['missing_seeds'] or 'none'}; excluded: {len(meta['excluded'])}; diverged: {', '.join(div) or 'none'}.{rule}

## Across the map
{md_table(['claim', 'statement', 'cells reproduced', 'cells not reproduced', 'inconclusive',
           'cells whose verdict flips without one seed (lr / std)', f'at the baseline best (lr {best[0]}, std {best[1]})'], claim_rows)}
{METHOD_NOTE} A cell's steps statistic uses the seeds where at least one net reaches {ledger['target']:.0%}; a seed where
only one net reaches it gives an infinite gap, and such a cell is decided only if every seed lies on one side.

![map](map.png)

## Every cell
Steps to {ledger['target']:.0%} per seed ({', '.join(map(str, ledger['grid']['seeds']))}), the gap baseline − BN (mean [95% interval]) and its verdict for
"BN reaches {ledger['target']:.0%} in fewer steps", and the accuracy gaps BN − baseline. Marks: *diverged* (status diverged:
{meta.get('notes', {}).get('diverged', 'loss NaN/inf')}), *never learns* (best test accuracy below {ledger['never_learns_below']} in every seed; in fewer seeds it is
said with their count, not marked). "Stable" counts the leave-one-seed-out subsets with the same verdict.

{md_table(['lr', 'init std', 'baseline steps', 'BN steps', 'steps gap', 'BN faster?', 'stable without one seed',
           *[f'acc gap at {read_at(s, steps)}' for s in ledger['checkpoints']], 'marks'], rows)}
"""
