"""Where a run starts beyond resume=auto, as timm's `--initial-checkpoint` and `--resume` (issue 19):
`train.init_from` gives initial weights (step 0; the path joins the run's identity, the file's digest is recorded
in env.json), `train.resume_from` an explicit checkpoint of this run to continue from (checked as resume=auto
checks the run directory's own), in a new run directory that carries the metrics the checkpoint's run logged.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from torch import nn

from repro.config import Config
from repro.errors import ReproError
from repro.runs import files, rundir

log = logging.getLogger("repro.resume")


def explicit_checkpoint(cfg: Config, run_dir: Path | None, found: dict | None) -> tuple[dict, Path]:
    """train.resume_from's checkpoint and its path; refused where resume=auto found this run's own."""
    path = Path(cfg.train.resume_from)
    if found is not None:
        raise ReproError(f"resume=auto found {run_dir} with its own checkpoint (step {found['step']}) and "
                         f"train.resume_from names {path}: drop train.resume_from to continue {run_dir}, or move it away")
    return rundir.load_checkpoint_file(path), path


def carry_metrics(cfg: Config, run_dir: Path, step: int) -> None:
    """A run continued from train.resume_from in a new directory: the records its checkpoint's run logged
    (metrics.jsonl beside the checkpoint; files.MetricsLog keeps those up to `step`), so its history is whole;
    a warning where there are none."""
    source = Path(cfg.train.resume_from).parent / "metrics.jsonl"
    if not source.is_file():
        log.warning("%s has no metrics.jsonl beside it: %s's history starts at step %d", cfg.train.resume_from,
                    run_dir, step)
        return
    files.atomic_write(run_dir / "metrics.jsonl", source.read_text())


def initial_weights(net: nn.Module, path: str) -> dict:
    """Load train.init_from into `net` (timm's loader: a ckpt.pt's `model`, a safetensors file or a state dict);
    return what env.json records of it: path and SHA-256."""
    from timm.models import load_checkpoint

    try:
        load_checkpoint(net, path, use_ema=False, strict=True)
    except (RuntimeError, KeyError, ValueError, OSError) as e:
        raise ReproError(f"train.init_from={path} does not fit this run's network ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0][:200]}): give weights of the same model and classes") from e
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    log.info("initial weights from %s (sha256 %s)", path, digest[:16])
    return {"path": path, "sha256": digest}
