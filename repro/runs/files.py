"""A run's files written so that a crash never leaves half of one: atomic writes, JSON, and the
metrics log (`metrics.jsonl`, one JSON record per logged step, handed on to the wandb mirror).

The run directory that holds them, and its life, is repro.runs.rundir; wandb mirrors these files
(repro.runs.wandb_mirror) and is never the only copy.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from repro.errors import ReproError

# ----------------------------------------------------------------------------------------------
# Atomic writes: a crash leaves the old file or the new one, never half of one.


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_via_temporary(path: Path, write) -> None:
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

    write_via_temporary(Path(path), write)


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
# Metrics: local JSONL, handed on to the wandb mirror (repro.runs.wandb_mirror)


class MetricsLog:
    """Appends records to metrics.jsonl and hands each to `mirror` (repro.runs.wandb_mirror.Live, or None)."""

    def __init__(self, run_dir: Path, resume_step: int | None, mirror=None):
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            # Drop records logged after the checkpoint: the resumed run logs them again.
            kept = [r for r in read_jsonl(self.path) if r["step"] <= resume_step]
            atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(self.path, "a")  # noqa: SIM115 - held for the run's lifetime
        self.mirror = mirror

    def log(self, record: dict) -> None:
        try:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        except OSError as e:  # a full disk: one line; the checkpoint before it is the resume point
            raise ReproError(f"could not append to {self.path} at step {record['step']} ({e.strerror}): free space, "
                             f"then rerun the same command with resume=auto to continue from the last checkpoint") from e
        if self.mirror is not None:
            self.mirror.log(record)

    def close(self, summary: dict | None = None, failed: bool = False) -> None:
        """End the log; `failed`: the run stopped before its end (the mirror marks it so). Idempotent."""
        if self._file.closed:
            return
        try:
            self._file.close()
        except OSError:  # the flush of a full disk: said by log() already; the rest of the way out must run
            pass
        if self.mirror is not None:
            # a failed start may have removed its directory already (repro.train.run)
            self.mirror.close(summary, read_jsonl(self.path) if self.path.exists() else [], failed)
