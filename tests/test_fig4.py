"""Figure 4: the ensemble members are BN-x30 with the §4.2.3 modifications, and the report builds."""

from __future__ import annotations

import json

import pytest

from repro.report import fig4, read_long
from repro.report.pipeline import build
from repro.train import run
from tests.conftest import ROOT, compose_config, needs_mnist


def test_members_are_bn_x30_with_the_paper_modifications():
    x30 = compose_config(["experiment=bn_x30", "scale=cpu"])
    mods = set()
    for i in range(1, 7):
        m = compose_config([f"experiment=ensemble_{i}", "scale=cpu"])
        assert m.optim == x30.optim and m.data == x30.data and m.model.name == "bn_inception"
        assert m.model.drop_rate in (0.05, 0.10)  # §4.2.3: dropout 5% or 10%
        if m.model.init_scale and m.model.init_scale > 1:
            mods.add("larger init")
        if m.model.per_activation_bn:
            mods.add("per-activation BN")
    assert mods == {"larger init", "per-activation BN"}


@needs_mnist
def test_report_builds_and_caches_evaluations(smoke, tmp_path):
    for e in fig4.MEMBERS + [fig4.SINGLE]:
        run(smoke(f"experiment={e}", "train.steps=3"))
    claims = ROOT / "results" / "fig4" / "claims.yaml"
    args = ("fig4", tmp_path / "runs", "smoke", tmp_path / "results", claims)
    out = build(*args, overrides=("train.steps=3",), limit=40, pop_batches=2)  # past the runs' 32 test images
    text = (out / "report.md").read_text()
    assert "BN-Inception ensemble" in text and "population top-1" in text
    assert "during training used the first 32; Figure 4 scores every image of the test split" in text
    assert "Alg. 2's inference network, every BN that follows a conv folded" in text
    cached = json.loads((out / "evaluations.json").read_text())
    assert set(cached) == set(fig4.EVALS) and cached["ensemble_144crop"]["result"]["models"] == 6
    assert cached["single_1crop"]["result"]["n_images"] == 40
    wrong = cached["single_1crop"]["result"]["wrong"]  # per image, for the paired statistics
    assert len(wrong["combined"]) == 40 and set(wrong["combined"]) <= {"0", "1"}
    assert 100 * wrong["combined"].count("1") / 40 == pytest.approx(cached["single_1crop"]["result"]["top1_error"])
    assert set(cached["all_1crop_population"]["result"]["wrong"]) == {"combined"} | set(fig4_members(out))
    assert "paired-bootstrap interval" in text and "exact McNemar" in text and "predate per-image records" not in text
    long = read_long(out / "runs.csv")
    assert long.value("single_1crop", "top1_error") == cached["single_1crop"]["result"]["top1_error"]
    mtime = (out / "evaluations.json").stat().st_mtime
    build(*args, overrides=("train.steps=3",), limit=40, pop_batches=2)
    assert (out / "evaluations.json").stat().st_mtime == mtime  # nothing re-evaluated


def test_error_drop_interval_over_images():
    from repro.report import Long

    long = Long([("a", 1, 0, "top1_error", 20.0), ("a", 1, 0, "n_images", 1000), ("b", 1, 0, "top1_error", 15.0)])
    s = fig4.error_drop(long, "a", "b")
    se = 100 * ((0.2 * 0.8 + 0.15 * 0.85) / 1000) ** 0.5
    assert s.mean == pytest.approx(5.0) and s.lo == pytest.approx(5.0 - 1.959964 * se)


def fig4_members(out) -> list[str]:
    return list(json.loads((out / "meta.json").read_text())["members"])


def test_evaluation_prints_a_progress_line_off_a_terminal(capsys):
    from repro.evaluate import ImageProgress

    p = ImageProgress("144-crop x 7", 10, None, every_s=0.0)
    p.update(4)
    p.update(6)
    p.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("evaluate 144-crop x 7: 4/10 images (40%), ") and "ETA" in lines[0]
    assert lines[-1].startswith("evaluate 144-crop x 7: 10/10 images (100%)")
    quiet = ImageProgress("x", 10, None, every_s=30.0)
    quiet.update(4)  # within 30 s of the start: no line yet
    assert capsys.readouterr().err == ""
    quiet.update(6)  # the last image: a line
    assert "10/10 images" in capsys.readouterr().err
    ImageProgress("x", 10, False, every_s=0.0).update(10)  # progress=False: silent
    assert capsys.readouterr().err == ""

