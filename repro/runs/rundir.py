"""A run directory's whole life: its name (the identity hash), its claim and lock, its header, its
checkpoints, and whether a checkpoint found there may be resumed.

Layout of `runs/<experiment>-<scale>-s<seed>-<hash>/`:
  config.yaml   the resolved config          env.json      versions, device, git commit, data source
  metrics.jsonl one JSON record per logged step  summary.json  final numbers and status
  ckpt.pt       the last checkpoint (model, optimizer, step, RNG states, data position)
  lock.json     held (flock) while a process writes the run; names its pid and host (repro.runs.lock)
A checkpoint carries its run's identity (the config hash, seed included) and its data's identity
(source, image counts, a checksum of the images); a resume refuses either mismatch with one line,
instead of continuing someone else's network or new data under the old run's name. A run directory
is held by a lock (repro.runs.lock), so two starts never write one run. Local
files are the record (written atomically by repro.runs.files); wandb mirrors them.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import logging
import pickle
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from repro.config import Config
from repro.errors import ReproError
from repro.runs import dist
from repro.runs.files import atomic_write, write_json, write_via_temporary
from repro.runs.lock import LOCK, Lock, acquire, held, release  # noqa: F401 (callers lock through this module)

log = logging.getLogger("repro.resume")

# Keys that do not change what a run computes, so they stay out of its identity hash.
_NOT_IDENTITY = ("resume", "runs_dir", "logger")
# The divergence rule and the preemption signals say when a run stops, not what it computes up to then.
# resume_from says where a run continues from, not what it computes (resumes are bit-identical).
_NOT_IDENTITY_TRAIN = ("device", "threads", "diverge_factor", "diverge_logs", "preempt_signals", "resume_from")
_NOT_IDENTITY_DATA = ("root", "debian_dir")  # where the files are, which differs between machines

# Keys that joined the schema after runs were recorded, with the value those runs ran with. A recorded
# config without such a key is read with that value (`recorded_config`), and the key stays out of the
# identity at that value or at None (a switch the model does not take), so every run recorded before it
# keeps its identity and its directory's name.
LATER_KEYS = {("model", "pools"): "symmetric", ("train", "eval_log"): 0, ("train", "init_from"): None,
              ("train", "resume_from"): None}

CHECKPOINT_KEYS = ("model", "optimizer", "data", "rng", "step", "wall", "wandb_id")
# The source is provenance, not identity: the same images read from Debian's package or a torchvision copy
# elsewhere are the same data (the checksum says so).
DATA_IDENTITY = ("dataset", "n_train", "n_test", "image_shape", "checksum")


# ----------------------------------------------------------------------------------------------
# Identity, name and directory


def _plain(v):
    """Choices (StrEnum) as the plain strings they are, for YAML, JSON and the identity hash."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v.value if isinstance(v, enum.Enum) else v


def config_dict(cfg: Config) -> dict:
    return _plain(dataclasses.asdict(cfg))


def _with_defaults(d: dict, defaults: dict) -> dict:
    """`d` with the keys it lacks taken from `defaults`: a run recorded before a key joined the schema
    ran with what is now that key's default."""
    return {k: _with_defaults(d[k], v) if isinstance(v, dict) and isinstance(d.get(k), dict) else d.get(k, v)
            for k, v in defaults.items()} | {k: v for k, v in d.items() if k not in defaults}


def recorded_config(d: dict) -> dict:
    """A recorded config (a run's config.yaml) with the keys that joined the schema later set to what
    its run ran with."""
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    for (group, key), value in LATER_KEYS.items():
        if isinstance(d.get(group), dict):
            d[group].setdefault(key, value)
    return d


def run_facts(world_size: int, data: dict) -> dict:
    """What a run was beyond its config, as far as it changes what it computes: the replicas it ran on
    (the global batch is batch_size x world_size) and what its data is (a digest, where the files are not
    the published dataset's: repro.data.mnist.CANONICAL). Each is left out where it is what every run
    recorded before issue 19 had (one process, canonical files), so those runs keep their identity."""
    facts = {}
    if world_size != 1:
        facts["world_size"] = world_size
    if data.get("canonical") is False:
        facts["data"] = f"not canonical, digest {data.get('digest') or data.get('checksum')}"
    return facts


