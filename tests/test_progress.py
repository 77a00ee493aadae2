"""Progress a person can follow anywhere: lines without a terminal, a bar only for a single run on one,
the last evaluation's accuracy between evaluations, and each run's train.log."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from repro.runs import progress
from repro.train import run
from tests.conftest import ROOT, run_killed_after

LINE = re.compile(r"^(\S+): step (\d+)/(\d+) \(\d+%\), (?:[\d.]+|-) steps/s, ETA \S+")


def test_smoke_run_to_a_file_shows_progress_lines_and_writes_train_log(tmp_path):
    out_file = tmp_path / "out.txt"
    with open(out_file, "w") as f:  # stdout and stderr to a file, as nohup, SLURM or CI do
        rc = subprocess.run([sys.executable, "-m", "repro.train", "experiment=fig1_bn", "scale=smoke",
                             "train.steps=4", "train.log_every=1", "train.eval_every=2", "train.probe_every=0",
                             f"runs_dir={tmp_path / 'runs'}"], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                            timeout=300).returncode
    text = out_file.read_text()
    assert rc == 0, text[-2000:]
    lines = [m for m in map(LINE.match, text.splitlines()) if m]
    assert [int(m[2]) for m in lines] == [0, 1, 2, 3, 4]  # smoke: a line at every logged step
    assert "nan" not in text and "\r" not in text  # no bar redraws, no accuracy before an evaluation
    assert "loss " in text.splitlines()[-2] and "test acc" in text.splitlines()[-2]
    assert sum("train / " in line for line in text.splitlines()) == 1  # one data-source line
    (run_dir,) = (tmp_path / "runs").glob("fig1_bn-smoke-s1-*")
    log = (run_dir / "train.log").read_text()
    for line in text.splitlines():  # train.log holds what the console showed, with times
        assert line in log


def test_lines_show_the_last_evaluation_between_evaluations(tmp_path):
    run_log = progress.RunLog()
    try:
        run_log.open(tmp_path)
        p = progress.Progress("r", 10, 0, "auto", 0.0, run_log)
        assert p.mode == "lines"  # pytest's captured stderr is no terminal
        p.update({"step": 0, "test_acc": 0.25})
        p.update({"step": 5, "loss": 1.5})
        p.update({"step": 10, "loss": 1.25, "test_acc": 0.5})
    finally:
        run_log.close()
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert len(lines) == 3 and "nan" not in "".join(lines)
    assert "r: step 5/10 (50%)" in lines[1] and lines[1].endswith("loss 1.5000, test acc 0.2500 (step 0)")
    assert lines[2].endswith("loss 1.2500, test acc 0.5000 (step 10)")


def test_a_bar_only_for_a_single_run_on_a_terminal(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert progress.console_mode("auto") == "bar"
    monkeypatch.setattr(progress, "_in_sweep", lambda: True)  # joblib workers share one terminal
    assert progress.console_mode("auto") == "lines"
    assert progress.console_mode("on") == "bar" and progress.console_mode("off") == "off"


def test_an_interrupted_run_leaves_its_error_in_train_log(smoke):
    cfg = smoke("experiment=fig1_bn", "train.steps=50", "train.checkpoint_every=10", "resume=auto")
    run_killed_after(cfg, 25)
    (run_dir,) = (p.parent for p in Path(cfg.runs_dir).glob("*/ckpt.pt"))
    log = (run_dir / "train.log").read_text()
    assert "error: interrupted at step 25" in log and "holds step 20" in log
    assert run(cfg)["status"] == "complete"
    assert log in (run_dir / "train.log").read_text()  # the resumed session appends


@pytest.mark.parametrize("every", [0.0, 3600.0])
def test_cadence_in_seconds_keeps_first_and_last_step(tmp_path, every):
    run_log = progress.RunLog()
    try:
        run_log.open(tmp_path)
        p = progress.Progress("r", 4, 0, "off", every, run_log)
        for step in range(5):
            p.update({"step": step, "loss": 1.0})
    finally:
        run_log.close()
    steps = [int(LINE.match(line.split(" ", 2)[2])[2]) for line in (tmp_path / "train.log").read_text().splitlines()]
    assert steps == ([0, 1, 2, 3, 4] if every == 0 else [0, 4])
