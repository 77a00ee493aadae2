"""The runner end to end at smoke scale: learning, run files, resume, bad input, the report."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from repro.errors import ReproError
from repro.optim import lr_at
from repro.runs import files, rundir
from repro.train import run
from tests.conftest import ROOT, compose_config, make_image_folder, run_killed_after


def test_smoke_run_learns_and_writes_its_files(smoke):
    summary = run(smoke("experiment=fig1_bn"))
    assert summary["status"] == "complete" and summary["steps"] == 300
    assert summary["final_test_acc"] > 0.6  # chance is 0.1
    d = rundir.Path(summary["run_dir"])
    assert d.name.startswith("fig1_bn-smoke-s1-")
    assert yaml.safe_load((d / "config.yaml").read_text())["model"]["norm"] == "bn"
    env = json.loads((d / "env.json").read_text())
    assert env["torch"] and env["data"]["n_train"] == 1000 and env["data"]["source"]
    rows = files.read_jsonl(d / "metrics.jsonl")
    assert [r["step"] for r in rows if "test_acc" in r] == [0, 100, 200, 300]
    probe = rows[-1]["probe"]
    assert len(probe["p50"]) == 8 and all(a <= b <= c for a, b, c in zip(probe["p15"], probe["p50"], probe["p85"]))
    assert json.loads((d / "summary.json").read_text()) == summary


def test_baseline_learns_too(smoke):
    assert run(smoke("experiment=fig1_baseline"))["final_test_acc"] > 0.3


def test_runs_never_overwrite_each_other(smoke):
    a = run(smoke("experiment=fig1_bn", "train.steps=50", "resume=never"))
    b = run(smoke("experiment=fig1_bn", "train.steps=50", "resume=never"))
    assert a["run_dir"] != b["run_dir"] and b["run_dir"].endswith(".2")
    # resume=auto finds the finished run and does not train again
    c = run(smoke("experiment=fig1_bn", "train.steps=50", "resume=auto"))
    assert c["run_dir"] == b["run_dir"]


def test_interrupted_run_resumes_to_the_same_metrics(smoke, tmp_path):
    """A run killed after step 150 resumes from its step-100 checkpoint; metrics equal an unbroken run."""
    overrides = ("experiment=fig1_bn", "train.checkpoint_every=100", "train.log_every=50", "resume=auto")
    full = run(compose_config(["scale=smoke", f"runs_dir={tmp_path / 'a'}", *overrides]))

    cfg = compose_config(["scale=smoke", f"runs_dir={tmp_path / 'b'}", *overrides])
    run_killed_after(cfg, 150)
    resumed = run(cfg)
    assert resumed["run_dir"].startswith(str(tmp_path / "b"))

    assert _metrics(resumed) == _metrics(full)  # bit-identical on CPU


def _metrics(summary: dict) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall"}
            for r in files.read_jsonl(rundir.Path(summary["run_dir"]) / "metrics.jsonl")]


@pytest.mark.parametrize("workers", [0, 2])
def test_folder_run_resumes_bit_identically(tmp_path, workers):
    """ImageFolder runs draw each sample's augmentation from (seed, epoch, index): a run killed in its
    second pass resumes from its checkpoint to the metrics of an unbroken run, whatever the workers."""
    folder = make_image_folder(tmp_path / "imgs", train=12, val=5)  # 24 images: 3 batches of 8 a pass
    overrides = ["scale=smoke", "experiment=bn_x30", "data.name=imagenet", f"data.root={folder}",
                 "data.image_size=32", f"data.workers={workers}", "train.steps=6", "train.eval_every=3",
                 "train.checkpoint_every=4", "resume=auto"]
    full = run(compose_config([*overrides, f"runs_dir={tmp_path / 'a'}"]))
    cfg = compose_config([*overrides, f"runs_dir={tmp_path / 'b'}"])
    run_killed_after(cfg, 5)
    resumed = run(cfg)
    assert len(_metrics(full)) == 7 and _metrics(resumed) == _metrics(full)
    assert full["resumed_from"] == [] and resumed["resumed_from"] == [4]


def test_nan_loss_is_recorded_as_divergence(smoke):
    summary = run(smoke("experiment=fig1_baseline", "model.act=relu", "optim.lr=1e6", "model.init_std=1.0"))
    assert summary["status"] == "diverged" and 0 < summary["diverged_at"] <= 300
    saved = json.loads((rundir.Path(summary["run_dir"]) / "summary.json").read_text())
    assert saved["status"] == "diverged" and "NaN/inf" in saved["diverged_why"]


def test_an_exploding_finite_loss_is_recorded_as_divergence(smoke):
    """Issue 19: lr=1000 never overflows (loss ~1e4, accuracy near chance) yet ended "complete". The rule:
    the logged loss above train.diverge_factor x the first step's for train.diverge_logs consecutive logs."""
    args = ("experiment=fig1_baseline", "optim.lr=1000", "train.log_every=10")
    summary = run(smoke(*args))
    assert summary["status"] == "diverged" and summary["diverged_at"] % 10 == 0 and summary["final_test_acc"] is None
    assert "above 10 x its first-step value" in summary["diverged_why"]
    losses = [r["loss"] for r in files.read_jsonl(rundir.Path(summary["run_dir"]) / "metrics.jsonl") if "loss" in r]
    assert min(losses[-2:]) > 10 * 2.0  # the two logged windows before the third that stopped it
    # factor 0: NaN/inf only, as before issue 19: the same run goes to its end
    assert run(smoke(*args, "train.diverge_factor=0", "resume=never"))["status"] == "complete"


