"""The wandb mirror of a run's local record, and of each report's claims.

Local files are the record (`repro.runs.files`, `repro.runs.rundir`); wandb shows them. Three writers, one vocabulary:
  Live      mirrors a training run as it goes: tagged with its figure(s), scale and family, grouped by
            experiment and scale, logged at the training step, so a resumed online run skips the steps
            wandb already holds instead of logging them twice.
  replay    rebuilds one wandb run from a run directory's metrics.jsonl, summary.json and train.log (same id;
            each row at the training's time, train.log as its console, no system metrics of the replaying
            process); a second replay of an unchanged run adds nothing. A killed-and-resumed offline run thus
            uploads as one clean history (`python -m repro.wandb sync RUN_DIR...`).
  report    a `job_type=report` run: the claims table, each figure, the paper's numbers (its writer is
            repro.report.mirror, beside the reports; it opens its run through `init_run` here).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import secrets
import shutil
import string
import sys
from pathlib import Path

import yaml

from repro.config import Config
from repro.config.names import FIGURE_EXPERIMENTS
from repro.errors import ReproError
from repro.runs import files, rundir

REPLAY = "replay"  # <runs_dir>/wandb/replay/<run>/: the offline replays `sync --mode offline` writes
_ID_CHARS = string.ascii_lowercase + string.digits


def new_id() -> str:
    """A wandb run id (8 of [a-z0-9], as wandb makes them), chosen by the run so that its local files
    hold it from the first checkpoint on, whether or not wandb is on."""
    return "".join(secrets.choice(_ID_CHARS) for _ in range(8))


# ----------------------------------------------------------------------------------------------
# What a run is, to wandb: tags, group, scalars, the probe chart


def figures_of(experiment: str) -> list[str]:
    """The paper's figures whose report uses `experiment` (bn_x30 is in Figure 2 and Figure 4)."""
    return [f for f, experiments in FIGURE_EXPERIMENTS.items() if experiment in experiments]


def run_labels(cfg: dict) -> dict:
    """wandb.init's group, job_type and tags for a run with the resolved config `cfg` (a dict):
    one group per experiment and scale, so smoke, cpu and gpu runs of a variant never mix."""
    return {"group": f"{cfg['experiment']}-{cfg['scale']['name']}", "job_type": "train",
            "tags": [*(f"figure:{f}" for f in figures_of(cfg["experiment"])), f"scale:{cfg['scale']['name']}",
                     f"family:{cfg['family']}"]}


def scalars(record: dict) -> dict:
    """A metrics.jsonl record without the probe (logged as one chart instead of 3 x units panels)."""
    return {k: v for k, v in record.items() if k != "probe"}


def probe_panels(history: list[dict]) -> dict:
    """Figure 1b/1c as wandb shows it: every probed percentile in one table (step, unit, p15, p50,
    p85) and one chart of each unit's median sigmoid input against the step."""
    import wandb

    probed = [r for r in history if "probe" in r]
    if not probed:
        return {}
    rows = [[r["step"], u, *(r["probe"][q][u] for q in ("p15", "p50", "p85"))]
            for r in probed for u in range(len(r["probe"]["p50"]))]
    units = range(len(probed[0]["probe"]["p50"]))
    median = wandb.plot.line_series(xs=[r["step"] for r in probed], ys=[[r["probe"]["p50"][u] for r in probed] for u in units],
                                    keys=[f"unit {u}" for u in units], title="Sigmoid input median (Figure 1b/1c)",
                                    xname="step")
    return {"probe/percentiles": wandb.Table(columns=["step", "unit", "p15", "p50", "p85"], data=rows),
            "probe/median": median}


def _summary(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}


def init_run(**init):
    """wandb.init, its failures one line naming the fix."""
    import wandb

    try:
        return wandb.init(**init)
    except wandb.errors.Error as e:  # not logged in, no network, a project we may not write
        raise ReproError(f"wandb could not start in {init['mode']} mode ({str(e).strip().splitlines()[0]}): run "
                         f"`wandb login`, or use logger.wandb.mode=offline (sync and report: --mode/--wandb offline)") from e


