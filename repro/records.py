"""What a run leaves behind: its own directory, atomic files, metrics, checkpoints, the wandb mirror.

Layout of `runs/<experiment>-<scale>-s<seed>-<hash>/`:
  config.yaml   the resolved config          env.json      versions, device, git commit, data source
  metrics.jsonl one JSON record per logged step  summary.json  final numbers and status
  ckpt.pt       the last checkpoint (model, optimizer, step, RNG states, data position)
Local files are the record; wandb mirrors the metrics and is never the only copy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from repro.config import Config
from repro.errors import ReproError

# Keys that do not change what a run computes, so they stay out of its identity hash.
_NOT_IDENTITY = ("resume", "runs_dir", "logger")
_NOT_IDENTITY_TRAIN = ("device", "threads")


# ----------------------------------------------------------------------------------------------
# Atomic writes: a crash leaves the old file or the new one, never half of one.


def atomic_write(path: Path, data: bytes | str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    """Read a metrics file, ignoring a torn last line left by a crash mid-write."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


# ----------------------------------------------------------------------------------------------
# Run identity and directory


def config_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def identity_dict(d: dict, with_seed: bool = False) -> dict:
    """The keys of a resolved config (a dict, e.g. a run's config.yaml) that decide what it computes."""
    d = {k: v for k, v in d.items() if k not in _NOT_IDENTITY and (with_seed or k != "seed")}
    d["train"] = {k: v for k, v in d["train"].items() if k not in _NOT_IDENTITY_TRAIN}
    return d


def _hash(d: dict) -> str:
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


def config_hash(cfg: Config) -> str:
    """Names the run directory: the identity with the seed."""
    return _hash(identity_dict(config_dict(cfg), with_seed=True))


def identity_hash(d: dict) -> str:
    """The run's identity: its resolved config without seed, run directory and logger keys. Runs of
    one recipe at one scale share it, whatever their seed; computable from any run's config.yaml."""
    return _hash(identity_dict(d))


def run_name(cfg: Config) -> str:
    return f"{cfg.experiment}-{cfg.scale.name}-s{cfg.seed}-{config_hash(cfg)}"


def _dir_candidates(cfg: Config) -> list[Path]:
    base = Path(cfg.runs_dir) / run_name(cfg)
    return [base] + [base.with_name(f"{base.name}.{i}") for i in range(2, 1000)]


def find_resumable(cfg: Config) -> Path | None:
    """With resume=auto: the latest run of the identical config that left a checkpoint or finished."""
    if cfg.resume not in ("auto", "never"):
        raise ReproError(f"resume={cfg.resume!r} is not valid: use resume=auto or resume=never")
    existing = [p for p in _dir_candidates(cfg) if p.exists()]
    if cfg.resume == "auto" and existing:
        last = existing[-1]
        if (last / "summary.json").exists() or (last / "ckpt.pt").exists():
            return last
    return None


def new_run_dir(cfg: Config) -> Path:
    """A fresh directory; an existing name gets a .2, .3, ... suffix so no run is ever overwritten."""
    for p in _dir_candidates(cfg):
        try:
            p.mkdir(parents=True, exist_ok=False)
            return p
        except FileExistsError:
            continue
    raise ReproError(f"more than 999 runs named {run_name(cfg)}: clean up {cfg.runs_dir}")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).resolve().parent).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device, world_size: int = 1) -> dict:
    import timm
    import torchvision

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "cpu_threads": torch.get_num_threads(),
        "world_size": world_size,
        "git_commit": git_commit(),
        "argv": sys.argv,
    }


def write_run_header(run_dir: Path, cfg: Config, env: dict) -> None:
    atomic_write(run_dir / "config.yaml", yaml.safe_dump(config_dict(cfg), sort_keys=False))
    write_json(run_dir / "env.json", env | {"identity": identity_hash(config_dict(cfg))})


# ----------------------------------------------------------------------------------------------
# Metrics: local JSONL plus the wandb mirror


class MetricsLog:
    """Appends records to metrics.jsonl and mirrors them to wandb (offline by default)."""

    def __init__(self, run_dir: Path, cfg: Config, resume_step: int | None, wandb_id: str | None):
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            # Drop records logged after the checkpoint: the resumed run logs them again.
            kept = [r for r in read_jsonl(self.path) if r["step"] <= resume_step]
            atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(self.path, "a")  # noqa: SIM115 - held for the run's lifetime
        self.wandb = _init_wandb(run_dir, cfg, wandb_id)
        self.wandb_id = self.wandb.id if self.wandb is not None else None

    def log(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self.wandb is not None:
            self.wandb.log(_flatten(record))

    def close(self, summary: dict | None = None) -> None:
        self._file.close()
        if self.wandb is not None:
            if summary:
                self.wandb.summary.update({k: v for k, v in summary.items() if not isinstance(v, dict)})
            self.wandb.finish()


def _flatten(record: dict) -> dict:
    """wandb wants scalars: {"probe": {"p50": [a, b]}} -> {"probe/p50/0": a, "probe/p50/1": b}."""
    out = {}
    for k, v in record.items():
        if isinstance(v, dict):
            out.update({f"{k}/{kk}": vv for kk, vv in _flatten(v).items()})
        elif isinstance(v, list):
            out.update({f"{k}/{i}": vv for i, vv in enumerate(v)})
        else:
            out[k] = v
    return out


def _init_wandb(run_dir: Path, cfg: Config, wandb_id: str | None):
    w = cfg.logger.wandb
    if w.mode == "disabled":
        return None
    if w.mode not in ("offline", "online"):
        raise ReproError(f"logger.wandb.mode={w.mode!r} is not valid: use offline, online or disabled")
    import wandb

    Path(w.dir).mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=w.project, entity=w.entity, mode=w.mode, dir=w.dir, group=cfg.experiment,
        name=run_dir.name, job_type=cfg.scale.name, config=config_dict(cfg),
        id=wandb_id, resume="allow" if wandb_id else None,
        settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
    )
    run.define_metric("step")
    run.define_metric("*", step_metric="step")  # x-axis is the training step, as in the paper
    return run


# ----------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(run_dir: Path, state: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".ckpt.", suffix=".tmp")
    os.close(fd)
    torch.save(state, tmp)
    os.replace(tmp, run_dir / "ckpt.pt")


def load_checkpoint(run_dir: Path) -> dict | None:
    path = run_dir / "ckpt.pt"
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several types for a damaged zip/pickle
        raise ReproError(
            f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {e}): delete it to "
            f"restart that run, or pass resume=never to start a new run beside it") from e
