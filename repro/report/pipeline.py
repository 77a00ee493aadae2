"""Build a report from runs, render it from committed files, and verify committed reports.

build:  runs -> results/<fig>/<scale>/{runs.csv, meta.json} -> render
render: runs.csv + meta.json + the ledger -> report.md and plots (no runs needed)
verify: render every committed report into a scratch folder and name each number that differs.
"""

from __future__ import annotations

import difflib
import importlib
import json
import re
import tempfile
from pathlib import Path

import yaml

from repro.config.names import FIGURE_EXPERIMENTS
from repro.report import PLOTTED, load_ledger, read_long, run_meta, write_outputs, write_text
from repro.report.provenance import ledger_provenance
from repro.runs.records import select_runs

FIGURES = tuple(FIGURE_EXPERIMENTS)


def build(figure: str, runs_dir: Path, scale: str, out_root: Path, claims_path: Path,
          overrides: tuple[str, ...] = (), **kwargs) -> Path:
    """Select the recipe's runs, write runs.csv and meta.json, then render the report from them."""
    module = importlib.import_module(f"repro.report.{figure}")
    seeds = load_ledger(claims_path).get("seeds") or getattr(module, "SEEDS", None)  # the ledger's, if it lists them
    sel = select_runs(runs_dir, module.EXPERIMENTS, scale, tuple(overrides), tuple(seeds) if seeds else None)
    out = Path(out_root) / figure / scale
    rows, meta = module.collect(sel, out=out, scale=scale, claims=claims_path, runs_dir=runs_dir,
                                overrides=overrides, **kwargs)
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
    meta = json.loads((Path(data_dir) / "meta.json").read_text())
    previous = Path(data_dir) / "previous_verdicts.yaml"  # committed commentary, not part of the ledger
    meta["previous"] = yaml.safe_load(previous.read_text()) if previous.exists() else None
    meta["data_dir"] = str(data_dir)  # where a report finds other committed data (Figure 4's per-image records)
    notes = Path(data_dir) / "notes.yaml"  # committed commentary a later change adds (the map's divergence rule)
    meta["notes"] = yaml.safe_load(notes.read_text()) if notes.exists() else {}
    module = importlib.import_module(f"repro.report.{meta['figure']}")
    (Path(out) / PLOTTED).unlink(missing_ok=True)  # the figures drawn now record their data afresh
    text = module.render(read_long(Path(data_dir) / "runs.csv"), meta, load_ledger(Path(meta["claims"])), Path(out))
    write_text(Path(out) / "report.md", text)
    return Path(out)


# ----------------------------------------------------------------------------------------------
# verify

NUMBER = re.compile(r"-?\d[\d,]*\.?\d*(?:e[-+]?\d+)?%?|∞|—")
VERDICT = re.compile(r"not reproduced|(?<!not )reproduced|inconclusive|not testable at this scale")


def _label(line: str) -> str:
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    return cells[0][:60] if line.lstrip().startswith("|") else line.strip()[:60]


def changed_words(old: str, new: str) -> str:
    """What changed between two lines, word by word: "'a b' → 'c'; ..." (the whole change, not a prefix)."""
    a, b = old.split(), new.split()
    parts = [f"{' '.join(a[i1:i2]) or '(nothing)'!r} → {' '.join(b[j1:j2]) or '(nothing)'!r}"
             for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes() if op != "equal"]
    return "; ".join(parts)


