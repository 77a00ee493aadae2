"""What a run leaves behind: its own directory, atomic files, metrics, checkpoints.

Layout of `runs/<experiment>-<scale>-s<seed>-<hash>/`:
  config.yaml   the resolved config          env.json      versions, device, git commit, data source
  metrics.jsonl one JSON record per logged step  summary.json  final numbers and status
  ckpt.pt       the last checkpoint (model, optimizer, step, RNG states, data position)
Local files are the record; wandb mirrors them (repro.wandb_mirror) and is never the only copy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shutil
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
_NOT_IDENTITY_DATA = ("root", "debian_dir")  # where the files are, which differs between machines


# ----------------------------------------------------------------------------------------------
# Atomic writes: a crash leaves the old file or the new one, never half of one.


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_via_temporary(path: Path, write) -> None:
    """`write(tmp)` into a temporary beside `path`, then rename it over `path`. The file gets the
    umask's permissions (mkstemp's 0600 would hide runs from others on a shared cluster); a failure
    (a full disk, a read-only folder) removes the temporary and is one ReproError naming the file."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as RuntimeError
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free / 2**20 if path.parent.is_dir() else 0.0
        kept = (f"the previous version ({path.stat().st_size / 2**20:.1f} MiB) is intact" if path.exists()
                else "nothing was written")
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        raise ReproError(f"could not write {path} ({reason}; {free:.0f} MiB free there): {kept}; free space or "
                         f"make {path.parent} writable, then rerun the same command (resume=auto continues a run)") from e


def atomic_write(path: Path, data: bytes | str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())

    _write_via_temporary(Path(path), write)


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


def _with_defaults(d: dict, defaults: dict) -> dict:
    """`d` with the keys it lacks taken from `defaults`: a run recorded before a key joined the schema
    ran with what is now that key's default."""
    return {k: _with_defaults(d[k], v) if isinstance(v, dict) and isinstance(d.get(k), dict) else d.get(k, v)
            for k, v in defaults.items()} | {k: v for k, v in d.items() if k not in defaults}


def identity_dict(d: dict, with_seed: bool = False) -> dict:
    """The keys of a resolved config (a dict, e.g. a run's config.yaml) that decide what it computes:
    not where its files are (the data's identity, its source, counts and checksum, is checked apart)."""
    d = _with_defaults(d, dataclasses.asdict(Config()))
    d = {k: v for k, v in d.items() if k not in _NOT_IDENTITY and (with_seed or k != "seed")}
    d["train"] = {k: v for k, v in d["train"].items() if k not in _NOT_IDENTITY_TRAIN}
    d["data"] = {k: v for k, v in d["data"].items() if k not in _NOT_IDENTITY_DATA}
    return d


def _hash(d: dict) -> str:
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


def config_hash(cfg: Config) -> str:
    """Names the run directory: the identity with the seed."""
    return _hash(identity_dict(config_dict(cfg), with_seed=True))


def identity_hash(d: dict) -> str:
    """The run's identity: its resolved config without seed, run directory, logger keys and data
    paths. Runs of one recipe at one scale share it, whatever their seed; computable from any run's
    config.yaml."""
    return _hash(identity_dict(d))


def run_name(cfg: Config) -> str:
    return f"{cfg.experiment}-{cfg.scale.name}-s{cfg.seed}-{config_hash(cfg)}"


def _dir_candidates(cfg: Config) -> list[Path]:
    base = Path(cfg.runs_dir) / run_name(cfg)
    return [base] + [base.with_name(f"{base.name}.{i}") for i in range(2, 1000)]


def existing_run_dirs(cfg: Config) -> list[Path]:
    """The directories runs of this exact config made, oldest name first."""
    return [p for p in _dir_candidates(cfg) if p.exists()]


def find_resumable(cfg: Config) -> Path | None:
    """With resume=auto: the latest run of the identical config that left a checkpoint or finished
    (a later directory a run left before its first checkpoint has nothing to resume)."""
    if cfg.resume != "auto":
        return None
    done = [p for p in existing_run_dirs(cfg) if (p / "summary.json").exists() or (p / "ckpt.pt").exists()]
    return done[-1] if done else None


def new_run_dir(cfg: Config) -> Path:
    """A fresh directory; an existing name gets a .2, .3, ... suffix so no run is ever overwritten."""
    for p in _dir_candidates(cfg):
        try:
            p.mkdir(parents=True, exist_ok=False)
            return p
        except FileExistsError:
            continue
        except OSError as e:  # read-only file system, no permission, a file in the way
            raise ReproError(f"cannot create the run directory {p} ({e.strerror}): set runs_dir=DIR to a "
                             f"writable folder") from e
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
# Metrics: local JSONL, handed on to the wandb mirror (repro.wandb_mirror)


class MetricsLog:
    """Appends records to metrics.jsonl and hands each to `mirror` (repro.wandb_mirror.Live, or None)."""

    def __init__(self, run_dir: Path, resume_step: int | None, mirror=None):
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            # Drop records logged after the checkpoint: the resumed run logs them again.
            kept = [r for r in read_jsonl(self.path) if r["step"] <= resume_step]
            atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(self.path, "a")  # noqa: SIM115 - held for the run's lifetime
        self.mirror = mirror

    def log(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self.mirror is not None:
            self.mirror.log(record)

    def close(self, summary: dict | None = None, failed: bool = False) -> None:
        """End the log; `failed`: the run stopped before its end (the mirror marks it so). Idempotent."""
        if self._file.closed:
            return
        self._file.close()
        if self.mirror is not None:
            # a failed start may have removed its directory already (repro.train.run)
            self.mirror.close(summary, read_jsonl(self.path) if self.path.exists() else [], failed)


# ----------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(run_dir: Path, state: dict) -> None:
    _write_via_temporary(run_dir / "ckpt.pt", lambda tmp: torch.save(state, tmp))


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