def recorded_facts(env: dict) -> dict:
    """`run_facts` of a recorded run, from its env.json (a run recorded before issue 19 said only in its
    data source whether its MNIST files were the canonical ones)."""
    data = dict(env.get("data") or {})
    if "canonical" not in data and "not the canonical" in str(data.get("source", "")):
        data["canonical"] = False
    return run_facts(int(env.get("world_size") or 1), data)


def identity_dict(d: dict, with_seed: bool = False, facts: dict | None = None) -> dict:
    """The keys of a resolved config (a dict, e.g. a run's config.yaml) that decide what it computes:
    not where its files are; with the run's `facts` (run_facts) where there are any."""
    d = _with_defaults(recorded_config(d), config_dict(Config()))
    d = {k: v for k, v in d.items() if k not in _NOT_IDENTITY and (with_seed or k != "seed")}
    d["train"] = {k: v for k, v in d["train"].items() if k not in _NOT_IDENTITY_TRAIN}
    d["data"] = {k: v for k, v in d["data"].items() if k not in _NOT_IDENTITY_DATA}
    for (group, key), value in LATER_KEYS.items():
        if d[group].get(key) in (value, None):
            d[group].pop(key, None)
    if facts:
        d["facts"] = dict(facts)
    return d


def _hash(d: dict) -> str:
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


# Facts that name a run directory too. What the data is stays out of the name: a start on changed files finds
# the run and is refused with the reason (check_checkpoint), rather than silently starting beside it.
NAME_FACTS = ("world_size",)


def config_hash(cfg: Config, facts: dict | None = None) -> str:
    """Names the run directory: the identity with the seed (of the facts, the world size only)."""
    named = {k: v for k, v in (facts or {}).items() if k in NAME_FACTS}
    return _hash(identity_dict(config_dict(cfg), with_seed=True, facts=named))


def identity_hash(d: dict, facts: dict | None = None) -> str:
    """The run's identity: its resolved config without seed, run directory, logger keys and data
    paths, with its facts (run_facts). Runs of one recipe at one scale share it, whatever their seed;
    computable from any run's config.yaml and env.json."""
    return _hash(identity_dict(d, facts=facts))


def run_name(cfg: Config, facts: dict | None = None) -> str:
    return f"{cfg.experiment}-{cfg.scale.name}-s{cfg.seed}-{config_hash(cfg, facts)}"


def _dir_candidates(cfg: Config, facts: dict | None) -> list[Path]:
    base = Path(cfg.runs_dir) / run_name(cfg, facts)
    return [base] + [base.with_name(f"{base.name}.{i}") for i in range(2, 1000)]


def existing_run_dirs(cfg: Config, facts: dict | None = None) -> list[Path]:
    """The directories runs of this exact config (and facts) made, oldest name first."""
    return [p for p in _dir_candidates(cfg, facts) if p.exists()]


def finished(run_dir: Path) -> bool:
    """Whether the run ended (complete or diverged): a preempted run's summary.json says it stopped early."""
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("status") != "preempted"
    except (OSError, ValueError):
        return False


def find_resumable(cfg: Config, facts: dict | None = None) -> Path | None:
    """With resume=auto: the latest run of the identical config that left a checkpoint or finished
    (a later directory a run left before its first checkpoint has nothing to resume)."""
    if cfg.resume not in ("auto", "force"):
        return None
    done = [p for p in existing_run_dirs(cfg, facts) if (p / "summary.json").exists() or (p / "ckpt.pt").exists()]
    return done[-1] if done else None


