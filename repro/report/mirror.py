"""A built report mirrored into wandb as a `job_type=report` run: the claims table, each figure, the ledger's
claims and the paper's numbers (`python -m repro.report figN` calls `log_report`). Runs themselves are
mirrored by repro.runs.wandb_mirror, which this module shares its vocabulary and `init_run` with."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import yaml

from repro.config import WandbConfig
from repro.report import load_ledger, read_md_table
from repro.runs.wandb_mirror import init_run


def report_run(out: Path, meta: dict, ledger: dict, paper: tuple[tuple, dict] | None, mode: str, directory: Path,
               project: str, entity: str | None) -> Path | None:
    """Log a built report (results/<fig>/<scale>/) as a `job_type=report` run: its claims table
    (paper, ours, interval, verdict, ...) as a wandb.Table, each figure as a wandb.Image, the ledger's
    claims and the paper's reference numbers. Returns the offline folder (None online)."""
    import wandb

    figure, scale = meta["figure"], meta["scale"]
    header, rows = read_md_table((Path(out) / "report.md").read_text(), "claim")
    directory.mkdir(parents=True, exist_ok=True)
    run = init_run(project=project, entity=entity, mode=mode, dir=directory, job_type="report",
                 name=f"report-{figure}-{scale}", group=f"{figure}-{scale}", tags=[f"figure:{figure}", f"scale:{scale}", "report"],
                 config={"figure": figure, "scale": scale, "runs": [r["run"] for r in meta.get("runs", [])],
                         "runs_dir": meta["runs_dir"], "claims_ledger": meta["claims"]},
                 settings=wandb.Settings(console="off", silent=True, x_disable_stats=True))
    data = {"claims": wandb.Table(columns=header, data=rows),
            "paper/claims": wandb.Table(columns=["claim", "paper", "statistic", "op", "threshold"],
                                        data=[[c["id"], c["paper"], c["statistic"], c["op"], float(c["threshold"])]
                                              for c in ledger["claims"]])}
    if paper:  # the paper's own numbers, as the figure module holds them (PAPER, PAPER_COLUMNS)
        columns, values = paper
        data["paper/numbers"] = wandb.Table(columns=["row", *columns], data=[
            [k, *(None if isinstance(x, float) and math.isinf(x) else x for x in v)] for k, v in values.items()])
    data |= {f"figures/{p.stem}": wandb.Image(str(p)) for p in sorted(Path(out).glob("*.png"))}
    run.log(data)
    run.summary.update({f"verdict/{row[0]}": row[header.index("verdict")].strip("*") for row in rows})
    offline = Path(run.settings.sync_dir) if mode == "offline" else None
    run.finish()
    return offline


def log_report(path: Path, runs_dir: Path, mode: str | None) -> Path | None:
    """`python -m repro.report figN`: log the report built in `path` as its runs were mirrored (their
    recorded logger.wandb), or in `mode`, into <runs_dir>/wandb. The offline folder, or None."""
    meta = json.loads((Path(path) / "meta.json").read_text())
    first = Path(runs_dir) / meta["runs"][0]["run"] / "config.yaml" if meta.get("runs") else None
    w = (yaml.safe_load(first.read_text())["logger"]["wandb"] if first is not None and first.exists()
         else vars(WandbConfig()))
    mode = mode or w["mode"]
    if mode == "disabled":
        return None
    module = importlib.import_module(f"repro.report.{meta['figure']}")
    paper = (module.PAPER_COLUMNS, module.PAPER) if hasattr(module, "PAPER_COLUMNS") else None
    return report_run(path, meta, load_ledger(Path(meta["claims"])), paper, mode, Path(runs_dir) / "wandb",
                      w["project"], w.get("entity"))
