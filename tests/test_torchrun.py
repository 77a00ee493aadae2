"""Issue 19: a two-process gloo run under torchrun stopped by Ctrl-C, then one of its ranks killed: each is one
line from rank 0 naming the checkpoint to continue from (no rank's traceback, no wait for the group's timeout),
the lock released, and the second start resumes the first's checkpoint."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(runs: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "repro.train", "experiment=fig1_bn", "scale=smoke", "train.steps=1000000", "train.log_every=20",
           "train.eval_every=100000", "train.probe_every=0", "train.checkpoint_every=40", "resume=auto",
           f"runs_dir={runs}"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})


def _wait_for_checkpoint(runs: Path, proc: subprocess.Popen, after: float) -> Path:
    for _ in range(600):
        found = [p for p in runs.glob("*/ckpt.pt") if p.stat().st_mtime > after]
        if found:
            return found[0].parent
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.25)
    raise AssertionError("no checkpoint within 150 s")


def _rank(proc: subprocess.Popen, rank: int) -> int:
    """The pid of torchrun's worker of this rank."""
    for pid in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split():
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in env:
            return int(pid)
    raise AssertionError(f"no rank {rank} under torchrun")


def _error_line(err: str, *needles: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "[rank" not in err and "Connection reset" not in err.replace(errors[0], ""), err[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.mark.slow
def test_ctrl_c_and_a_dead_rank_under_torchrun_are_one_line_each(tmp_path):
    runs = tmp_path / "runs"
    proc = _start(runs)
    run_dir = _wait_for_checkpoint(runs, proc, 0)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals torchrun and every rank
    t0 = time.monotonic()
    out, err = proc.communicate(timeout=120)
    assert time.monotonic() - t0 < 25, err[-2000:]  # no wait for a barrier that cannot complete
    _error_line(err, "interrupted at step", f"{run_dir / 'ckpt.pt'} holds step", "resume=auto")
    assert out.count("test images") == 1  # the data line once, not once per rank
    assert "broadcast_buffers" not in err and not (run_dir / "lock.json").exists()

    t1 = time.time()
    proc = _start(runs)  # resumes, then loses rank 1
    _wait_for_checkpoint(runs, proc, t1)
    os.kill(_rank(proc, 1), signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and f"resuming {run_dir}" in out
    _error_line(err, "rank 0 lost the other ranks at step", "Connection", f"{run_dir / 'ckpt.pt'} holds step",
                "resume=auto")
    assert not (run_dir / "lock.json").exists() and (run_dir / "ckpt.pt").exists()