def _cli(*args, tmp_path):
    return subprocess.run([sys.executable, "-m", "repro.train", "scale=smoke", f"runs_dir={tmp_path}", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_cli_nan_is_one_line_and_nonzero(tmp_path):
    out = _cli("experiment=fig1_baseline", "model.act=relu", "optim.lr=1e6", "model.init_std=1.0", tmp_path=tmp_path)
    assert out.returncode == 3
    assert "diverged" in out.stderr and "lower optim.lr" in out.stderr and "Traceback" not in out.stderr


def test_cli_missing_forced_dataset_is_one_clear_error(tmp_path):
    out = _cli("data=fashion_mnist", "data.source=debian", f"data.debian_dir={tmp_path / 'nope'}",
               tmp_path=tmp_path / "runs")
    assert out.returncode == 2
    assert "error:" in out.stderr and "apt-get install dataset-fashion-mnist" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").glob("fig1*"))  # nothing half-made


def test_corrupt_checkpoint_names_the_fix(smoke):
    cfg = smoke("experiment=fig1_bn", "train.steps=50", "resume=auto")
    d = rundir.new_run_dir(cfg)
    (d / "ckpt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ReproError, match="corrupt.*resume=never"):
        run(cfg)


def test_lr_schedule_is_a_pure_function_of_step(smoke):
    o = smoke("optim.schedule=exponential", "optim.decay_rate=0.5", "optim.decay_steps=100", "optim.lr=1.0").optim
    assert lr_at(0, o) == 1.0 and lr_at(100, o) == pytest.approx(0.5) and lr_at(200, o) == pytest.approx(0.25)
    o.decay_speedup, o.lr_mult = 6.0, 5.0  # §4.2.1: x5 rate, 6x faster decay
    assert lr_at(100, o) == pytest.approx(5.0 * 0.5**6)


def test_wandb_offline_mirrors_the_metrics(smoke, tmp_path):
    cfg = smoke("experiment=fig1_bn", "train.steps=100", "logger.wandb.mode=offline",
                f"logger.wandb.dir={tmp_path / 'wandb'}")
    summary = run(cfg)
    offline = list((tmp_path / "wandb" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1  # one wandb run per job
    assert list(offline[0].glob("*.wandb"))
    ckpt = rundir.load_checkpoint(rundir.Path(summary["run_dir"]))
    assert ckpt["wandb_id"] and ckpt["wandb_id"] in offline[0].name  # resumable wandb run id


def test_dense_eval_steps_are_log_spaced_below_the_grid():
    from repro.config import TrainConfig
    from repro.runs.process import dense_eval_steps

    t = TrainConfig(steps=2400, batch_size=32, eval_every=240, eval_log=8)
    steps = sorted(dense_eval_steps(t))
    assert steps == [4, 6, 11, 18, 30, 50, 85, 143]  # 240/64 x (64 ** (1/8)) ** k, rounded
    ratios = np.array(steps[1:]) / np.array(steps[:-1])
    assert ratios.min() > 1.4 and ratios.max() < 1.9  # evenly spaced on a log axis, up to rounding
    assert dense_eval_steps(TrainConfig(steps=2400, batch_size=32, eval_every=240)) == frozenset()