def _init(cfg: dict, wandb_id: str, name: str, mode: str, directory: Path, resume: str | None = "allow",
          replaying: bool = False):
    """wandb.init for a run: its labels, the step as x-axis. A replay records neither its own console nor its
    own system metrics (those of the sync process, not of the training)."""
    import wandb

    w = cfg["logger"]["wandb"]
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReproError(f"cannot create the wandb folder {directory} ({e.strerror}): set logger.wandb.dir to a "
                         f"writable folder, or logger.wandb.mode=disabled") from e
    run = init_run(project=w["project"], entity=w.get("entity"), mode=mode, dir=directory, name=name, config=cfg,
                 id=wandb_id, resume=resume, **run_labels(cfg),
                 settings=wandb.Settings(console="auto" if w.get("console", True) and not replaying else "off",
                                         silent=True, x_disable_stats=replaying or not w.get("system_metrics", True)))
    run.define_metric("step")
    run.define_metric("*", step_metric="step")  # x-axis is the training step, as in the paper
    return run


# ----------------------------------------------------------------------------------------------
# Live: the mirror while training


class Live:
    """Mirrors a training run's records as they are written (rank 0 only). Each record is logged at
    its training step; on an online resume wandb reports the steps it already holds (`run.step`), and
    those are skipped, so no step is logged twice. (Offline, a resume writes a second folder of the
    same id: `sync` replays the run's files into one.)"""

    def __init__(self, run_dir: Path, cfg: Config, wandb_id: str):
        d = rundir.config_dict(cfg)
        self.run = _init(d, wandb_id, run_dir.name, cfg.logger.wandb.mode, Path(cfg.logger.wandb.dir))
        self.first_new = self.run.step  # online resume: one past the last step wandb holds; else 0

    def log(self, record: dict) -> None:
        if record["step"] >= self.first_new:
            self.run.log(scalars(record), step=record["step"])

    def close(self, summary: dict | None, history: list[dict], failed: bool = False) -> None:
        """Finish the wandb run; one left open would be the run the next start in this process (a
        sweep's worker, a test) gets back from wandb.init."""
        panels = probe_panels(history)
        if panels:
            self.run.log(panels)
        if summary:
            self.run.summary.update(_summary(summary))
        self.run.finish(exit_code=1 if failed else 0)


def start(run_dir: Path, cfg: Config, wandb_id: str) -> Live | None:
    return None if cfg.logger.wandb.mode == "disabled" else Live(run_dir, cfg, wandb_id)


# ----------------------------------------------------------------------------------------------
# replay: one run directory -> exactly one wandb run


