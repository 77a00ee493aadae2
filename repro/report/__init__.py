"""Reports: put each measured claim beside the paper's number, with a verdict.

A report is built in two steps. `build` selects the recipe's runs (`runs.py`) and writes what the
report needs from them to `results/<fig>/<scale>/`: `runs.csv` (long format: run, seed, step,
metric, value; every curve and probe value used) and `meta.json` (settings, runs used and excluded,
ledger provenance). `render` then makes report.md and the plots from those committed files alone,
so `python -m repro.report verify` can rebuild every committed number. One module per figure
(`fig1.py`, ...) supplies `EXPERIMENTS`, `collect` and `render`; `stats.py` holds the statistics.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections import defaultdict
from pathlib import Path

import matplotlib
import numpy as np
import yaml

from repro.report.stats import METHOD_NOTE, stability, verdict
from repro.runs.files import atomic_write, write_json

matplotlib.use("Agg")  # reports render to files; no display is needed or wanted


# ----------------------------------------------------------------------------------------------
# Claims ledger: what the paper says, the statistic, and the tolerance, fixed before the runs.


def load_ledger(path: Path) -> dict:
    """A claims ledger: `claims` (statistic, op, threshold, preconditions) and `preconditions`."""
    return yaml.safe_load(Path(path).read_text())


def ledger_for(figure: str, scale: str, root: Path = Path("results")) -> Path:
    """The figure's ledger for `scale`: a results/<figure>/*.yaml that lists the scale under `scales`,
    else results/<figure>/claims.yaml."""
    for path in sorted((root / figure).glob("*.yaml")):
        if scale in (load_ledger(path).get("scales") or []):
            return path
    return root / figure / "claims.yaml"


def fmt(x: float, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, float) and math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def read_md_table(text: str, first: str) -> tuple[list[str], list[list[str]]]:
    """The inverse of md_table for the first table in `text` whose first column is headed `first`:
    (header, rows), so a rendered report's table can be mirrored elsewhere as written."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(f"| {first} |")), None)
    if start is None:
        raise ValueError(f"no table headed '{first}' in the report")
    cells = lambda line: [c.strip() for c in line.strip().strip("|").split(" | ")]  # noqa: E731
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(cells(line))
    return cells(lines[start]), rows


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text)


PLOTTED = "plotted.json"  # beside each report: a digest of every figure's plotted data, checked by verify


def _numbers(values) -> str:
    """Values as text at 9 significant digits, so a last-bit difference between machines does not count."""
    arr = np.ma.filled(np.ma.asarray(values, dtype=float), np.nan).ravel()
    return ",".join(f"{x:.9g}" for x in arr)


def plotted_data(fig) -> dict[str, str]:
    """A sha256 per drawn element of `fig` (lines, bands and bars, image cells, texts, titles and legends)
    over the values a reader sees, keyed by the panel's title and the element's label or position."""
    out = {}
    name = lambda kind, j, a: f"{kind} {j}" + ("" if a.get_label().startswith("_") else f" {a.get_label()}")  # noqa: E731
    for i, ax in enumerate(fig.axes):
        panel = f"{i} {ax.get_title() or ax.get_label()}".replace("\n", " ").strip()
        items = [(name("line", j, a), _numbers(a.get_xydata())) for j, a in enumerate(ax.lines)]
        items += [(name("collection", j, a), ";".join(
            [_numbers(p.vertices) for p in a.get_paths()] + [_numbers(a.get_offsets())])) for j, a in enumerate(ax.collections)]
        items += [(name("patch", j, a), _numbers(a.get_path().transformed(a.get_patch_transform()).vertices))
                  for j, a in enumerate(ax.patches)]
        items += [(f"image {j}", _numbers(a.get_array())) for j, a in enumerate(ax.images)]
        items += [(f"text {j}", f"{a.get_text()}@{_numbers(a.get_position())}") for j, a in enumerate(ax.texts)]
        items += [("labels", "|".join([ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]))]
        if ax.get_legend() is not None:
            items += [("legend", "|".join(t.get_text() for t in ax.get_legend().get_texts()))]
        out |= {f"{panel} / {k}": hashlib.sha256(v.encode()).hexdigest()[:16] for k, v in items}
    if fig.get_suptitle():
        out["suptitle"] = hashlib.sha256(fig.get_suptitle().encode()).hexdigest()[:16]
    return out


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure atomically (render to a temp name, then rename), and its plotted data's
    digest into plotted.json beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    tmp.replace(path)
    record = path.with_name(PLOTTED)
    digests = json.loads(record.read_text()) if record.exists() else {}
    write_json(record, digests | {path.name: plotted_data(fig)})


