"""`python -m repro.protocol fig2`: Figures 2-3 by the protocol their ledger fixed before the runs
(issue 20; results/fig2/protocol.yaml), stage by stage, each stage reading only what the ledger says:

1. the rate rule: Inception at the ledger's rates and seeds (and one more rate if an end of the grid wins);
2. the doubling test: Inception at the rule's rate, at each rung L and at 2L, until a rung is accepted
   (under the ledger's `stability`, a rate with a run that never learned gives way to the next in the rule's order);
3. the suite: the six variants x the seeds at the rule's rate (x the paper's multipliers) and the chosen L;
4. the reports: results/fig2_rule/<scale>/ (the rule and the test) and results/fig2/<scale>/ (the claims).

Every stage is a `python -m repro.train -m ... resume=auto` sweep, one process per core, so running the
command again continues where it stopped (a session's end, a kill) and skips what is finished; the
decisions are recomputed from the runs each time, by the functions the report uses.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from repro.errors import ReproError
from repro.report import ledger_for, load_ledger
from repro.report.fig2 import VARIANTS
from repro.report.fig2_rule import choose_protocol, finals_from_runs, rate_str, rule_table
from repro.runs import lock
from repro.runs.records import select_runs


def sweep(overrides: list[str], runs_dir: Path, jobs: int, dry_run: bool) -> None:
    """One Hydra sweep of `repro.train`, `jobs` runs side by side (one thread each), resuming what exists."""
    cmd = [sys.executable, "-m", "repro.train", "-m", *overrides, "resume=auto", f"runs_dir={runs_dir}",
           "hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}", "train.threads=1"]
    print("protocol: " + " ".join(["python", *cmd[1:]]), flush=True)
    if not dry_run:
        # A sweep whose runs diverge exits 1 after running every job; divergence is an outcome the
        # ledger counts, and a run that did not finish is caught when its stage is read again.
        run_forwarding(cmd, runs_dir)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


def run_forwarding(cmd: list[str], runs_dir: Path, wait_s: float = 300) -> int:
    """Run the sweep `cmd` in a process group of its own and hand it every stop signal this process gets
    (Ctrl-C as SIGTERM). Hydra's joblib launcher does not pass a signal on to its workers, which went on
    training after their parent died; signalled as a group, every run saves a checkpoint and stops
    (repro.runs.preempt). The parent dies at once, so the driver waits until no run under `runs_dir` holds
    its lock, then ends the idle workers, and stops: ReproError saying how to continue."""
    proc = subprocess.Popen(cmd, start_new_session=True)
    got: list[int] = []

    def forward(signum: int, frame) -> None:
        got.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM if signum == signal.SIGINT else signum)

    previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
    try:
        code = proc.wait()
        if got:
            deadline = time.monotonic() + wait_s
            while (busy := [p.parent.name for p in Path(runs_dir).glob("*/lock.json") if lock.held(p)]) \
                    and time.monotonic() < deadline:
                time.sleep(0.5)
            with contextlib.suppress(ProcessLookupError):  # loky's idle workers outlive their parent
                os.killpg(proc.pid, signal.SIGKILL)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if got:
        raise ReproError(f"stopped by {signal.Signals(got[0]).name}: "
                         + (f"{', '.join(busy)} still running after {wait_s:.0f} s (its next start waits for it); "
                            if busy else "each run of the sweep saved a checkpoint; ")
                         + "run the same command again to continue")
    return code


def run_fig2(runs_dir: Path, scale: str, ledger_path: Path, out: Path, jobs: int, dry_run: bool = False,
             extra: tuple[str, ...] = ()) -> dict:
    """The protocol's stages in order; returns what it decided ({"rate", "length", "accepted"}). `extra`:
    overrides for every run that leave its identity alone (where the data is, wandb's mode)."""
    ledger = load_ledger(ledger_path)
    rule, seeds = ledger["rate_rule"], ",".join(map(str, ledger["rate_rule"]["seeds"]))
    base = [f"scale={scale}", f"seed={seeds}", *extra]

    def finals(rate: float, steps: int) -> dict:
        return finals_from_runs(runs_dir, scale, ledger, rate, steps)[0]

    swept: set = set()  # each stage's sweep runs once per call: a sweep that leaves its runs unfinished stops it
    while True:
        decided = choose_protocol(ledger, rule_table(ledger, finals), finals)
        if decided.rule_rate is None:
            todo = (rule["variant"], ",".join(map(rate_str, decided.missing)), (rule["steps"],))
        elif decided.rate is not None and decided.ladder.length is None:
            todo = (ledger["doubling"]["variant"], rate_str(decided.rate), tuple(decided.ladder.need))
        else:
            break
        if todo in swept:
            break
        swept.add(todo)
        sweep([f"experiment={todo[0]}", *base, f"optim.lr={todo[1]}", "train.steps=" + ",".join(map(str, todo[2]))],
              runs_dir, jobs, dry_run)
    if decided.rule_rate is not None and decided.rule_rate != decided.rate:
        print(f"protocol: the rule's rate {rate_str(decided.rule_rate)}; dropped by the ledger's stability rule: "
              + ", ".join(f"{rate_str(r)} (a run of {d.stalled['steps']:,} steps never learned)"
                          for r, d in decided.dropped.items()), flush=True)
    if decided.rule_rate is None or decided.rate is not None and decided.ladder.length is None:
        if dry_run:
            return {"rate": decided.rate, "length": None, "accepted": None}
        what = (f"the rule's runs at {[rate_str(r) for r in decided.missing]}" if decided.rule_rate is None else
                f"the doubling test's runs of {decided.ladder.need} steps at {rate_str(decided.rate)}")
        raise ReproError(f"{what} did not finish under {runs_dir}: see their train.log, then run this again")
    if decided.rate is None:
        raise ReproError(f"every rate of the rule was dropped (a run never learned at each; see "
                         f"`python -m repro.report fig2-rule --runs-dir {runs_dir}`): Inception has no rate to run the suite at")
    rate, length = decided.rate, decided.ladder.length
    print(f"protocol: Inception's rate is {rate_str(rate)}", flush=True)
    accepted = decided.ladder.accepted
    print(f"protocol: L = {length:,} steps ({'accepted' if accepted else 'no rung accepted'})", flush=True)

    recipe = [f"optim.lr={rate_str(rate)}", f"train.steps={length}"]
    print(f"protocol: the suite ({len(VARIANTS)} variants x {len(rule['seeds'])} seeds at {length:,} steps): "
          + suite_progress(runs_dir, scale, tuple(recipe), tuple(rule["seeds"])), flush=True)
    if not _finished(runs_dir, scale, tuple(recipe), tuple(rule["seeds"])):
        sweep(["experiment=" + ",".join(VARIANTS), *base, *recipe], runs_dir, jobs, dry_run)
    if not dry_run:
        from repro.report import fig2_rule
        from repro.report.pipeline import build

        print(f"protocol: wrote {fig2_rule.build(runs_dir, scale, out, ledger_path)}", flush=True)
        print(f"protocol: wrote {build('fig2', runs_dir, scale, out, ledger_path, tuple(recipe))}", flush=True)
    return {"rate": rate, "length": length, "accepted": accepted}


def suite_progress(runs_dir: Path, scale: str, recipe: tuple[str, ...], seeds: tuple[int, ...]) -> str:
    """Where the suite stands, in one line: its runs (the recipe's settings, the ledger's seeds) that have
    finished, those stopped part-way with the last step each recorded, and how many have not started."""
    sel = select_runs(runs_dir, VARIANTS, scale, recipe, seeds, require=False)
    finished = sum(len(rs) for rs in sel.runs.values())
    partway = [f"{v} s{s} at {x:,}" for v in VARIANTS for s in seeds if (x := sel.unfinished.get((v, s))) is not None]
    todo = len(VARIANTS) * len(seeds) - finished - len(partway)
    return (f"{finished} finished" + (f"; {len(partway)} part-way ({', '.join(partway)})" if partway else "")
            + (f"; {todo} not started" if todo else ""))


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
