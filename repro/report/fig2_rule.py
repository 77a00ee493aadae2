"""Figures 2-3's protocol record (issue 20): Inception's base rate by the ledger's rule and the length L
by its doubling test, both read from Inception's runs alone, never a BN variant's.

`python -m repro.report fig2-rule --scale cpu_tuned` writes results/fig2_rule/<scale>/ (runs.csv,
meta.json, report.md; results/fig2/rule.md links to its report). The protocol's driver
(`python -m repro.protocol fig2`) asks the same functions what to run next, so what it ran and what the
report says are one computation.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from repro.errors import ReproError
from repro.report import (
    fmt,
    fmt_values,
    load_ledger,
    md_table,
    run_meta,
    runs_section,
    save_figure,
    write_outputs,
)
from repro.report.runs import Selection, ledger_provenance, read_run, select_runs
from repro.report.stats import tail_mean

EXPERIMENTS = ["inception"]
PAPER_RATE = 0.0015  # §4.2.2: Inception's initial learning rate (conf/family/imagenet.yaml)
Finals = dict[int, float]  # seed -> final accuracy


def final_accuracy(steps: np.ndarray, acc: np.ndarray, length: int, ledger: dict, diverged: bool) -> float:
    """The ledger's final accuracy of one run: the mean of its evaluations at steps >= `from` x its
    length; 0 for a run that diverged (it never wins a rule, and never passes a test)."""
    return 0.0 if diverged else tail_mean(steps, acc, ledger["final_accuracy"]["from"] * length)


def rate_str(rate: float) -> str:
    """A rate as the override and the report write it (0.045 * 3 is 0.135, not 0.13499999999999998)."""
    return f"{rate:.4g}"


# ----------------------------------------------------------------------------------------------
# The rule and the doubling test, on final accuracies however they were read


def rule_rates(ledger: dict, table: dict[float, Finals]) -> list[float]:
    """The rates the rule reads: the ledger's grid, extended once beyond an end that wins."""
    rule = ledger["rate_rule"]
    rates = sorted(rule["rates"])
    if all(len(table.get(r, {})) == len(rule["seeds"]) for r in rates):
        best = _best(rule, {r: table[r] for r in rates})
        if best in (rates[0], rates[-1]):
            f = rule["extend_factor"]
            rates.append(float(rate_str(best / f if best == rates[0] else best * f)))
    return sorted(rates)


def _best(rule: dict, table: dict[float, Finals]) -> float:
    means = {r: float(np.mean([v[s] for s in rule["seeds"]])) for r, v in table.items()}
    top = max(means.values())
    return min(r for r, m in means.items() if m >= top - rule["tie"])  # within `tie` of the best: the smaller


def choose_rate(ledger: dict, table: dict[float, Finals]) -> tuple[float | None, list[float]]:
    """(the rule's rate, []) once every run it reads is there; (None, rates still to run) before."""
    rule = ledger["rate_rule"]
    rates = rule_rates(ledger, table)
    missing = [r for r in rates if len(table.get(r, {})) < len(rule["seeds"])]
    return (None, missing) if missing else (_best(rule, {r: table[r] for r in rates}), [])


def choose_length(ledger: dict, finals_at: Callable[[int], Finals]) -> tuple[int | None, list[int], list[dict]]:
    """Walk the ledger's rungs: (L, [], rungs tested) when a rung is accepted or the last one fails (then
    L is the last rung and its `passed` is False); (None, [steps still to run], rungs so far) before."""
    d, seeds = ledger["doubling"], ledger["rate_rule"]["seeds"]
    tested = []
    for rung in d["rungs"]:
        short, long = finals_at(rung), finals_at(2 * rung)
        need = [n for n, f in ((rung, short), (2 * rung, long)) if len(f) < len(seeds)]
        if need:
            return None, need, tested
        gains = {s: long[s] - short[s] for s in seeds}
        tested.append({"rung": rung, "at_l": short, "at_2l": long, "gains": gains,
                       # the ledger: a diverged run (final accuracy 0) never passes a test, at L or at 2L
                       "passed": all(gains[s] <= d["margin"] and short[s] > 0 and long[s] > 0 for s in seeds)})
        if tested[-1]["passed"]:
            return rung, [], tested
    return d["rungs"][-1], [], tested


# ----------------------------------------------------------------------------------------------
# From runs (the driver, build) and from runs.csv (render)


def finals_from_runs(runs_dir: Path, scale: str, ledger: dict, rate: float, steps: int) -> tuple[Finals, Selection | None]:
    """Inception's final accuracies per seed at `rate` and `steps` (the finished runs), and their selection."""
    try:
        sel = select_runs(runs_dir, EXPERIMENTS, scale, (f"optim.lr={rate_str(rate)}", f"train.steps={steps}"),
                          tuple(ledger["rate_rule"]["seeds"]))
    except ReproError:  # none finished yet
        return {}, None
    return {r.seed: final_accuracy(*r.curve("test_acc"), steps, ledger, r.summary["status"] == "diverged")
            for r in sel.runs["inception"]}, sel