def new_run_dir(cfg: Config, facts: dict | None = None) -> Path:
    """A fresh directory; an existing name gets a .2, .3, ... suffix so no run is ever overwritten."""
    for p in _dir_candidates(cfg, facts):
        try:
            p.mkdir(parents=True, exist_ok=False)
            return p
        except FileExistsError:
            continue
        except OSError as e:  # read-only file system, no permission, a file in the way
            raise ReproError(f"cannot create the run directory {p} ({e.strerror}): set runs_dir=DIR to a "
                             f"writable folder") from e
    raise ReproError(f"more than 999 runs named {run_name(cfg, facts)}: clean up {cfg.runs_dir}")


# ----------------------------------------------------------------------------------------------
# Claim: which directory a start uses, held by a lock


def claim(cfg: Config, facts: dict | None = None) -> tuple[Path | None, bool]:
    """Rank 0 finds the run to resume (if any) and tells the others: (dir or None, finished)."""
    found = None
    if dist.is_main():
        note_orphans(cfg, facts)
        found = find_resumable(cfg, facts)
    return dist.broadcast_object((found, bool(found and finished(found))))


def hold(run_dir: Path) -> Lock:
    """Lock a claimed run directory (`acquire`), then clear what a killed run left half-written in it."""
    lock = acquire(run_dir)
    remove_stale_temporaries(run_dir)
    return lock


def note_orphans(cfg: Config, facts: dict | None = None) -> None:
    """Say which earlier directories of this config hold nothing to resume (stopped before a checkpoint)."""
    for d in existing_run_dirs(cfg, facts):
        if not any((d / f).exists() for f in ("ckpt.pt", "summary.json")) and not held(d / LOCK):
            log.warning("%s was left by a run stopped before its first checkpoint: nothing there can be resumed; "
                        "delete it (train.checkpoint_every=N saves every N steps)", d)


def remove_stale_temporaries(run_dir: Path) -> None:
    """Half-written files (`.ckpt.*.tmp`, ~100 MB at paper scale) left by a kill; safe under the lock."""
    for tmp in run_dir.glob(".*.tmp"):
        log.info("removing %s, left half-written by an interrupted run", tmp)
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# Header: what the run records about its config and machine


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).resolve().parent).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def job_overrides() -> list[str] | None:
    """This job's own overrides under Hydra (in a `-m` sweep one job's, not the sweep's comma lists): what
    reruns it alone as `python -m repro.train OVERRIDES`; None outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None


def environment(device: torch.device, world_size: int = 1) -> dict:
    """What a run ran on and was started with: `argv` is the process's command (a sweep's whole `-m` line),
    `overrides` the job's own (job_overrides)."""
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
        "overrides": job_overrides(),
    }


def write_run_header(run_dir: Path, cfg: Config, env: dict) -> None:
    """config.yaml and env.json; `env` holds world_size and data, whence the run's facts (recorded_facts)."""
    atomic_write(run_dir / "config.yaml", yaml.safe_dump(config_dict(cfg), sort_keys=False))
    write_json(run_dir / "env.json", env | {"identity": identity_hash(config_dict(cfg), recorded_facts(env))})


# ----------------------------------------------------------------------------------------------
# Checkpoints, and whether one belongs to this run


def save_checkpoint(run_dir: Path, state: dict) -> None:
    write_via_temporary(run_dir / "ckpt.pt", lambda tmp: torch.save(state, tmp))


WEIGHTS = "model.safetensors"


def export_weights(run_dir: Path, model_state: dict, create_model: dict) -> dict:
    """The final network as timm loads it: `timm.create_model(**create_model, checkpoint_path=<file>)`
    (or pretrained_cfg_overlay=dict(file=<file>)); returned for summary.json."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in model_state.items()}
    write_via_temporary(run_dir / WEIGHTS, lambda tmp: save_file(tensors, tmp))
    return {"file": str(run_dir / WEIGHTS), "create_model": create_model}


def load_checkpoint(run_dir: Path) -> dict | None:
    """The run directory's ckpt.pt, or None where it has none."""
    path = run_dir / "ckpt.pt"
    return load_checkpoint_file(path) if path.exists() else None