def run_record(run_dir: Path) -> tuple[dict, list[dict], dict | None, str]:
    """A run directory's config, history, summary (None if unfinished) and wandb id."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists() or not (run_dir / "metrics.jsonl").exists():
        raise ReproError(f"{run_dir} is not a run directory (no config.yaml and metrics.jsonl): name a folder "
                         f"under runs_dir that `python -m repro.train` wrote")
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else None
    wandb_id = (summary or {}).get("wandb_id")
    if wandb_id is None:  # unfinished, or finished before summary.json carried the id
        ckpt = rundir.load_checkpoint(run_dir)
        wandb_id = ckpt.get("wandb_id") if ckpt else None
    if wandb_id is None:
        raise ReproError(f"{run_dir} records no wandb run id (neither summary.json nor ckpt.pt holds one: it ran "
                         f"with wandb disabled before runs chose their id): leave it out, or rerun it")
    return cfg, files.read_jsonl(run_dir / "metrics.jsonl"), summary, wandb_id


def _digest(run_dir: Path) -> str:
    h = hashlib.sha1()
    for name in ("metrics.jsonl", "summary.json"):
        if (run_dir / name).exists():
            h.update((run_dir / name).read_bytes())
    return h.hexdigest()


def training_start(run_dir: Path, history: list[dict]) -> float:
    """When the training started (epoch seconds): train.log's first time, else metrics.jsonl's last write less
    the last logged wall time."""
    try:
        first = (run_dir / "train.log").read_text().split("\n", 1)[0]
        return datetime.datetime.strptime(first[:19], "%Y-%m-%d %H:%M:%S").timestamp()
    except (OSError, ValueError):
        return (run_dir / "metrics.jsonl").stat().st_mtime - max((r.get("wall", 0.0) for r in history), default=0.0)


def replay(run_dir: Path, mode: str = "online") -> tuple[Path | None, int]:
    """Mirror `run_dir`'s files into its one wandb run: (the offline folder written, or None online;
    the number of steps added). Online, the run (same id) is resumed and only steps wandb lacks are
    logged; offline, `<runs_dir>/wandb/replay/<run>/` is rewritten from the files, or left as it is
    when they have not changed since: a second replay adds nothing."""
    run_dir = Path(run_dir).resolve()
    cfg, history, summary, wandb_id = run_record(run_dir)
    if mode == "offline":
        folder, digest = run_dir.parent / "wandb" / REPLAY / run_dir.name, _digest(run_dir)
        marker = folder / "replayed.json"
        done = json.loads(marker.read_text()) if marker.exists() else {}
        if done.get("digest") == digest and Path(done["dir"]).is_dir():
            return Path(done["dir"]), 0
        shutil.rmtree(folder, ignore_errors=True)  # an earlier replay of fewer steps: one run, not two
        run = _init(cfg, wandb_id, run_dir.name, "offline", folder, resume=None, replaying=True)
    else:
        run = _init(cfg, wandb_id, run_dir.name, "online", run_dir.parent / "wandb", replaying=True)
    new = [r for r in history if r["step"] >= run.step]
    start = training_start(run_dir, history)
    for r in new:  # each row at the training's time (its `wall` after the start), not the replay's
        run.log(scalars(r) | ({"_timestamp": start + r["wall"]} if "wall" in r else {}), step=r["step"])
    if (run_dir / "train.log").exists():  # the training's console, as wandb's Logs tab shows a live run's
        shutil.copyfile(run_dir / "train.log", Path(run.dir) / "output.log")
    if new and (panels := probe_panels(history)):  # into the last row, at its time
        run.log(panels | ({"_timestamp": start + new[-1]["wall"]} if "wall" in new[-1] else {}))
    if summary:
        run.summary.update(_summary(summary))
    offline = Path(run.settings.sync_dir) if mode == "offline" else None
    run.finish()
    if offline is not None:
        files.write_json(marker, {"digest": digest, "dir": str(offline), "id": wandb_id})
    return offline, len(new)


# ----------------------------------------------------------------------------------------------
# Entry: python -m repro.wandb sync RUN_DIR...


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m repro.wandb", description="Mirror run directories into wandb.")
    sub = parser.add_subparsers(dest="command", required=True)
    sync = sub.add_parser("sync", help="replay each run's metrics.jsonl and summary.json into its one wandb run "
                                       "(same id; a second sync adds nothing)")
    sync.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    sync.add_argument("--mode", choices=("online", "offline"), default="online",
                      help="online (after `wandb login`) uploads; offline writes <runs_dir>/wandb/replay/<run>/ "
                           "for `wandb sync` elsewhere")
    args = parser.parse_args(argv)
    for run_dir in args.run_dirs:
        try:
            folder, added = replay(run_dir, args.mode)
        except ReproError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if folder is None:
            print(f"{run_dir}: {added} step(s) added to its wandb run")
        elif added:
            print(f"{run_dir}: replayed {added} step(s) into {folder}; upload it with `wandb sync {folder}`")
        else:
            print(f"{run_dir}: unchanged since its replay {folder}; nothing added")
    return 0
