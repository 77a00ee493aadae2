"""Which run directory a start uses, and whether a checkpoint found there belongs to this run.

A checkpoint carries its run's identity (the config hash, seed included) and its data's identity
(source, image counts, a checksum of the images); a resume refuses either mismatch with one line,
instead of continuing someone else's network or new data under the old run's name. A run directory
is held by a lock file naming the owner's pid and host, so two starts never write one run.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

from repro import records
from repro.config import Config
from repro.errors import ReproError

log = logging.getLogger("repro.resume")

CHECKPOINT_KEYS = ("model", "optimizer", "data", "rng", "step", "wall", "wandb_id")
DATA_IDENTITY = ("dataset", "source", "n_train", "n_test", "image_shape", "checksum")
LOCK = "lock.json"


# ----------------------------------------------------------------------------------------------
# Identity


def run_identity(cfg: Config) -> dict:
    """What a checkpoint records about the run that wrote it."""
    return {"config_hash": records.config_hash(cfg), "run": records.run_name(cfg)}


def data_identity(describe: dict) -> dict:
    """The part of a dataset's description that must not change under a run: source, counts, checksum."""
    return {k: describe[k] for k in DATA_IDENTITY if k in describe}


_NEW_RUN = "move it away, or pass resume=never to start a new run beside it"


def check_checkpoint(ckpt, path: Path, cfg: Config, data: dict, fix: str = _NEW_RUN) -> None:
    """Refuse (ReproError) a checkpoint that is not one, is another run's, or saw other data."""
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ReproError(f"{path} is not a repro.train checkpoint (it lacks {', '.join(missing)}): {fix}")
    mine = run_identity(cfg)
    theirs = ckpt.get("identity")
    if theirs is None:
        log.warning("%s predates checkpoints that carry their run's identity: its identity is not checked", path)
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
    finished = (run_dir / "summary.json").exists()
    if ckpt is None:
        why = "see its summary.json" if finished else "it stopped before its first checkpoint"
        raise ReproError(f"{run_dir} has no ckpt.pt ({why}): resume it with resume=auto, or leave it out")
    if not Path(cfg.data.root).is_absolute():  # runs before issue 11 recorded data.root as given
        log.warning("%s records a relative data.root=%s: it is looked up from %s", run_dir, cfg.data.root, Path.cwd())
    check_checkpoint(ckpt, run_dir / "ckpt.pt", cfg, data.describe(),
                     fix="evaluate the run with the data and files it was trained with")
    if not finished:
        log.warning("%s is unfinished (checkpoint at step %d of %d): scored as it stands", run_dir, ckpt["step"],
                    cfg.train.steps)


# ----------------------------------------------------------------------------------------------
# The run directory


def note_orphans(cfg: Config) -> None:
    """Say which earlier directories of this config hold nothing to resume (stopped before a checkpoint)."""
    for d in records.existing_run_dirs(cfg):
        if not any((d / f).exists() for f in ("ckpt.pt", "summary.json")) and not _held(d / LOCK):
            log.warning("%s was left by a run stopped before its first checkpoint: nothing there can be resumed; "
                        "delete it (train.checkpoint_every=N saves every N steps)", d)


def _owner(lock: Path) -> tuple[int, str]:
    try:
        owner = json.loads(lock.read_text())
        return int(owner["pid"]), str(owner["host"])
    except (OSError, ValueError, KeyError, TypeError):  # gone, or a write torn by a crash: nobody holds it
        return -1, socket.gethostname()


def _held(lock: Path) -> bool:
    """Whether a live process may hold `lock` (one on another host may be, for all we can tell)."""
    if not lock.exists():
        return False
    pid, host = _owner(lock)
    if host != socket.gethostname():
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def acquire(run_dir: Path) -> Path:
    """Take `run_dir`'s lock file, or say who holds it. A lock left by a dead process on this host is
    reported and taken over; one from another host is refused (we cannot tell whether it is alive)."""
    lock, host = run_dir / LOCK, socket.gethostname()
    mine = run_dir / f".{LOCK}.{os.getpid()}.tmp"
    try:
        mine.write_text(json.dumps({"pid": os.getpid(), "host": host}))
        for _ in range(2):
            try:
                os.link(mine, lock)  # atomic: the lock appears whole, with its owner, or not at all
                return lock
            except FileExistsError:
                pid, owner_host = _owner(lock)
                if owner_host != host:
                    raise ReproError(f"{run_dir} is locked by pid {pid} on {owner_host}: wait for that run to end, "
                                     f"or if it is gone delete {lock}; resume=never starts a new run beside it") from None
                if _held(lock):
                    raise ReproError(f"{run_dir} is in use by pid {pid} on this host: wait for it to end (if pid {pid} "
                                     f"is no repro run, delete {lock}), or pass resume=never to start a new run "
                                     f"beside it") from None
                log.warning("%s: stale lock of pid %d (no longer running) removed", run_dir, pid)
                lock.unlink(missing_ok=True)
    except OSError as e:
        raise ReproError(f"cannot write {lock} ({e.strerror}): make {run_dir} writable") from e
    finally:
        mine.unlink(missing_ok=True)
    raise ReproError(f"could not lock {run_dir}: another start took it at the same moment; try again")


def release(lock: Path | None) -> None:
    if lock is not None:
        lock.unlink(missing_ok=True)


def remove_stale_temporaries(run_dir: Path) -> None:
    """Half-written files (`.ckpt.*.tmp`, ~100 MB at paper scale) left by a kill; safe under the lock."""
    for tmp in run_dir.glob(".*.tmp"):
        log.info("removing %s, left half-written by an interrupted run", tmp)
        tmp.unlink(missing_ok=True)
