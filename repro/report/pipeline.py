"""Build a report from runs, render it from committed files, and verify committed reports.

build:  runs -> results/<fig>/<scale>/{runs.csv, meta.json} -> render
render: runs.csv + meta.json + the ledger -> report.md and plots (no runs needed)
verify: render every committed report into a scratch folder and name each number that differs.
"""

from __future__ import annotations

import difflib
import importlib
import re
import tempfile
from pathlib import Path

import yaml

from repro.report import load_ledger, read_long, run_meta, write_outputs, write_text
from repro.report.runs import ledger_provenance, select_runs

FIGURES = ("fig1", "fig2", "fig4")


def build(figure: str, runs_dir: Path, scale: str, out_root: Path, claims_path: Path,
          overrides: tuple[str, ...] = (), **kwargs) -> Path:
    """Select the recipe's runs, write runs.csv and meta.json, then render the report from them."""
    module = importlib.import_module(f"repro.report.{figure}")
    sel = select_runs(runs_dir, module.EXPERIMENTS, scale, tuple(overrides), getattr(module, "SEEDS", None))
    out = Path(out_root) / figure / scale
    rows, meta = module.collect(sel, out=out, scale=scale, **kwargs)
    used = [r for rs in sel.runs.values() for r in rs]
    meta |= run_meta(sel, ledger_provenance(claims_path, used))
    meta |= {"figure": figure, "scale": scale, "runs_dir": str(runs_dir), "claims": str(claims_path),
             "overrides": list(overrides)}
    write_outputs(out, rows, meta)
    return render(out, out)


def build_from_cache(figure: str, cache: Path, scale: str, out_root: Path, claims_path: Path) -> Path:
    """Figure 4 from a committed evaluations.json when its runs are elsewhere (identity not checked)."""
    module = importlib.import_module(f"repro.report.{figure}")
    out = Path(out_root) / figure / scale
    rows, meta = module.collect_cached(cache, scale)
    meta |= {"figure": figure, "scale": scale, "runs_dir": f"(not here: {cache})", "claims": str(claims_path),
             "overrides": [], "ledger": {k: v for k, v in ledger_provenance(claims_path, []).items() if k != "runs"}}
    write_outputs(out, rows, meta)
    return render(out, out)


def render(data_dir: Path, out: Path) -> Path:
    """report.md and plots in `out` from the runs.csv and meta.json in `data_dir`."""
    import json

    meta = json.loads((Path(data_dir) / "meta.json").read_text())
    previous = Path(data_dir) / "previous_verdicts.yaml"  # committed commentary, not part of the ledger
    meta["previous"] = yaml.safe_load(previous.read_text()) if previous.exists() else None
    notes = Path(data_dir) / "notes.yaml"  # committed commentary a later change adds (the map's divergence rule)
    meta["notes"] = yaml.safe_load(notes.read_text()) if notes.exists() else {}
    module = importlib.import_module(f"repro.report.{meta['figure']}")
    text = module.render(read_long(Path(data_dir) / "runs.csv"), meta, load_ledger(Path(meta["claims"])), Path(out))
    write_text(Path(out) / "report.md", text)
    return Path(out)


# ----------------------------------------------------------------------------------------------
# verify

NUMBER = re.compile(r"-?\d[\d,]*\.?\d*(?:e[-+]?\d+)?%?|∞|—")


def _label(line: str) -> str:
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    return cells[0][:60] if line.lstrip().startswith("|") else line.strip()[:60]


def compare(committed: str, rebuilt: str) -> list[str]:
    """One line per number that differs: where (the row's first cell or the line), committed and rebuilt."""
    problems = []
    a, b = committed.splitlines(), rebuilt.splitlines()
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        for k in range(max(i2 - i1, j2 - j1)):
            old = a[i1 + k] if i1 + k < i2 else ""
            new = b[j1 + k] if j1 + k < j2 else ""
            na, nb = NUMBER.findall(old), NUMBER.findall(new)
            diffs = [(x, y) for x, y in zip(na, nb) if x != y]
            if len(na) != len(nb) or not diffs:
                problems.append(f"line {i1 + k + 1} ({_label(old or new)}): committed {old.strip()[:120]!r}, "
                                f"rebuilt {new.strip()[:120]!r}")
            problems += [f"line {i1 + k + 1} ({_label(old)}): committed {x}, rebuilt {y}" for x, y in diffs]
    return problems


def verify(results_root: Path = Path("results")) -> list[str]:
    """Rebuild each committed report (results/<fig>/<scale>/meta.json) from committed files alone."""
    problems = []
    found = sorted(Path(results_root).glob("*/*/meta.json"))
    if not found:
        return [f"no committed report data (results/<fig>/<scale>/meta.json) under {results_root}"]
    for meta_path in found:
        d = meta_path.parent
        with tempfile.TemporaryDirectory() as tmp:
            try:
                rebuilt = (render(d, Path(tmp)) / "report.md").read_text()
            except Exception as e:  # a broken committed file is a verification failure, named
                problems.append(f"{d}: cannot rebuild ({type(e).__name__}: {e})")
                continue
        committed = (d / "report.md").read_text() if (d / "report.md").exists() else ""
        problems += [f"{d / 'report.md'}: {p}" for p in compare(committed, rebuilt)]
    return problems