# ----------------------------------------------------------------------------------------------
# Committed data: runs.csv (long format) and meta.json

COLUMNS = ("run", "seed", "step", "metric", "value")


class Long:
    """The rows of a long-format CSV, with curves looked up by (run, metric)."""

    def __init__(self, rows: list[tuple]):
        self.rows = rows
        self._curves: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
        for run, _, step, metric, value in rows:
            self._curves[(run, metric)].append((step, value))

    def curve(self, run: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
        pts = sorted(self._curves.get((run, metric), []))
        return np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts], dtype=float)

    def value(self, run: str, metric: str) -> float:
        _, v = self.curve(run, metric)
        return float(v[-1]) if len(v) else math.nan


def write_long(path: Path, rows: list[tuple]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    w.writerows((run, seed, int(step), metric, repr(float(value))) for run, seed, step, metric, value in rows)
    write_text(path, buf.getvalue())


def read_long(path: Path) -> Long:
    with open(path, newline="") as f:
        r = csv.reader(f)
        assert tuple(next(r)) == COLUMNS, f"{path}: not a long-format CSV {COLUMNS}"
        return Long([(run, int(seed), int(step), metric, float(value)) for run, seed, step, metric, value in r])


def write_outputs(out: Path, rows: list[tuple], meta: dict) -> None:
    write_long(out / "runs.csv", rows)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "meta.json", meta)


def runs_by_experiment(meta: dict) -> dict[str, list[dict]]:
    """meta's runs grouped by experiment, in seed order."""
    out: dict[str, list[dict]] = defaultdict(list)
    for r in sorted(meta["runs"], key=lambda r: r["seed"]):
        out[r["experiment"]].append(r)
    return out


