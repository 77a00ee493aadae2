"""Figures 2-3 recipes and runner: every variant runs, BN-x5 carries the seven §4.2.1 changes,
a 2-process gloo run writes one run, resume is exact, and the report builds."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from repro.data.loaders import InMemoryStream
from repro.report import read_long
from repro.report.pipeline import build
from repro.runs import files, rundir
from repro.train import run
from tests.conftest import DATA, ROOT, compose_config, make_image_folder, needs_mnist, run_killed_after

VARIANTS = ["inception", "bn_baseline", "bn_x5", "bn_x30", "bn_x5_sigmoid", "inception_sigmoid"]


@needs_mnist
@pytest.mark.parametrize("experiment", VARIANTS)
def test_every_variant_runs_two_steps_at_smoke(experiment, smoke):
    summary = run(smoke(f"experiment={experiment}"))
    assert summary["status"] == "complete" and summary["steps"] == 2


def test_bn_x5_carries_all_seven_changes():
    """§4.2.1: x5 rate, no dropout, L2 / 5, 6x faster decay, no LRN, thorough shuffling, lighter distortion."""
    base, x5 = (compose_config([f"experiment={e}", "scale=cpu"]) for e in ("inception", "bn_x5"))
    assert x5.model.norm == "bn" and base.model.norm == "none"
    assert x5.optim.lr == base.optim.lr == 0.0015 and x5.optim.lr_mult == 5 and base.optim.lr_mult == 1  # 1
    assert base.model.drop_rate == 0.4 and x5.model.drop_rate == 0.0  # 2
    assert x5.optim.weight_decay * x5.optim.weight_decay_mult == pytest.approx(base.optim.weight_decay / 5)  # 3
    assert x5.optim.decay_speedup == 6 and base.optim.decay_speedup == 1  # 4
    assert base.model.lrn is True and x5.model.lrn is False  # 5
    assert base.data.shuffle == "fixed_batches" and x5.data.shuffle == "full"  # 6
    assert 0 < x5.data.distort < base.data.distort  # 7
    x30 = compose_config(["experiment=bn_x30", "scale=cpu"])
    assert x30.optim.lr_mult == 30 and (x30.model, x30.data) == (x5.model, x5.data)
    bn_base = compose_config(["experiment=bn_baseline", "scale=cpu"])  # §4.2.2: nothing else changes
    assert (bn_base.model.drop_rate, bn_base.model.lrn, bn_base.optim) == (0.4, True, base.optim)


def test_decay_scales_with_steps_at_every_scale():
    for scale in ("cpu", "gpu", "paper"):
        cfg = compose_config(["experiment=inception", f"scale={scale}"])
        assert cfg.optim.decay_steps == pytest.approx(cfg.train.steps / 30, rel=0.01)


def test_fixed_batches_keep_their_members():
    """Change 6 off: the same examples share a mini-batch every pass; on: they do not."""
    import torch

    def batches(shuffle):
        cfg = compose_config(["experiment=inception", "scale=smoke", f"data.shuffle={shuffle}"]).data
        cfg.augment, cfg.distort = False, 0.0
        s = InMemoryStream(torch.arange(16.0).view(16, 1, 1, 1), torch.arange(16), 4, 0, cfg)
        return [frozenset(s.next()[1].tolist()) for _ in range(8)]

    fixed, full = batches("fixed_batches"), batches("full")
    assert set(fixed[:4]) == set(fixed[4:])
    assert set(full[:4]) != set(full[4:])


@needs_mnist
def test_resume_equals_uninterrupted_with_dropout(tmp_path):
    """bn_baseline keeps dropout 40%: the RNG and data position must both be restored."""
    ov = ["experiment=bn_baseline", "scale=smoke", "train.steps=6", "train.checkpoint_every=2",
          "train.eval_every=3", "resume=auto", f"data.root={DATA}"]
    full = run(compose_config([*ov, f"runs_dir={tmp_path / 'a'}"]))
    cfg = compose_config([*ov, f"runs_dir={tmp_path / 'b'}"])
    run_killed_after(cfg, 5)
    resumed = run(cfg)

    def rows(s):
        return [{k: v for k, v in r.items() if k != "wall"} for r in files.read_jsonl(rundir.Path(s["run_dir"]) / "metrics.jsonl")]

    assert rows(resumed) == rows(full)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@needs_mnist
def test_two_process_gloo_run_writes_one_run(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "repro.train", "experiment=bn_x5", "scale=smoke", "train.steps=4", "data.limit_test=33", f"data.root={DATA}",
           f"runs_dir={tmp_path / 'runs'}", "logger.wandb.mode=offline", f"logger.wandb.dir={tmp_path / 'wandb'}"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    run_dirs = list((tmp_path / "runs").iterdir())
    assert len(run_dirs) == 1  # only rank 0 chose and wrote a run directory; the other rank wrote nothing
    summary = json.loads((run_dirs[0] / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["status"] == "complete"
    assert len(list((tmp_path / "wandb" / "wandb").glob("offline-run-*"))) == 1  # one wandb run per job
    # exact-once evaluation: 33 images over 2 ranks; the runner checks the count and would fail otherwise
    assert json.loads((run_dirs[0] / "env.json").read_text())["data"]["n_test"] == 33


@needs_mnist
def test_report_builds_from_recorded_runs(smoke, tmp_path):
    for v in VARIANTS:
        run(smoke(f"experiment={v}", "train.steps=4"))
    out = build("fig2", tmp_path / "runs", "smoke", tmp_path / "results", ROOT / "results" / "fig2" / "claims.yaml",
                overrides=("train.steps=4",))
    text = (out / "report.md").read_text()
    assert "Figure 3" in text and "BN-x30" in text and (out / "fig2.png").stat().st_size > 10_000
    # 4 steps cannot show a plateau: the speed-up claims are not testable, the sigmoid claims are judged
    assert text.count("| not testable at this scale |") == 4 and "| inception_plateaued |" in text
    long = read_long(out / "runs.csv")
    assert {r[0] for r in long.rows} == {p.name for p in (tmp_path / "runs").iterdir()}
    assert sorted({r[2] for r in long.rows}) == [0, 2, 4]  # every evaluation of every run


def test_image_folder_path_runs(tmp_path):
    """ImageNet layout (train/ and val/ class folders) through ImageFolder with Inception-style
    crops and photometric distortion, a DataLoader stream and exact-once evaluation."""
    make_image_folder(tmp_path / "data")
    summary = run(compose_config(["experiment=bn_x5", "scale=smoke", "data.name=imagenet",
                                  f"data.root={tmp_path / 'data'}", "data.image_size=32", "data.workers=0",
                                  "train.steps=3", "train.batch_size=4", f"runs_dir={tmp_path / 'runs'}"]))
    assert summary["status"] == "complete" and summary["data"]["n_train"] == 24 and summary["data"]["n_test"] == 10


def test_missing_image_folder_is_a_clear_error(tmp_path):
    from repro.errors import DataError

    with pytest.raises(DataError, match="data.root"):
        run(compose_config(["experiment=bn_x5", "scale=smoke", "data.name=imagenet", f"data.root={tmp_path}",
                            f"runs_dir={tmp_path / 'runs'}"]))


def test_image_folder_splits_with_different_classes_are_refused(tmp_path):
    from repro.errors import DataError

    root = make_image_folder(tmp_path / "data", train=2, val=1)
    (root / "val" / "dog" / "0.png").rename(root / "val" / "cat" / "1.png")
    (root / "val" / "dog").rmdir()  # val numbers "cat" 0 like train, but has no "dog"
    with pytest.raises(DataError, match="different class folders"):
        run(compose_config(["experiment=bn_x5", "scale=smoke", "data.name=imagenet", f"data.root={root}",
                            f"runs_dir={tmp_path / 'runs'}"]))