def compare(committed: str, rebuilt: str) -> list[str]:
    """One line per number that differs: where (the row's first cell or the line), committed and rebuilt;
    a changed verdict by its words; any other change by the words that changed."""
    problems = []
    a, b = committed.splitlines(), rebuilt.splitlines()
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        for k in range(max(i2 - i1, j2 - j1)):
            old = a[i1 + k] if i1 + k < i2 else ""
            new = b[j1 + k] if j1 + k < j2 else ""
            if not old.strip() and not new.strip():
                continue  # a blank line more or less
            where = f"line {i1 + k + 1} ({_label(old or new)})"
            na, nb = NUMBER.findall(old), NUMBER.findall(new)
            diffs = [(x, y) for x, y in zip(na, nb) if x != y]
            va, vb = VERDICT.findall(old)[:1], VERDICT.findall(new)[:1]  # the verdict cell comes first in a row
            if va != vb:
                problems.append(f"{where}: verdict {''.join(va) or '(none)'} → {''.join(vb) or '(none)'}")
            if len(na) == len(nb) and diffs:  # the same numbers in the same places: name each that differs
                problems += [f"{where}: committed {x}, rebuilt {y}" for x, y in diffs]
            elif va == vb or len(na) != len(nb):  # text added, removed or reworded: the words that changed
                problems.append(f"{where}: {changed_words(old, new)}")
    return problems


def compare_plotted(committed: Path, rebuilt: Path) -> list[str]:
    """One line per figure element whose plotted data differ (plotted.json digests), or a figure gone or new."""
    if not committed.exists():
        if not rebuilt.exists():  # a report that draws no figure (the Figures 2-3 rule's)
            return []
        return [f"{committed}: missing (the digest of each figure's plotted data): re-render the report"]
    a, b = json.loads(committed.read_text()), json.loads(rebuilt.read_text()) if rebuilt.exists() else {}
    problems = [f"{committed.parent / name}: {'not drawn any more' if name not in b else 'new'}"
                for name in sorted(set(a) ^ set(b))]
    for name in sorted(set(a) & set(b)):
        changed = sorted(k for k in set(a[name]) | set(b[name]) if a[name].get(k) != b[name].get(k))
        problems += [f"{committed.parent / name}: plotted data differ in {k}" for k in changed]
    return problems


def _gpu_renderer():
    """The GPU check's loader and renderer (scripts/, beside the code it runs on a GPU machine)."""
    import sys

    from repro.report.provenance import ROOT

    folder = next(p.parent for p in sorted((ROOT / "scripts").rglob("gpu_report.py")))
    sys.path[:0] = [str(folder)]
    from gpu_check import load
    from gpu_report import render as render_gpu

    return load, render_gpu


def verify_pages(results_root: Path) -> list[str]:
    """rule.md re-rendered from the map's committed data, and each GPU report from its gpu_check.json."""
    from repro.report import rule
    from repro.report.provenance import ROOT

    problems = []
    if (page := Path(results_root) / "fig1" / "rule.md").exists():
        rebuilt = rule.render(Path(results_root) / "fig1" / "map", ROOT / "conf" / "family" / "fig1.yaml")
        problems += [f"{page}: {p}" for p in compare(page.read_text(), rebuilt)]
    checks = sorted((Path(results_root) / "gpu").rglob("gpu_check.json"))
    if checks:
        load, render_gpu = _gpu_renderer()
        for path in checks:
            page = path.with_name("report.md")
            committed = page.read_text() if page.exists() else ""
            problems += [f"{page}: {p}" for p in compare(committed, render_gpu(load(path)))]
    return problems


def verify(results_root: Path = Path("results"), root: Path | None = None) -> list[str]:
    """Rebuild each committed report (results/<fig>/<scale>/meta.json) from committed files alone: its
    report.md and the plotted data of its figures; then rule.md, the GPU reports, and the numbers in the
    README's results sections (`root`: the repository, by default the folder above `results_root`)."""
    from repro.report.readme import verify_readme

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
            problems += compare_plotted(d / PLOTTED, Path(tmp) / PLOTTED)
        committed = (d / "report.md").read_text() if (d / "report.md").exists() else ""
        problems += [f"{d / 'report.md'}: {p}" for p in compare(committed, rebuilt)]
    problems += verify_pages(results_root)
    root = Path(root) if root is not None else Path(results_root).resolve().parent
    if (root / "README.md").exists():
        problems += verify_readme(root, results_root)
    return problems
