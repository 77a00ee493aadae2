"""A run directory's lock, so two starts never write one run: `lock.json`, held with flock(2).

The kernel drops an flock when its process dies, however it dies, so a lock file left by a killed run
is free to take, and taking it is one atomic call: two starts that find the same stale file cannot both
succeed (the earlier unlink-and-relink let 17 of 200 racing pairs both in, issue 19). The file names its
holder's pid and host for the error message. A holder removes the file only while it still holds it,
and a start that locked a file some holder removed meanwhile tries the new one (the inode check).
Files of another host are refused as before: flock over a network filesystem may not reach that host.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from pathlib import Path

from repro.errors import ReproError

log = logging.getLogger("repro.resume")

LOCK = "lock.json"


class Lock:
    """A held lock: the path and the open descriptor that carries the flock."""

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd


def _owner(fd: int) -> tuple[int, str]:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        owner = json.loads(os.read(fd, 4096) or b"null")
        return int(owner["pid"]), str(owner["host"])
    except (ValueError, KeyError, TypeError):  # empty, or torn by a crash mid-write
        return -1, ""


def _alive(pid: int) -> bool:
    """A live process of this host other than us (one that predates flock locks holds the file only by name)."""
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _in_use(run_dir: Path, lock: Path, pid: int, host: str) -> ReproError:
    if host and host != socket.gethostname():
        return ReproError(f"{run_dir} is locked by pid {pid} on {host}: wait for that run to end, or if it is gone "
                          f"delete {lock}; resume=never starts a new run beside it")
    return ReproError(f"{run_dir} is in use by pid {pid} on this host: wait for it to end (if pid {pid} is no repro "
                      f"run, delete {lock}), or pass resume=never to start a new run beside it")


def acquire(run_dir: Path) -> Lock:
    """Take `run_dir`'s lock, or say who holds it (ReproError). A lock file left by a dead process on this
    host is taken over, with a warning; one naming another host is refused (we cannot tell whether it lives)."""
    path, host = Path(run_dir) / LOCK, socket.gethostname()
    try:
        for _ in range(100):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid, owner = _owner(fd)
                os.close(fd)
                raise _in_use(run_dir, path, pid, owner) from None
            try:
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if not current:  # its holder released (removed) it between our open and our flock
                os.close(fd)
                continue
            pid, owner = _owner(fd)
            if (owner and owner != host) or (owner == host and _alive(pid)):
                os.close(fd)
                raise _in_use(run_dir, path, pid, owner)
            if pid > 0:
                log.warning("%s: stale lock of pid %d (no longer running) taken over", run_dir, pid)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": host}).encode(), 0)
            return Lock(path, fd)
    except OSError as e:
        raise ReproError(f"cannot write {path} ({e.strerror}): make {run_dir} writable") from e
    raise ReproError(f"could not lock {run_dir}: other starts keep taking it; try again")


def release(lock: Lock | None) -> None:
    """Remove the lock file while still holding it, then let go. Idempotent."""
    if lock is None or lock.fd < 0:
        return
    Path(lock.path).unlink(missing_ok=True)
    os.close(lock.fd)
    lock.fd = -1


def held(path: Path) -> bool:
    """Whether a live process may hold the lock file `path` (one naming another host may, for all we can tell)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        pid, owner = _owner(fd)
        return bool(owner and owner != socket.gethostname()) or _alive(pid)
    finally:
        os.close(fd)