def load_checkpoint_file(path: Path) -> dict:
    """A checkpoint file, under torch.load(weights_only=True); a damaged one is a one-line ReproError."""
    try:
        try:  # tensors, lists and numbers only: torch.load's default, as any user loads it (issue 19)
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # written before issue 19: NumPy's RNG state was a pickled array
            with torch.serialization.safe_globals(_OLD_NUMPY_GLOBALS):
                return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a damaged zip/pickle
        raise ReproError(
            f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): delete it to "
            f"restart that run, or pass resume=never to start a new run beside it") from e


# What a checkpoint written before issue 19 needs beyond tensors: NumPy's RNG state, a pickled array.
_OLD_NUMPY_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def run_identity(cfg: Config, facts: dict | None = None) -> dict:
    """What a checkpoint records about the run that wrote it."""
    return {"config_hash": config_hash(cfg, facts), "run": run_name(cfg, facts)}


def data_identity(describe: dict) -> dict:
    """The part of a dataset's description that must not change under a run: source, counts, checksum."""
    return {k: describe[k] for k in DATA_IDENTITY if k in describe}


_NEW_RUN = "move it away, or pass resume=never to start a new run beside it"


def check_checkpoint(ckpt, path: Path, cfg: Config, data: dict, fix: str = _NEW_RUN, world_size: int = 1) -> None:
    """Refuse (ReproError) a checkpoint that is not one, is another run's, or saw other data."""
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ReproError(f"{path} is not a repro.train checkpoint (it lacks {', '.join(missing)}): {fix}")
    mine = run_identity(cfg, run_facts(world_size, data))
    theirs = ckpt.get("identity")
    if theirs is None and (cfg.resume == "force" or fix != _NEW_RUN):  # asked for, or only read (evaluate)
        log.warning("%s predates checkpoints that carry their run's identity: its identity is not checked", path)
    elif theirs is None:
        raise ReproError(f"{path} carries no run identity (written before checkpoints did), so nothing shows it is "
                         f"this run's: pass resume=force to continue it unchecked, or resume=never to start a new "
                         f"run beside it")
    elif theirs["config_hash"] != mine["config_hash"]:
        raise ReproError(f"{path} belongs to run {theirs['run']}, not to this run {mine['run']} (another seed or "
                         f"config): {fix}")
    then, now = data_identity(ckpt.get("data_identity") or {}), data_identity(data)
    changed = [k for k in then if k in now and then[k] != now[k]]
    if changed:
        k = changed[0]
        fix = "restore the run's data, or pass resume=never to start over on this data" if fix == _NEW_RUN else fix
        raise ReproError(f"{path} was trained on other data than this start finds ({k}: {then[k]!r} then, "
                         f"{now[k]!r} now): {fix}")


def check_evaluable(run_dir: Path, ckpt, cfg: Config, data) -> None:
    """repro.evaluate: refuse a run without a checkpoint, or whose checkpoint is not its own or saw other
    data than `data` (its config's data, loaded now); warn that an unfinished run is scored as it stands."""
    ended = finished(run_dir)
    if ckpt is None:
        why = "see its summary.json" if ended else "it stopped before its first checkpoint"
        raise ReproError(f"{run_dir} has no ckpt.pt ({why}): resume it with resume=auto, or leave it out")
    if not Path(cfg.data.root).is_absolute():  # runs before issue 11 recorded data.root as given
        log.warning("%s records a relative data.root=%s: it is looked up from %s", run_dir, cfg.data.root, Path.cwd())
    env = json.loads((run_dir / "env.json").read_text()) if (run_dir / "env.json").exists() else {}
    check_checkpoint(ckpt, run_dir / "ckpt.pt", cfg, data.describe(),
                     fix="evaluate the run with the data and files it was trained with",
                     world_size=int(env.get("world_size") or 1))
    if not ended:
        log.warning("%s is unfinished (checkpoint at step %d of %d): scored as it stands", run_dir, ckpt["step"],
                    cfg.train.steps)
