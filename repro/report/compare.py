"""`python -m repro.report compare MINE THEIRS`: does a report made here agree with another one (the
committed report, or one made on another machine)? Each is read from its own folder alone: every recorded
value of `runs.csv`, matched by run (its experiment, scale and seed), step and metric, and every row of
the claims table (value per seed, mean, interval, verdict, stability). The verdicts decide: exit 0 when
every claim both reports judge has the same verdict. A verdict that differs on a claim one of them marks
as fragile (it flips when one seed is dropped) is said to be within that report's stated stability.
"""

from __future__ import annotations

import re
from pathlib import Path

from repro.errors import ReproError
from repro.report import read_long

SKIP = ("paper", "criterion")  # the ledger's words, not results


def run_key(name: str) -> str:
    """A run's name without its identity hash and its `.N` suffix: experiment, scale and seed."""
    return re.sub(r"-[0-9a-f]{8}(\.\d+)?$", "", name)


def claims_table(report: Path) -> dict[str, dict[str, str]]:
    """The claims table of a report.md: claim id -> {column: cell}."""
    lines = report.read_text().splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("| claim |"))
    except StopIteration:
        raise ReproError(f"{report} has no claims table (a row starting '| claim |'): is it a figure's report?") from None
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells))
    return rows


def _fragile(cell: str) -> bool:
    m = re.match(r"\**(\d+) of (\d+)", cell or "")
    return bool(m) and m.group(1) != m.group(2)


def compare(mine: Path, theirs: Path) -> tuple[list[str], bool]:
    """Lines that say how the two reports compare, and whether every shared claim's verdict agrees."""
    for d in (mine, theirs):
        if not (Path(d) / "report.md").is_file() or not (Path(d) / "runs.csv").is_file():
            raise ReproError(f"{d} holds no report.md and runs.csv: give a report's folder (e.g. runs/results/fig1/cpu)")
    a, b = (read_long(Path(d) / "runs.csv") for d in (mine, theirs))
    va = {(run_key(r), step, metric): v for r, _, step, metric, v in a.rows}
    vb = {(run_key(r), step, metric): v for r, _, step, metric, v in b.rows}
    shared = va.keys() & vb.keys()
    same = sum(va[k] == vb[k] for k in shared)
    worst = max(((abs(va[k] - vb[k]), k) for k in shared), default=(0.0, None))
    out = [f"compare: {mine} against {theirs}",
           f"runs.csv: {len(shared):,} values in both ({len(va) - len(shared):,} only in the first, "
           f"{len(vb) - len(shared):,} only in the second); {same:,} identical"
           + (f"; largest difference {worst[0]:.3g} ({worst[1][0]}, step {worst[1][1]:,}, {worst[1][2]})" if worst[0] else "")]
    ca, cb = claims_table(Path(mine) / "report.md"), claims_table(Path(theirs) / "report.md")
    agree, lines = True, []
    for claim in [c for c in ca if c in cb]:
        x, y = ({k: v.replace("**", "") for k, v in row.items()} for row in (ca[claim], cb[claim]))
        differ = [col for col in x if col not in SKIP and x.get(col) != y.get(col)]
        if x.get("verdict") != y.get("verdict"):
            agree = False
            within = _fragile(x.get("stable without one seed", "")) or _fragile(y.get("stable without one seed", ""))
            lines.append(f"- {claim}: verdict {x.get('verdict')} here, {y.get('verdict')} there"
                         + (" (within the stated stability: one report marks it fragile)" if within else ""))
        elif differ:
            lines.append(f"- {claim}: same verdict ({x.get('verdict')}); differs in {', '.join(differ)}")
    only = sorted(set(ca) ^ set(cb))
    n = len([c for c in ca if c in cb])
    out.append(f"claims: {n} in both; " + (f"every cell identical in {n - len(lines)}, " if n else "")
               + ("every verdict agrees" if agree else "verdicts differ") + (f"; only in one report: {only}" if only else ""))
    return out + lines, agree
