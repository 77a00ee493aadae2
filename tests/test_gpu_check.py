"""The prepared GPU check (scripts/gpu/gpu_check.sh) runs end to end on the CPU at tiny sizes, so the one
GPU run it exists for does not fail on a bug that the CPU could have shown."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path):
    env = os.environ | {"GPU_CHECK_CPU": "1", "PYTHON": sys.executable}
    out = subprocess.run(["bash", "scripts/gpu/gpu_check.sh", "--out", str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    r = json.loads((tmp_path / "cpu-dry-run" / "gpu_check.json").read_text())

    assert r["shapes"]["bn_inception"]["bn_elements"] > 0 and r["shapes"]["inception_paper"]["bn_elements"] == 0
    assert r["shapes"]["timm inception_v3"]["pool_elements"] > 0  # its functional pools count too
    eager = r["networks"]["eager"]
    assert set(eager) == {"bn_inception", "inception_paper", "timm inception_v3"}
    assert all(row["images_s"] > 0 and row["macs"] > 0 for rows in eager.values() for row in rows)
    assert r["networks"]["profile"]["bn_inception"]["top"]

    runner = r["runner"]
    assert runner["runner_images_s"] > 0 and runner["bare_images_s"] > 0
    assert runner["ops_per_step"]["runner"] > runner["ops_per_step"]["bare"]  # the runner augments, the bare loop not
    assert "aten.grid_sampler_2d" in runner["ops_per_step"]["extra"]

    pipe = r["pipeline"]
    for key in ("loader_images_s", "gpu_decode_only_images_s", "gpu_batched_images_s", "gpu_per_image_images_s"):
        assert pipe[key] > 0, key
    assert r["folder"]["train"] == 2 * r["folder"]["train_unique"]

    resume = r["resume"]["default"]
    assert resume["runs"]["killed"]["killed_at_step"] is not None and resume["runs"]["killed"]["rc"] != 0
    (start,) = resume["resumed_from"]  # resumed once, from a checkpoint (every 4 steps) before the end
    assert start % 4 == 0 and resume["runs"]["killed"]["killed_at_step"] - 4 <= start < 16
    assert resume["identical"] and resume["steps_compared"] == 17  # bit-identical on the CPU

    report = (tmp_path / "cpu-dry-run" / "report.md").read_text()
    for section in ("## 1. Networks", "## 2. The runner", "## 3. The input pipeline", "## 4. Kill and resume",
                    "## 5. GPU-hours"):
        assert section in report
    assert "| default | " in report and "Failed" not in report


def test_committed_gpu_reports_rebuild_from_their_json():
    sys.path.insert(0, str(ROOT / "scripts" / "gpu"))
    from gpu_check import load
    from gpu_report import render

    reports = sorted((ROOT / "results" / "gpu").rglob("gpu_check.json"))
    assert reports
    for path in reports:
        assert render(load(path)) == path.with_name("report.md").read_text(), f"{path.parent}: rerender differs"


def test_report_shows_a_cuda_graphs_row():
    """The reduce-overhead row (only a GPU run makes one) renders beside its eager batch, and the GPU-hours
    estimate takes the fastest batch-32 row."""
    sys.path.insert(0, str(ROOT / "scripts" / "gpu"))
    from gpu_check import hours, load
    from gpu_report import render

    r = load(ROOT / "results" / "gpu" / "nvidia-h200" / "gpu_check.json")
    eager = next(x for x in r["networks"]["eager"]["bn_inception"] if x["batch"] == 32)
    r["networks"]["cudagraphs"] = eager | {"compile": "reduce-overhead", "images_s": 2 * eager["images_s"]}
    r["hours"] = hours(r["networks"])
    text = render(r)
    assert f"**{2 * eager['images_s']:,.0f} img/s** (2.00x eager" in text
    assert r["hours"]["measured_images_s"] == 2 * eager["images_s"]
    assert r["hours"]["measured_compile"] == "reduce-overhead"