def build(runs_dir: Path, scale: str, out_root: Path, ledger_path: Path) -> Path:
    """Every run the rule and the doubling test read, into runs.csv and meta.json; then the report."""
    ledger = load_ledger(ledger_path)
    used, identity, excluded, table = {}, {}, [], {}

    def read(rate: float, steps: int) -> Finals:
        finals, sel = finals_from_runs(runs_dir, scale, ledger, rate, steps)
        if sel is not None:
            used.update({r.name: (r, rate) for r in sel.runs["inception"]})
            identity[f"inception at lr {rate_str(rate)}, {steps:,} steps"] = sel.identity["inception"]
            excluded.extend(sel.excluded)
        return finals

    steps0 = ledger["rate_rule"]["steps"]
    for _ in range(2):  # the grid, then its extension if an end won
        for r in rule_rates(ledger, table):
            table.setdefault(r, read(r, steps0))
    rate, missing = choose_rate(ledger, table)
    if rate is None:
        raise ReproError(f"the rule's runs at rates {[rate_str(r) for r in missing]} are not all finished under "
                         f"{runs_dir}: run `python -m repro.protocol fig2 --runs-dir {runs_dir}` first")
    choose_length(ledger, lambda n: read(rate, n))
    runs = [r for r, _ in used.values()]
    meta = run_meta(Selection({"inception": runs}, _excluded(runs_dir, excluded, used), {}, identity),
                    ledger_provenance(ledger_path, runs))
    for m in meta["runs"]:
        m["lr"] = used[m["run"]][1]
    meta |= {"figure": "fig2_rule", "scale": scale, "runs_dir": str(runs_dir), "claims": str(ledger_path),
             "overrides": [], "data": runs[0].summary["data"]}
    rows = [(r.name, r.seed, s, "test_acc", a) for r in runs for s, a in zip(*r.curve("test_acc"))]
    out = Path(out_root) / "fig2_rule" / scale
    write_outputs(out, rows, meta)
    from repro.report.pipeline import render  # the pipeline imports the figure modules

    return render(out, out)


def _excluded(runs_dir: Path, reasons: list[str], used: dict) -> list[str]:
    """One line per run no reading used: a run left out of one reading (another rate or length) may be used
    by another. An unfinished run says so; else the reason of the reading it is closest to."""
    best: dict[str, str] = {}
    for x in reasons:
        name = x.split(":")[0]
        if name not in used and (name not in best or x.count(";") < best[name].count(";")):
            best[name] = x
    for name in best:
        run = read_run(Path(runs_dir) / name)
        if run.summary is None or run.summary.get("status") == "preempted":
            best[name] = f"{name}: unfinished (last recorded step {run.last_step:,}), read once it has finished"
    return sorted(best.values())


def _finals_from_long(long, meta: dict, ledger: dict) -> dict[tuple[float, int], Finals]:
    out: dict[tuple[float, int], Finals] = {}
    for m in meta["runs"]:
        s, a = long.curve(m["run"], "test_acc")
        out.setdefault((m["lr"], m["steps"]), {})[m["seed"]] = final_accuracy(s, a, m["steps"], ledger, m["status"] == "diverged")
    return out


MARKERS = "os^Dv<>p"  # one per seed


def plot(long, meta: dict, ledger: dict, table: dict[float, Finals], rate: float, length: int | None,
         path: Path) -> None:
    """Left: the rule, final accuracy against base rate (each seed, their mean, the chosen and the paper's
    rate). Right: Inception's curves at the chosen rate for each length run, the final-accuracy tail shaded."""
    seeds, frm = ledger["rate_rule"]["seeds"], ledger["final_accuracy"]["from"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    rates = sorted(table)
    for k, s in enumerate(seeds):
        ax.plot(rates, [table[r][s] * 100 for r in rates], MARKERS[k % len(MARKERS)], color="tab:gray", ms=5,
                mfc="none", label=f"seed {s}")
    means = [float(np.mean([table[r][s] for s in seeds])) * 100 for r in rates]
    ax.plot(rates, means, "-", color="tab:blue", lw=1.5, label="mean over seeds")
    ax.plot([rate], [means[rates.index(rate)]], "*", color="tab:red", ms=14, label=f"rule's rate {rate_str(rate)}")
    ax.axvline(PAPER_RATE, color="k", ls=":", lw=1, label=f"the paper's rate {rate_str(PAPER_RATE)} (§4.2.2)")
    ax.set(xscale="log", xlabel="Inception's base rate", ylabel="final accuracy (%, mean of the tail)",
           title=f"The rate rule at {ledger['rate_rule']['steps']:,} steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    lengths = sorted({m["steps"] for m in meta["runs"] if m["lr"] == rate})
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.85, len(lengths)))
    for n, color in zip(lengths, colors):
        mine = sorted((m for m in meta["runs"] if m["lr"] == rate and m["steps"] == n), key=lambda m: m["seed"])
        for k, m in enumerate(mine):
            s, a = long.curve(m["run"], "test_acc")
            bx.plot(s, a * 100, color=color, lw=1, ls=["-", "--", ":", "-."][k % 4],
                    label=f"{n:,} steps" + (" (L)" if n == length else "") if k == 0 else None)
        bx.axvspan(frm * n, n, color=color, alpha=0.08)
    bx.set(xlabel="training steps", ylabel="test accuracy (%)", ylim=(max(0, min(means) - 25), None),
           title=f"Inception at {rate_str(rate)}: the doubling test (tails shaded; dashes: seeds {', '.join(map(str, seeds))})")
    bx.grid(alpha=0.3)
    bx.legend(fontsize=8, loc="lower right")
    save_figure(fig, path)
    plt.close(fig)


