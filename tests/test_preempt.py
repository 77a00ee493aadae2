"""Preemption (issue 19): SLURM and torchrun send SIGTERM (SLURM also a USR signal before the time limit).
A real run, sent the signal mid-way, stops at the next step boundary with a checkpoint, says `preempted at
step s`, exits 75 (repro.runs.preempt.EXIT_PREEMPTED) without a traceback, and the same command with
resume=auto finishes it bit-identically to an unbroken run; also for repro.stacked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from repro.runs import files
from repro.runs.preempt import EXIT_PREEMPTED, Preemption, hand_over
from repro.stacked import mlp as stacked
from repro.train import run
from tests.conftest import ROOT, compose_config

SMOKE = ("scale=smoke", "train.steps=600", "train.log_every=20", "train.eval_every=200", "train.probe_every=200",
         "resume=auto", "logger.progress=off")


def _signal_mid_run(cmd: list[str], runs_dir, sig: int, after_step: int = 100) -> subprocess.CompletedProcess:
    """Start `cmd`, send `sig` once a metrics record past `after_step` exists, wait for the exit."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while p.poll() is None and time.monotonic() < deadline:
            steps = [r["step"] for m in runs_dir.glob("*/metrics.jsonl") for r in files.read_jsonl(m)]
            if steps and max(steps) >= after_step:
                p.send_signal(sig)
                break
            time.sleep(0.05)
        out, err = p.communicate(timeout=240)
    finally:
        p.kill()
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def _metrics(run_dir) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall"} for r in files.read_jsonl(run_dir / "metrics.jsonl")]


def _summary(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_sigterm_checkpoints_says_preempted_and_resumes_bit_identically(tmp_path):
    runs = tmp_path / "cut"
    cmd = [sys.executable, "-m", "repro.train", "experiment=fig1_bn", *SMOKE, f"runs_dir={runs}"]
    cut = _signal_mid_run(cmd, runs, signal.SIGTERM)
    assert cut.returncode == EXIT_PREEMPTED and "Traceback" not in cut.stderr, cut.stderr[-2000:]
    (d,) = list(runs.glob("fig1_bn-*"))
    s = _summary(d)
    assert s["status"] == "preempted" and s["preempted_by"] == "SIGTERM" and 100 <= s["preempted_at"] < 600
    assert f"preempted at step {s['preempted_at']} by SIGTERM" in cut.stderr and not (d / "lock.json").exists()
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = _summary(d)
    assert resumed["status"] == "complete" and resumed["resumed_from"] == [s["preempted_at"]]
    run(compose_config(["experiment=fig1_bn", *SMOKE, f"runs_dir={tmp_path / 'full'}"]))
    assert _metrics(d) == _metrics(tmp_path / "full" / d.name)  # bit-identical on CPU


def test_stacked_stops_every_member_on_a_usr_signal_and_resumes_bit_identically(tmp_path):
    grid = ["experiment=fig1_baseline,fig1_bn", "seed=1,2", *SMOKE]
    runs = tmp_path / "cut"
    cut = _signal_mid_run([sys.executable, "-m", "repro.stacked", *grid, f"runs_dir={runs}"], runs, signal.SIGUSR1)
    assert cut.returncode == EXIT_PREEMPTED and "Traceback" not in cut.stderr, cut.stderr[-2000:]
    states = {_summary(d)["status"] for d in runs.iterdir()}
    steps = {_summary(d)["preempted_at"] for d in runs.iterdir()}
    assert states == {"preempted"} and len(steps) == 1 and "preempted at step" in cut.stderr
    stacked.run([*grid, f"runs_dir={runs}"])
    stacked.run([*grid, f"runs_dir={tmp_path / 'full'}"])
    for d in runs.iterdir():
        assert _summary(d)["status"] == "complete" and _summary(d)["resumed_from"] == list(steps)
        assert _metrics(d) == _metrics(tmp_path / "full" / d.name)


def test_the_launchers_handler_gets_the_signal_after_the_run_saved_itself():
    """Under submitit the signal's handler checkpoints the job and requeues it (conf/hydra/launcher/slurm.yaml
    sets max_num_timeout): repro's handler only records the signal, and hands it on after the checkpoint."""
    got = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: got.append(signum))
    try:
        with Preemption(["SIGUSR2", "TERM"]) as p:
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.01)
            assert p.name == "SIGUSR2" and got == []  # recorded only, while the run trains
        with pytest.raises(SystemExit) as exit_:
            hand_over("SIGUSR2")
        assert got == [signal.SIGUSR2] and exit_.value.code == EXIT_PREEMPTED
    finally:
        signal.signal(signal.SIGUSR2, previous)
