"""`python -m repro.report fig1 --scale cpu`: build a figure's report from recorded runs;
`python -m repro.report verify`: rebuild every committed report from committed files and name each
number that differs (exit 1); `python -m repro.report compare MINE THEIRS`: does a report made here agree
with another (exit 1 if a verdict differs). A figure's report is also logged to wandb as a `job_type=report` run
(claims table, figures, the paper's numbers) unless wandb is disabled: by default as its runs were."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from repro.errors import ReproError
from repro.report import ledger_for
from repro.report.pipeline import FIGURES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m repro.report", description=__doc__)
    parser.add_argument("figure", choices=["fig1", "fig1-map", "fig2", "fig2-rule", "fig2-plateau", "fig4", "verify", "compare"])
    parser.add_argument("folders", nargs="*", type=Path, help="compare: two report folders (e.g. runs/results/fig1/cpu results/fig1/cpu)")
    parser.add_argument("--scale", default="cpu", help="smoke | cpu | cpu_long | cpu_tuned | gpu | paper")
    parser.add_argument("--runs-dir", type=Path, default=None, help="where the runs are (default runs/)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where reports go (default runs/results, as make's OUT; --out results refreshes the "
                             "committed ones); verify reads results/ unless given")
    parser.add_argument("--claims", type=Path, default=None,
                        help="claims ledger (default: the results/<fig>/*.yaml that lists the scale, else results/<fig>/claims.yaml)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="fig4: evaluate the first N test images (default: all; 2,000 at smoke scale)")
    parser.add_argument("--from-evaluations", type=Path, default=None, metavar="JSON",
                        help="fig4: build from a committed evaluations.json when the runs are not on this machine")
    parser.add_argument("--steps", type=int, default=None,
                        help="fig1-map: the runs' steps when shorter than the ledger's (reported as such)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="Hydra override that is part of the recipe the runs must match (repeatable)")
    parser.add_argument("--wandb", choices=["offline", "online", "disabled"], default=None,
                        help="log the report to wandb in this mode (default: as its runs were logged)")
    args = parser.parse_args(argv)
    args.out = args.out or Path("results" if args.figure == "verify" else "runs/results")  # never results/ unasked
    try:
        if args.figure == "verify":
            from repro.report.pipeline import verify

            problems = verify(args.out)
            for p in problems:
                print(f"differs: {p}")
            print(f"verify: {len(problems)} difference(s)" if problems else
                  "verify: every committed report, figure's plotted data, rule.md, GPU report and README result rebuilds exactly")
            return 1 if problems else 0
        if args.figure == "compare":
            from repro.report.compare import compare

            if len(args.folders) != 2:
                raise ReproError("compare takes two report folders: python -m repro.report compare runs/results/fig1/cpu results/fig1/cpu")
            lines, agree = compare(*args.folders)
            print("\n".join(lines))
            return 0 if agree else 1
        if args.folders:
            raise ReproError(f"{args.figure} takes no folders ({' '.join(map(str, args.folders))}): use --runs-dir and --out")
        if args.figure == "fig1-map":
            from repro.report import fig1_map

            claims = args.claims or Path("results") / "fig1" / "map" / "claims.yaml"
            path = fig1_map.build(args.runs_dir or Path("runs/fig1_map"), args.out / "fig1" / "map", claims, args.steps)
        elif args.figure == "fig2-rule":
            from repro.report import fig2_rule

            claims = args.claims or ledger_for("fig2", args.scale)
            path = fig2_rule.build(args.runs_dir or Path("runs"), args.scale, args.out, claims)
        else:
            from repro.report.pipeline import build, build_from_cache

            figure = args.figure.replace("-", "_")  # fig2-plateau: Inception's plateau check, on Figure 2's ledger
            claims = args.claims or ledger_for(figure.removesuffix("_plateau"), args.scale)
            kwargs = {"limit": args.limit} if figure == "fig4" else {}
            if args.from_evaluations:
                path = build_from_cache(figure, args.from_evaluations, args.scale, args.out, claims)
            else:
                path = build(figure, args.runs_dir or Path("runs"), args.scale, args.out, claims,
                             tuple(args.override), **kwargs)
        if args.figure in FIGURES:  # the map and the plateau check have no claims table of the per-figure form
            from repro.report.mirror import log_report

            if (logged := log_report(path, args.runs_dir or Path("runs"), args.wandb)) is not None:
                print(f"logged the report to wandb: {logged}")
    except ReproError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