def render(long, meta: dict, ledger: dict, out: Path) -> str:
    finals = _finals_from_long(long, meta, ledger)
    rule, d = ledger["rate_rule"], ledger["doubling"]
    table = {lr: f for (lr, n), f in finals.items() if n == rule["steps"]}
    rate, _ = choose_rate(ledger, table)
    length, need, rungs = choose_length(ledger, lambda n: finals.get((rate, n), {}))
    seeds = rule["seeds"]
    paper = PAPER_RATE
    rows = [[rate_str(lr) + (" (the paper's, §4.2.2)" if lr == paper else ""),
             fmt_values([f[s] * 100 for s in seeds], seeds), fmt(float(np.mean([f[s] for s in seeds])) * 100)
             + (" **(chosen)**" if lr == rate else "")] for lr, f in sorted(table.items())]
    ladder = [[f"{t['rung']:,}", fmt_values([t["at_l"][s] * 100 for s in seeds], seeds),
               fmt_values([t["at_2l"][s] * 100 for s in seeds], seeds), fmt_values([t["gains"][s] * 100 for s in seeds], seeds),
               "accepted" if t["passed"] else "**rejected**"] for t in rungs]
    accepted = bool(rungs) and rungs[-1]["passed"]
    verdict = (f"**In progress**: the test still needs Inception's runs of {' and '.join(f'{n:,}' for n in need)} "
               f"steps at the rule's rate (`python -m repro.protocol fig2` continues them); L is not chosen yet."
               if length is None else
               f"**L = {length:,} steps**: every seed gained at most {d['margin'] * 100:g} points from doubling it." if accepted
               else f"**No rung was accepted**: L = {length:,} steps, and the precondition `inception_converged` "
                    f"fails (the next rung's {4 * length:,}-step runs are beyond the protocol's budget).")
    frm = ledger["final_accuracy"]["from"]
    plot(long, meta, ledger, table, rate, length, Path(out) / "rule.png")
    return f"""# Figures 2-3 protocol ({meta['scale']} scale): Inception's rate by the rule, the length by doubling

Issue 20's protocol, fixed in the ledger `{meta['claims']}` before any run it judges: **Inception's base
rate** by a rule that reads only Inception's runs, and **the length L** by a doubling test on Inception
alone. No BN variant's run is read here. Built by `python -m repro.report fig2-rule --scale {meta['scale']}`;
`python -m repro.report verify` re-derives every number from `runs.csv` and `meta.json` beside this file.

Final accuracy (the ledger's `final_accuracy`): the mean of a run's evaluations at steps ≥ {frm:g} L on all
{meta['data']['n_test']:,} test images ({meta['data']['dataset']}); a diverged run counts 0.

## The rate rule
Inception at base rates {', '.join(rate_str(r) for r in rule['rates'])} ({', '.join(f'{r / paper:g}x' for r in rule['rates'])}
the paper's {rate_str(paper)}), seeds {', '.join(map(str, seeds))}, {rule['steps']:,} steps each; the best mean
over seeds wins, rates within {rule['tie'] * 100:g} point of the best go to the smaller, and a winning end
of the grid is extended once by x{rule['extend_factor']:g}.

{md_table(['base rate', 'final accuracy (%), per seed', 'mean (%)'], rows)}
**Rule's rate: {rate_str(rate)}** ({rate / paper:g}x the paper's). BN-Baseline, BN-x5 and BN-x30 take x1, x5
and x30 of it (§4.2.2).

## The doubling test
At the rule's rate, Inception at L and at 2L steps (each annealed to its own length); L is accepted when
every seed gains at most {d['margin'] * 100:g} points from 2L. Rungs: {', '.join(f'{r:,}' for r in d['rungs'])}.

{md_table(['L', 'final accuracy at L (%)', 'at 2L (%)', 'gain (points)', 'rung'], ladder)}
{verdict}

![The rate rule and the doubling test](rule.png)

{runs_section(meta)}"""
