"""A recorded run as its files say (`read_run`), and which recorded runs a report or an evaluation may
use: those whose identity (resolved config without seed, run directory, logger keys and data paths)
equals the figure's recipe at that scale (`select_runs`, `recipe_problems`). Every other candidate is
listed with the reason, an unfinished run with its last step, a missing seed is said; a diverged run is
kept (divergence is an outcome). Never a silent substitution.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from repro.errors import ReproError
from repro.runs import files, rundir


@dataclass
class Run:
    """One recorded run as its files say."""

    path: Path
    config: dict
    env: dict
    summary: dict | None  # None: the run never finished
    metrics: list[dict] = field(repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def experiment(self) -> str:
        return self.config["experiment"]

    @property
    def seed(self) -> int:
        return self.config["seed"]

    @property
    def identity(self) -> str:
        return rundir.identity_hash(self.config, self.facts)

    @property
    def facts(self) -> dict:
        """What the run was beyond its config (replicas, non-canonical data): rundir.run_facts."""
        return rundir.recorded_facts(self.env)

    @property
    def last_step(self) -> int:
        return self.metrics[-1]["step"] if self.metrics else 0

    def curve(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        rows = [(r["step"], r[key]) for r in self.metrics if key in r]
        steps, values = zip(*rows) if rows else ((), ())
        return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def read_run(d: Path) -> Run:
    summary = d / "summary.json"
    metrics = d / "metrics.jsonl"
    env = d / "env.json"
    return Run(d, yaml.safe_load((d / "config.yaml").read_text()), json.loads(env.read_text()) if env.exists() else {},
               json.loads(summary.read_text()) if summary.exists() else None,
               files.read_jsonl(metrics) if metrics.exists() else [])


def recipe_config(experiment: str, scale: str, overrides: tuple[str, ...] = ()) -> dict:
    """The resolved config `python -m repro.train experiment=<e> scale=<s> <overrides>` would run."""
    from repro.config import compose

    return rundir.config_dict(compose([f"experiment={experiment}", f"scale={scale}", *overrides]))


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def differing_keys(config: dict, recipe: dict, facts: dict | None = None) -> list[str]:
    """`key=run value (recipe: value)` for each identity key where a run departs from the recipe (a
    recipe is run in one process on the canonical data: its facts are none)."""
    a, b = _flat(rundir.identity_dict(config, facts=facts)), _flat(rundir.identity_dict(recipe))
    return [f"{k}={a.get(k, '(absent)')} (recipe: {b.get(k, '(absent)')})" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]


@dataclass
class Selection:
    runs: dict[str, list[Run]]  # experiment -> the runs used, by seed
    excluded: list[str]  # "run name: reason", one per candidate left out
    missing: dict[str, list[int]]  # experiment -> seeds that other experiments have and it lacks
    identity: dict[str, str]  # experiment -> the recipe's identity hash
    unfinished: dict[tuple[str, int], int] = field(default_factory=dict)  # (experiment, seed) -> furthest step


def select_runs(runs_dir: Path, experiments: list[str], scale: str, overrides: tuple[str, ...] = (),
                seeds: tuple[int, ...] | None = None, require: bool = True) -> Selection:
    """The runs of `experiments` at `scale` under `runs_dir` that match the recipe, and why the others do not.
    With `seeds` (a figure made from those seeds only, as Figure 4 from seed 1) other seeds are not candidates.
    `require`: an experiment with no finished run is refused (else it is listed with none)."""
    recipes = {e: recipe_config(e, scale, overrides) for e in experiments}
    identity = {e: rundir.identity_hash(c) for e, c in recipes.items()}
    chosen: dict[tuple[str, int], Run] = {}
    excluded, unfinished = [], {}
    for cfg_path in sorted(Path(runs_dir).glob("*/config.yaml")):
        run = read_run(cfg_path.parent)
        if run.experiment not in experiments or run.config.get("scale", {}).get("name") != scale:
            continue  # another figure's or another scale's run: not a candidate
        if seeds is not None and run.seed not in seeds:
            continue  # a seed the figure does not use (Figure 2's seeds 2-3 of BN-x30 for Figure 4)
        if run.identity != identity[run.experiment]:
            diff = differing_keys(run.config, recipes[run.experiment], run.facts)
            excluded.append(f"{run.name}: settings differ from the recipe: {'; '.join(diff[:6])}"
                            + (f" and {len(diff) - 6} more" if len(diff) > 6 else ""))
        elif run.summary is None or run.summary.get("status") == "preempted":
            excluded.append(f"{run.name}: unfinished (last recorded step {run.last_step:,})")
            key = (run.experiment, run.seed)
            unfinished[key] = max(run.last_step, unfinished.get(key, 0))
        else:
            key = (run.experiment, run.seed)
            if key in chosen:  # the same settings and seed twice: keep the later, say so
                excluded.append(f"{chosen[key].name}: same settings and seed as {run.name}, which is used")
            chosen[key] = run
    runs = {e: sorted((r for (x, _), r in chosen.items() if x == e), key=lambda r: r.seed) for e in experiments}
    absent = [e for e, rs in runs.items() if not rs]
    if absent and require:
        raise ReproError(f"no finished {scale}-scale runs of {absent} with the recipe's settings under {runs_dir}"
                         + (f" ({len(excluded)} excluded: {'; '.join(excluded[:3])})" if excluded else "")
                         + f": run them first (e.g. python -m repro.train -m experiment={','.join(absent)} scale={scale})")
    seeds = sorted(seeds or {r.seed for rs in runs.values() for r in rs})
    missing = {e: [s for s in seeds if s not in {r.seed for r in rs}] for e, rs in runs.items()}
    return Selection(runs, excluded, {e: m for e, m in missing.items() if m}, identity,
                     {k: step for k, step in unfinished.items() if k not in chosen})


def recipe_problems(run_dirs: list[Path]) -> list[str]:
    """For `repro.evaluate`: each given run that is unfinished or departs from its experiment's recipe
    at its scale, with the reason."""
    problems = []
    for d in map(Path, run_dirs):
        if not (d / "config.yaml").exists():
            continue  # not a run directory: evaluate says so
        r = read_run(d)
        if r.summary is None or r.summary.get("status") == "preempted":
            problems.append(f"{r.name} is unfinished (last recorded step {r.last_step:,})")
            continue
        diff = differing_keys(r.config, recipe_config(r.experiment, r.config["scale"]["name"]), r.facts)
        if diff:
            problems.append(f"{r.name} departs from the {r.experiment} recipe: {'; '.join(diff[:4])}")
    return problems
