"""`python -m repro.report fig1 --scale cpu`: build a figure's report from recorded runs;
`python -m repro.report verify`: rebuild every committed report from committed files and name each
number that differs (exit 1). A figure's report is also logged to wandb as a `job_type=report` run
(claims table, figures, the paper's numbers) unless wandb is disabled: by default as its runs were."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from repro.errors import ReproError
from repro.report import fmt, md_table, write_text


def lr_sweep(runs_dir: Path, out: Path) -> Path:
    """Tabulate the Figure 1 learning-rate / init sweep (the record behind conf/family/fig1.yaml)."""
    rows = []
    for s in sorted(Path(runs_dir).glob("*/summary.json")):
        summary, cfg = json.loads(s.read_text()), yaml.safe_load((s.parent / "config.yaml").read_text())
        rows.append((summary["experiment"], cfg["optim"]["lr"], cfg["model"]["init_std"], summary["steps"],
                     summary["final_test_acc"], summary["status"]))
    if not rows:
        raise ReproError(f"no finished runs under {runs_dir}: run the sweep first (make lr-sweep)")
    best = max((r for r in rows if r[0] == "fig1_baseline"), key=lambda r: r[4] or 0)
    table = md_table(["experiment", "lr", "init std", "steps", "test acc", "status"],
                     [[e, lr, std, f"{n:,}", fmt(a), st] for e, lr, std, n, a, st in sorted(rows)])
    text = f"""# Figure 1: learning-rate and init sweep

The paper states no optimizer, rate or init std for MNIST (§4.1; docs/paper-notes.md). We ran plain SGD, batch 60,
for {rows[0][3]:,} steps with each rate and Gaussian init std below, and took the setting with the best
*baseline* (no BN) test accuracy — lr {best[1]}, init std {best[2]} — for both nets, so the comparison
does not favour BN. Built by `python -m repro.report lr-sweep --runs-dir {runs_dir}`.

{table}"""
    path = out / "fig1" / "lr_sweep.md"
    write_text(path, text)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m repro.report", description=__doc__)
    parser.add_argument("figure", choices=["fig1", "fig2", "fig4", "lr-sweep", "verify"])
    parser.add_argument("--scale", default="cpu", help="smoke | cpu | gpu | paper")
    parser.add_argument("--runs-dir", type=Path, default=None, help="where the runs are (default runs/)")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--claims", type=Path, default=None, help="claims ledger (default results/<fig>/claims.yaml)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="fig4: evaluate the first N test images (default: 2,000 at smoke/cpu scale, all above)")
    parser.add_argument("--from-evaluations", type=Path, default=None, metavar="JSON",
                        help="fig4: build from a committed evaluations.json when the runs are not on this machine")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="Hydra override that is part of the recipe the runs must match (repeatable)")
    parser.add_argument("--wandb", choices=["offline", "online", "disabled"], default=None,
                        help="log the report to wandb in this mode (default: as its runs were logged)")
    args = parser.parse_args(argv)
    try:
        if args.figure == "verify":
            from repro.report.pipeline import verify

            problems = verify(args.out)
            for p in problems:
                print(f"differs: {p}")
            print(f"verify: {len(problems)} number(s) differ" if problems else "verify: every committed report rebuilds exactly")
            return 1 if problems else 0
        if args.figure == "lr-sweep":
            path = lr_sweep(args.runs_dir or Path("runs/lr_sweep"), args.out)
        else:
            from repro.report.pipeline import build, build_from_cache

            claims = args.claims or Path("results") / args.figure / "claims.yaml"
            kwargs = {"limit": args.limit} if args.figure == "fig4" else {}
            if args.from_evaluations:
                path = build_from_cache(args.figure, args.from_evaluations, args.scale, args.out, claims)
            else:
                path = build(args.figure, args.runs_dir or Path("runs"), args.scale, args.out, claims,
                             tuple(args.override), **kwargs)
        if args.figure != "lr-sweep":
            from repro.wandb_mirror import log_report

            if (logged := log_report(path, args.runs_dir or Path("runs"), args.wandb)) is not None:
                print(f"logged the report to wandb: {logged}")
    except ReproError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