def mean_band(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps every curve has, and the mean and sample std (ddof=1; 0 for one curve) over curves there."""
    common = sorted(set.intersection(*(set(s.tolist()) for s, _ in curves)))
    values = np.array([[dict(zip(s.tolist(), v))[t] for t in common] for s, v in curves])
    std = values.std(0, ddof=1) if len(values) > 1 else np.zeros(len(common))
    return np.asarray(common), values.mean(0), std


# ----------------------------------------------------------------------------------------------
# Shared report sections


def run_meta(sel, provenance: dict) -> dict:
    """What meta.json says about the runs: the ones used, the ones excluded and why, missing seeds."""
    used = [r for rs in sel.runs.values() for r in rs]
    return {
        "runs": [{"run": r.name, "experiment": r.experiment, "seed": r.seed, "status": r.summary["status"],
                  "diverged_at": r.summary["diverged_at"], "steps": r.summary["steps"],
                  "wall_s": r.summary["wall_s"], "identity": r.identity,
                  "provenance": provenance["runs"][r.name]["state"]} for r in used],
        "excluded": sel.excluded, "missing_seeds": sel.missing, "recipe_identity": sel.identity,
        "ledger": {k: v for k, v in provenance.items() if k != "runs"},
    }


def runs_section(meta: dict, also: list[str] = ()) -> str:
    """Which runs were used, which were not and why, and whether the ledger came first; `also`: lines on other
    runs a figure reads, listed beside those used."""
    led = meta["ledger"]
    states = defaultdict(list)
    for r in meta["runs"]:
        states[r["provenance"]].append(r["run"])
    if led["ledger_commit"]:
        ledger = (f"The ledger `{meta['claims']}` was last changed in commit `{led['ledger_commit'][:10]}` "
                  f"({led['ledger_date']})" + (" and has uncommitted edits" if led["ledger_edited"] else "") + ". ")
    else:
        ledger = f"The ledger `{meta['claims']}` is not committed. "
    clean = "after the ledger, clean tree"
    if set(states) == {clean}:
        ledger += f"All {len(meta['runs'])} runs started from a commit containing it, on a clean tree."
    else:
        ledger += "Runs by when they started: " + "; ".join(f"{state}: {len(names)}" for state, names in sorted(states.items())) + "."
    diverged = [f"{r['run']} (diverged at step {r['diverged_at']:,}; counted as its outcome)" for r in meta["runs"]
                if r["status"] == "diverged"]
    if not meta["recipe_identity"]:
        lines = [f"Runs used: {meta['runs_dir']}; their configs, identities and commits could not be checked "
                 "on this machine. " + ledger, ""]
    else:
        lines = [f"Runs used: those under `{meta['runs_dir']}` whose identity (resolved config without seed, run "
                 f"directory, logger keys and data paths) equals the recipe's at this scale" +
                 (f" with `{' '.join(meta['overrides'])}`" if meta.get("overrides") else "") + ": "
                 + ", ".join(f"{e} `{h}`" for e, h in meta["recipe_identity"].items()) + ". " + ledger, ""]
    lines += [f"- used: {len(meta['runs'])} runs, seeds {sorted({r['seed'] for r in meta['runs']})}", *also]
    lines += [f"- diverged: {d}" for d in diverged]
    lines += [f"- missing: {e} has no run of seed(s) {s}" for e, s in meta["missing_seeds"].items()]
    lines += [f"- excluded: {x}" for x in meta["excluded"]] or ["- excluded: none"]
    return "\n".join(lines) + "\n"


def fmt_values(values: list[float], seeds: list, digits: int = 4) -> str:
    return ", ".join(f"{s}: {fmt(float(v), digits)}" for s, v in zip(seeds, values))


def claims_section(results: list[dict], preconditions: dict[str, dict] | None = None, previous: dict | None = None) -> str:
    """The claims table: per-seed values, mean ± std, 95% interval, criterion, verdict and its stability
    (in how many leave-one-seed-out subsets it stays the same); then the verdict rule, the preconditions, and the verdicts that changed since `previous` (a
    previous_verdicts.yaml: source, and per claim id its value, verdict and why it changed).

    Each result: claim (the ledger entry), seeds (labels), summary (stats.Summary), testable, and
    optionally scale (multiplier for display) and stability (the column's text, where the summary is not
    a per-seed one, e.g. an interval over test images)."""
    rows = []
    for r in results:
        c, s = r["claim"], r["summary"]
        k = r.get("scale", 1.0)
        interval = (f"[{fmt(s.lo * k)}, {fmt(s.hi * k)}]" if not math.isnan(s.lo) else "—")
        rows.append([c["id"], c["paper"], fmt_values([v * k for v in s.values], r["seeds"]),
                     f"{fmt(s.mean * k)} ± {fmt(s.std * k)}", interval,
                     f"{c['op']} {fmt(float(c['threshold']) * k)}" + (f" ({', '.join(c['preconditions'])})" if c.get("preconditions") else ""),
                     verdict(s, c["op"], float(c["threshold"]), r.get("testable", True)),
                     r.get("stability") or stability(s.values, r["seeds"], c["op"], float(c["threshold"]),
                                                     r.get("testable", True))])
    text = md_table(["claim", "paper", "ours, per seed", "mean ± std", "95% interval", "criterion", "verdict",
                     "stable without one seed"], rows)
    text += "\n" + METHOD_NOTE + "\n"
    if preconditions:
        text += "\nPreconditions (ledger):\n\n" + md_table(
            ["precondition", "definition", "per seed", "holds"],
            [[name, p["definition"], p["per_seed"], "yes" if p["holds"] else "**no**"] for name, p in preconditions.items()])
    if previous:
        changed = []
        for r, row in zip(results, rows):
            old = previous["claims"].get(r["claim"]["id"])
            if old and old["verdict"] != row[-2].strip("*"):
                changed.append(f"- {r['claim']['id']}: {old['verdict']} ({old['value']}) → {row[-2].strip('*')}. "
                               + old.get("why", ""))
        text += (f"\nVerdicts that changed since {previous['source']}:\n\n" + "\n".join(changed) + "\n"
                 if changed else f"\nNo verdict changed since {previous['source']}.\n")
    return text

