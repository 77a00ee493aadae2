"""`python -m repro.protocol fig2`: Figures 2-3 by the protocol their ledger fixed before the runs
(issue 20; results/fig2/protocol.yaml), stage by stage, each stage reading only what the ledger says:

1. the rate rule: Inception at the ledger's rates and seeds (and one more rate if an end of the grid wins);
2. the doubling test: Inception at the rule's rate, at each rung L and at 2L, until a rung is accepted;
3. the suite: the six variants x the seeds at the rule's rate (x the paper's multipliers) and the chosen L;
4. the reports: results/fig2_rule/<scale>/ (the rule and the test) and results/fig2/<scale>/ (the claims).

Every stage is a `python -m repro.train -m ... resume=auto` sweep, one process per core, so running the
command again continues where it stopped (a session's end, a kill) and skips what is finished; the
decisions are recomputed from the runs each time, by the functions the report uses.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from repro.errors import ReproError
from repro.report import ledger_for, load_ledger
from repro.report.fig2 import VARIANTS
from repro.report.fig2_rule import choose_length, choose_rate, finals_from_runs, rate_str
from repro.report.runs import select_runs


def sweep(overrides: list[str], runs_dir: Path, jobs: int, dry_run: bool) -> None:
    """One Hydra sweep of `repro.train`, `jobs` runs side by side (one thread each), resuming what exists."""
    cmd = [sys.executable, "-m", "repro.train", "-m", *overrides, "resume=auto", f"runs_dir={runs_dir}",
           "hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}", "train.threads=1"]
    print("protocol: " + " ".join(["python", *cmd[1:]]), flush=True)
    if not dry_run:
        # A sweep whose runs diverge exits 1 after running every job; divergence is an outcome the
        # ledger counts, and a run that did not finish is caught when its stage is read again.
        subprocess.run(cmd, check=False)


def run_fig2(runs_dir: Path, scale: str, ledger_path: Path, out: Path, jobs: int, dry_run: bool = False,
             extra: tuple[str, ...] = ()) -> dict:
    """The protocol's stages in order; returns what it decided ({"rate", "length", "accepted"}). `extra`:
    overrides for every run that leave its identity alone (where the data is, wandb's mode)."""
    ledger = load_ledger(ledger_path)
    rule, seeds = ledger["rate_rule"], ",".join(map(str, ledger["rate_rule"]["seeds"]))
    base = [f"scale={scale}", f"seed={seeds}", *extra]
    table: dict[float, dict] = {}

    def finals(rate: float, steps: int) -> dict:
        return finals_from_runs(runs_dir, scale, ledger, rate, steps)[0]

    todo: list[float] = list(rule["rates"])
    for attempt in range(3):  # the grid, its extension if an end wins, and the read after them
        table = {r: finals(r, rule["steps"]) for r in (*table, *todo)}
        rate, todo = choose_rate(ledger, table)
        if rate is not None or attempt == 2 or dry_run and attempt:
            break
        sweep([f"experiment={rule['variant']}", *base, "optim.lr=" + ",".join(map(rate_str, todo)),
               f"train.steps={rule['steps']}"], runs_dir, jobs, dry_run)
    if rate is None:
        if dry_run:
            return {"rate": None, "length": None, "accepted": None}
        raise ReproError(f"the rule's runs at {[rate_str(r) for r in todo]} did not finish under {runs_dir}: "
                         f"see their train.log, then run this again")
    print(f"protocol: the rule's rate is {rate_str(rate)}", flush=True)

    tries = len(ledger["doubling"]["rungs"]) + 1  # each sweep adds one length: 2L of a rung, or its L
    for attempt in range(tries + 1):
        length, need, rungs = choose_length(ledger, lambda n: finals(rate, n))
        if length is not None or attempt == tries or dry_run and attempt:
            break
        sweep([f"experiment={ledger['doubling']['variant']}", *base, f"optim.lr={rate_str(rate)}",
               "train.steps=" + ",".join(map(str, need))], runs_dir, jobs, dry_run)
    if length is None:
        if dry_run:
            return {"rate": rate, "length": None, "accepted": None}
        raise ReproError(f"the doubling test's runs of {need} steps did not finish under {runs_dir}: "
                         f"see their train.log, then run this again")
    accepted = rungs[-1]["passed"]
    print(f"protocol: L = {length:,} steps ({'accepted' if accepted else 'no rung accepted'})", flush=True)

    recipe = [f"optim.lr={rate_str(rate)}", f"train.steps={length}"]
    if not _finished(runs_dir, scale, tuple(recipe), tuple(rule["seeds"])):
        sweep(["experiment=" + ",".join(VARIANTS), *base, *recipe], runs_dir, jobs, dry_run)
    if not dry_run:
        from repro.report import fig2_rule
        from repro.report.pipeline import build

        print(f"protocol: wrote {fig2_rule.build(runs_dir, scale, out, ledger_path)}", flush=True)
        print(f"protocol: wrote {build('fig2', runs_dir, scale, out, ledger_path, tuple(recipe))}", flush=True)
    return {"rate": rate, "length": length, "accepted": accepted}


def _finished(runs_dir: Path, scale: str, recipe: tuple[str, ...], seeds: tuple[int, ...]) -> bool:
    """Whether every variant has a finished run of every seed with the recipe's settings."""
    try:
        sel = select_runs(runs_dir, VARIANTS, scale, recipe, seeds)
    except ReproError:  # some variant has none yet
        return False
    return all(len(sel.runs[v]) == len(seeds) for v in VARIANTS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m repro.protocol", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("figure", choices=["fig2"])
    parser.add_argument("--scale", default="cpu_tuned", help="the recipe the protocol runs (default cpu_tuned)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs are written and read")
    parser.add_argument("--out", type=Path, default=Path("runs/results"),
                        help="where the reports go (default runs/results; results refreshes the committed ones)")
    parser.add_argument("--ledger", type=Path, default=None, help="default: the figure's ledger for the scale")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side, one core each (default 2)")
    parser.add_argument("--dry-run", action="store_true", help="print the next stage's command instead of running it")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to every run; only keys outside the identity (data.root, logger.*) (repeatable)")
    args = parser.parse_args(argv)
    try:
        run_fig2(args.runs_dir, args.scale, args.ledger or ledger_for("fig2", args.scale), args.out, args.jobs,
                 args.dry_run, tuple(args.override))
    except ReproError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
