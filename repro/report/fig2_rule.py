"""Figures 2-3's protocol record (issue 20): Inception's base rate by the ledger's rule and the length L
by its doubling test, both read from Inception's runs alone, never a BN variant's.

`python -m repro.report fig2-rule --scale cpu_tuned` writes results/fig2_rule/<scale>/ (runs.csv,
meta.json, report.md; results/fig2/rule.md links to its report). The protocol's driver
(`python -m repro.protocol fig2`) asks the same functions what to run next, so what it ran and what the
report says are one computation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
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
from repro.report.provenance import ledger_provenance
from repro.report.stats import tail_mean
from repro.runs.records import Selection, read_run, select_runs

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


def learned(ledger: dict, final: float) -> bool:
    """Whether a run learned: its final accuracy is above the ledger's chance bar (revision 1; without
    one, above 0: only a diverged run fails). A run that did not never wins the rule nor passes a test."""
    return final > ledger["final_accuracy"].get("chance", 0.0)


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


def rule_table(ledger: dict, finals_at: Callable[[float, int], Finals]) -> dict[float, Finals]:
    """The rule's runs' final accuracies by rate: the grid, then its extension if an end of it won."""
    table: dict[float, Finals] = {}
    for _ in range(2):
        table = {r: table[r] if r in table else finals_at(r, ledger["rate_rule"]["steps"])
                 for r in rule_rates(ledger, table)}
    return table


def choose_rate(ledger: dict, table: dict[float, Finals]) -> tuple[float | None, list[float]]:
    """(the rule's rate, []) once every run it reads is there; (None, rates still to run) before."""
    rule = ledger["rate_rule"]
    rates = rule_rates(ledger, table)
    missing = [r for r in rates if len(table.get(r, {})) < len(rule["seeds"])]
    return (None, missing) if missing else (_best(rule, {r: table[r] for r in rates}), [])


def rule_order(ledger: dict, table: dict[float, Finals]) -> list[float]:
    """The rule's rates best first, each the rule's choice among those after it (ties to the smaller);
    a rate where some seed never learned is not in the order."""
    rule = ledger["rate_rule"]
    left = {r: f for r, f in table.items() if all(learned(ledger, f[s]) for s in rule["seeds"])}
    order = []
    while left:
        order.append(_best(rule, left))
        del left[order[-1]]
    return order


@dataclass
class Ladder:
    """The doubling test at one rate: L once decided (a rung accepted, or the last one failed: then its
    `passed` is False); the lengths still to run before the next decision; the rungs tested; and under a
    ledger with `stability`, the run length and seeds where a run never learned (the rate is dropped)."""

    length: int | None
    need: list[int]
    rungs: list[dict]
    stalled: dict | None = None

    @property
    def accepted(self) -> bool:
        """Whether L is a rung the test accepted (else the last rung, or not chosen yet)."""
        return self.length is not None and bool(self.rungs) and self.rungs[-1]["passed"]


def choose_length(ledger: dict, finals_at: Callable[[int], Finals]) -> Ladder:
    """Walk the ledger's rungs at one rate (`finals_at(steps)`: the finished runs' final accuracies)."""
    d, seeds = ledger["doubling"], ledger["rate_rule"]["seeds"]
    stable = "stability" in ledger
    tested: list[dict] = []
    for rung in d["rungs"]:
        short, long = finals_at(rung), finals_at(2 * rung)
        for n, f in ((rung, short), (2 * rung, long)):
            dead = [s for s in seeds if s in f and not learned(ledger, f[s])]
            if stable and dead and len(f) == len(seeds):
                if n == 2 * rung:  # the rung was run: record it, failed
                    tested.append(rung_test(ledger, rung, short, long))
                return Ladder(None, [], tested, {"steps": n, "seeds": dead, "finals": f})
        need = [n for n, f in ((rung, short), (2 * rung, long)) if len(f) < len(seeds)]
        if need:
            return Ladder(None, need, tested)
        tested.append(rung_test(ledger, rung, short, long))
        if tested[-1]["passed"]:
            return Ladder(rung, [], tested)
    return Ladder(d["rungs"][-1], [], tested)


def rung_test(ledger: dict, rung: int, short: Finals, long: Finals, seeds: list[int] | None = None) -> dict:
    """One rung of the doubling test on final accuracies at L (`short`) and 2L (`long`), for `seeds` (the
    ledger's by default): each seed's gain, and whether every seed passed."""
    d, seeds = ledger["doubling"], ledger["rate_rule"]["seeds"] if seeds is None else seeds
    gains = {s: long[s] - short[s] for s in seeds}
    # a run that diverged or never learned (revision 1) never passes a test, at L or at 2L
    return {"rung": rung, "at_l": short, "at_2l": long, "gains": gains,
            "passed": all(gains[s] <= d["margin"] and learned(ledger, short[s]) and learned(ledger, long[s])
                          for s in seeds)}


@dataclass
class Protocol:
    """What the rule and the doubling test have decided: the rule's rate (None until its runs are there;
    `missing`: the rates still to run), Inception's rate after the ledger's stability rule (None while the
    rule is open, or when every rate was dropped) with its ladder, and each dropped rate's ladder."""

    rule_rate: float | None
    missing: list[float] = field(default_factory=list)
    rate: float | None = None
    ladder: Ladder | None = None
    dropped: dict[float, Ladder] = field(default_factory=dict)


def choose_protocol(ledger: dict, table: dict[float, Finals], finals_at: Callable[[float, int], Finals]) -> Protocol:
    """The rule on `table` (the rule's runs), then the doubling test at its rate; under a ledger with
    `stability`, a rate with a run that never learned gives way to the next in the rule's order."""
    rule_rate, missing = choose_rate(ledger, table)
    if rule_rate is None:
        return Protocol(None, missing)
    out = Protocol(rule_rate)
    for rate in rule_order(ledger, table) if "stability" in ledger else [rule_rate]:
        ladder = choose_length(ledger, lambda n, r=rate: finals_at(r, n))
        if ladder.stalled is None:
            out.rate, out.ladder = rate, ladder
            return out
        out.dropped[rate] = ladder
    return out  # every rate dropped


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
    used, identity, excluded = {}, {}, []

    def read(rate: float, steps: int) -> Finals:
        finals, sel = finals_from_runs(runs_dir, scale, ledger, rate, steps)
        if sel is not None:
            used.update({r.name: (r, rate) for r in sel.runs["inception"]})
            identity[f"inception at lr {rate_str(rate)}, {steps:,} steps"] = sel.identity["inception"]
            excluded.extend(sel.excluded)
        return finals

    decided = choose_protocol(ledger, rule_table(ledger, read), read)
    if decided.rule_rate is None:
        raise ReproError(f"the rule's runs at rates {[rate_str(r) for r in decided.missing]} are not all finished "
                         f"under {runs_dir}: run `python -m repro.protocol fig2 --runs-dir {runs_dir}` first")
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


def plot(long, meta: dict, ledger: dict, table: dict[float, Finals], decided: Protocol, path: Path) -> None:
    """Left: the rule, final accuracy against base rate (each seed, their mean, the rule's and the paper's
    rate). Then one panel per rate the doubling test ran (a dropped rate first): Inception's curves at that
    rate for each length run, the final-accuracy tail shaded."""
    seeds, frm = ledger["rate_rule"]["seeds"], ledger["final_accuracy"]["from"]
    ladders = {**decided.dropped, **({decided.rate: decided.ladder} if decided.rate is not None else {})}
    fig, axes = plt.subplots(1, 1 + len(ladders), figsize=(6 * (1 + len(ladders)), 4.5), squeeze=False)
    ax, rate = axes[0][0], decided.rule_rate
    rates = sorted(table)
    for k, s in enumerate(seeds):
        ax.plot(rates, [table[r][s] * 100 for r in rates], MARKERS[k % len(MARKERS)], color="tab:gray", ms=5,
                mfc="none", label=f"seed {s}")
    means = [float(np.mean([table[r][s] for s in seeds])) * 100 for r in rates]
    ax.plot(rates, means, "-", color="tab:blue", lw=1.5, label="mean over seeds")
    ax.plot([rate], [means[rates.index(rate)]], "*", color="tab:red", ms=14, label=f"rule's rate {rate_str(rate)}")
    if decided.rate is not None and decided.rate != rate:
        ax.plot([decided.rate], [means[rates.index(decided.rate)]], "P", color="tab:green", ms=11,
                label=f"Inception's rate {rate_str(decided.rate)} (stability)")
    ax.axvline(PAPER_RATE, color="k", ls=":", lw=1, label=f"the paper's rate {rate_str(PAPER_RATE)} (§4.2.2)")
    ax.set(xscale="log", xlabel="Inception's base rate", ylabel="final accuracy (%, mean of the tail)",
           title=f"The rate rule at {ledger['rate_rule']['steps']:,} steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    for bx, (lr, ladder) in zip(axes[0][1:], ladders.items()):
        lengths = sorted({m["steps"] for m in meta["runs"] if m["lr"] == lr})
        colors = plt.get_cmap("viridis")(np.linspace(0, 0.85, len(lengths)))
        for n, color in zip(lengths, colors):
            mine = sorted((m for m in meta["runs"] if m["lr"] == lr and m["steps"] == n), key=lambda m: m["seed"])
            for k, m in enumerate(mine):
                s, a = long.curve(m["run"], "test_acc")
                bx.plot(s, a * 100, color=color, lw=1, ls=["-", "--", ":", "-."][k % 4],
                        label=f"{n:,} steps" + (" (L)" if n == ladder.length else "") if k == 0 else None)
            bx.axvspan(frm * n, n, color=color, alpha=0.08)
        state = "dropped: a run never learned" if ladder.stalled else "the doubling test"
        bx.set(xlabel="training steps", ylabel="test accuracy (%)", ylim=(0, None),
               title=f"Inception at {rate_str(lr)}: {state}\n(tails shaded; dashes: seeds {', '.join(map(str, seeds))})")
        bx.grid(alpha=0.3)
        bx.legend(fontsize=8, loc="lower right")
    save_figure(fig, path)
    plt.close(fig)


def _ladder_rows(ledger: dict, lr: float, ladder: Ladder) -> list[list[str]]:
    seeds = ledger["rate_rule"]["seeds"]
    rows = [[rate_str(lr), f"{t['rung']:,}", fmt_values([t["at_l"][s] * 100 for s in seeds], seeds),
             fmt_values([t["at_2l"][s] * 100 for s in seeds], seeds), fmt_values([t["gains"][s] * 100 for s in seeds], seeds),
             "accepted" if t["passed"] else "**rejected**"] for t in ladder.rungs]
    if ladder.stalled:
        st = ladder.stalled
        dead = ", ".join(f"seed {s} ({fmt(st['finals'][s] * 100)}%)" for s in st["seeds"])
        note = f"**rate dropped**: {dead} never learned at {st['steps']:,} steps"
        if ladder.rungs and 2 * ladder.rungs[-1]["rung"] == st["steps"]:
            rows[-1][-1] = note  # the rung's 2L run never learned
        else:  # its L run never learned: the rung was not run
            rows.append([rate_str(lr), f"{st['steps']:,}", fmt_values([st["finals"][s] * 100 for s in seeds], seeds),
                         "", "", note])
    return rows


def render(long, meta: dict, ledger: dict, out: Path) -> str:
    finals = _finals_from_long(long, meta, ledger)
    rule, d = ledger["rate_rule"], ledger["doubling"]
    table = {lr: f for (lr, n), f in finals.items() if n == rule["steps"]}
    decided = choose_protocol(ledger, table, lambda r, n: finals.get((r, n), {}))
    rate, ladder, seeds, paper = decided.rule_rate, decided.ladder, rule["seeds"], PAPER_RATE
    chance = ledger["final_accuracy"].get("chance")
    rows = [[rate_str(lr) + (" (the paper's, §4.2.2)" if lr == paper else ""),
             fmt_values([f[s] * 100 for s in seeds], seeds), fmt(float(np.mean([f[s] for s in seeds])) * 100)
             + (" **(the rule's)**" if lr == rate else "") + (" **(Inception's)**" if lr == decided.rate != rate else "")]
            for lr, f in sorted(table.items())]
    ladders = [*decided.dropped.items(), *([(decided.rate, ladder)] if ladder else [])]
    steps_table = [row for lr, lad in ladders for row in _ladder_rows(ledger, lr, lad)]
    if decided.rate is None:
        verdict = ("**Every rate was dropped**: no rate of the rule learned on every seed at every length of the "
                   "doubling test, so Inception has no rate and the speed and maximum claims read not testable.")
    elif ladder.length is None:
        verdict = (f"**In progress**: the test still needs Inception's runs of {' and '.join(f'{n:,}' for n in ladder.need)} "
                   f"steps at {rate_str(decided.rate)} (`python -m repro.protocol fig2` continues them); L is not chosen yet.")
    elif ladder.accepted:
        verdict = f"**L = {ladder.length:,} steps**: every seed gained at most {d['margin'] * 100:g} points from doubling it."
    else:
        verdict = (f"**No rung was accepted**: L = {ladder.length:,} steps, and the precondition `inception_converged` "
                   f"fails (the next rung's {4 * ladder.length:,}-step runs are beyond the protocol's budget).")
    stability = ""
    if "stability" in ledger:
        gone = "; ".join(f"{rate_str(lr)}: seed(s) {', '.join(map(str, lad.stalled['seeds']))} never learned at "
                         f"{lad.stalled['steps']:,} steps" for lr, lad in decided.dropped.items())
        stability = (f"\n\n**Stability** (the ledger's revision 1): Inception's rate must learn (final accuracy above "
                     f"{chance * 100:g}%) on every seed at every length of the doubling test, else the next rate in the "
                     f"rule's order takes its place. " + (f"Dropped: {gone}. " if gone else "No rate was dropped. ")
                     + (f"**Inception's rate: {rate_str(decided.rate)}** ({decided.rate / paper:g}x the paper's)."
                        if decided.rate is not None else "No rate is left."))
    base = decided.rate if decided.rate is not None else rate
    frm = ledger["final_accuracy"]["from"]
    plot(long, meta, ledger, table, decided, Path(out) / "rule.png")
    return f"""# Figures 2-3 protocol ({meta['scale']} scale): Inception's rate by the rule, the length by doubling

Issue 20's protocol, fixed in the ledger `{meta['claims']}` before any run it judges: **Inception's base
rate** by a rule that reads only Inception's runs, and **the length L** by a doubling test on Inception
alone. No BN variant's run is read here. Built by `python -m repro.report fig2-rule --scale {meta['scale']}`;
`python -m repro.report verify` re-derives every number from `runs.csv` and `meta.json` beside this file.

Final accuracy (the ledger's `final_accuracy`): the mean of a run's evaluations at steps ≥ {frm:g} L on all
{meta['data']['n_test']:,} test images ({meta['data']['dataset']}); a diverged run counts 0{
f"; a run at most {chance * 100:g}% never learned (revision 1)" if chance is not None else ""}.

## The rate rule
Inception at base rates {', '.join(rate_str(r) for r in rule['rates'])} ({', '.join(f'{r / paper:g}x' for r in rule['rates'])}
the paper's {rate_str(paper)}), seeds {', '.join(map(str, seeds))}, {rule['steps']:,} steps each; the best mean
over seeds wins, rates within {rule['tie'] * 100:g} point of the best go to the smaller, and a winning end
of the grid is extended once by x{rule['extend_factor']:g}.

{md_table(['base rate', 'final accuracy (%), per seed', 'mean (%)'], rows)}
**Rule's rate: {rate_str(rate)}** ({rate / paper:g}x the paper's).{stability} BN-Baseline, BN-x5 and BN-x30 take x1,
x5 and x30 of {rate_str(base)} (§4.2.2).

## The doubling test
At Inception's rate, Inception at L and at 2L steps (each annealed to its own length); L is accepted when
every seed gains at most {d['margin'] * 100:g} points from 2L. Rungs: {', '.join(f'{r:,}' for r in d['rungs'])}.

{md_table(['rate', 'L', 'final accuracy at L (%)', 'at 2L (%)', 'gain (points)', 'rung'], steps_table)}
{verdict}

![The rate rule and the doubling test](rule.png)

{runs_section(meta)}"""
