"""Reports: put each measured claim beside the paper's number, with a verdict.

Shared pieces: finding recorded runs, aggregating curves over seeds, the claims ledger and the
markdown it becomes. One module per figure (`fig1.py`, ...) builds on these.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import yaml

from repro.errors import ReproError
from repro.records import atomic_write, read_jsonl

matplotlib.use("Agg")  # reports render to files; no display is needed or wanted


@dataclass
class Run:
    """One finished run as its files record it."""

    path: Path
    summary: dict
    config: dict
    env: dict
    metrics: list[dict] = field(repr=False)

    @property
    def experiment(self) -> str:
        return self.summary["experiment"]

    @property
    def seed(self) -> int:
        return self.summary["seed"]

    def curve(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        rows = [(r["step"], r[key]) for r in self.metrics if key in r]
        steps, values = zip(*rows) if rows else ((), ())
        return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def load_runs(runs_dir: Path, experiments: list[str], scale: str) -> dict[str, list[Run]]:
    """Finished runs of the given experiments at `scale`, the latest per (experiment, seed)."""
    found: dict[tuple[str, int], Run] = {}
    for summary_path in sorted(Path(runs_dir).glob("*/summary.json"), key=lambda p: p.stat().st_mtime):
        summary = json.loads(summary_path.read_text())
        if summary.get("experiment") not in experiments or summary.get("scale") != scale:
            continue
        d = summary_path.parent
        found[(summary["experiment"], summary["seed"])] = Run(
            d, summary, yaml.safe_load((d / "config.yaml").read_text()),
            json.loads((d / "env.json").read_text()), read_jsonl(d / "metrics.jsonl"))
    runs = {e: sorted((r for (x, _), r in found.items() if x == e), key=lambda r: r.seed) for e in experiments}
    missing = [e for e, rs in runs.items() if not rs]
    if missing:
        raise ReproError(f"no finished {scale}-scale runs of {missing} under {runs_dir}: run them first "
                         f"(e.g. python -m repro.train -m experiment={','.join(missing)} scale={scale})")
    return runs


def mean_curve(runs: list[Run], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps, mean and std over seeds of `key`, on the steps every run recorded."""
    curves = [r.curve(key) for r in runs]
    common = sorted(set.intersection(*(set(s.tolist()) for s, _ in curves)))
    values = np.array([[dict(zip(s.tolist(), v))[t] for t in common] for s, v in curves])
    return np.asarray(common), values.mean(0), values.std(0)


def steps_to_reach(steps: np.ndarray, values: np.ndarray, target: float) -> float:
    """First step where the curve reaches `target`, linearly interpolated; inf if it never does."""
    above = np.nonzero(values >= target)[0]
    if len(above) == 0:
        return math.inf
    i = above[0]
    if i == 0:
        return float(steps[0])
    s0, s1, v0, v1 = steps[i - 1], steps[i], values[i - 1], values[i]
    return float(s0 + (target - v0) / (v1 - v0) * (s1 - s0))


def value_at(steps: np.ndarray, values: np.ndarray, step: float) -> float:
    return float(np.interp(step, steps, values)) if steps[0] <= step <= steps[-1] else math.nan


# ----------------------------------------------------------------------------------------------
# Claims ledger: what the paper says, the statistic, and the tolerance, fixed before the runs.


def load_claims(path: Path) -> list[dict]:
    return yaml.safe_load(Path(path).read_text())["claims"]


def verdict(measured: float, op: str, threshold: float) -> str:
    if measured is None or (isinstance(measured, float) and math.isnan(measured)):
        return "not measured"
    ok = {">": measured > threshold, ">=": measured >= threshold, "<": measured < threshold,
          "<=": measured <= threshold}[op]
    return "reproduced" if ok else "**not reproduced**"


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


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text)


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure atomically (render to a temp name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    tmp.replace(path)
