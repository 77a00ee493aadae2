"""Issue 19: the `python -m repro.train` command line as a newcomer meets it. Hydra's refusals (an unknown key,
experiment, scale or recipe, a malformed override) are one line naming the fix with exit 2, and `--help` lists
the experiments, the scales and the commands to run. In-process (Hydra's entry with sys.argv set)."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from hydra.core.global_hydra import GlobalHydra

from repro.config import hydra_cli
from tests.conftest import CONF


def entry(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run `python -m repro.train ARGS` in this process: (exit code, stdout, stderr)."""
    from repro.train import main

    GlobalHydra.instance().clear()
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # hydra_cli sets it; restored after the test
    monkeypatch.setattr(sys, "argv", ["repro.train", *args])
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level  # Hydra's job logging points the root logger at this stdout
    code = 0
    try:
        hydra_cli(main, "python -m repro.train")
    except SystemExit as e:
        code = e.code or 0
    finally:
        GlobalHydra.instance().clear()
        root.handlers[:] = handlers
        root.setLevel(level)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("override, needles", [
    ("train.stepz=3", ["train.stepz is not a key", "did you mean train.steps?"]),
    ("foo=1", ["foo is not a key", "--cfg job"]),
    ("experiment=fig1_bnn", ["experiment/fig1_bnn", "fig1_baseline, fig1_bn", "pick one"]),
    ("scale=laptop", ["scale/laptop", "cpu, cpu_long", "pick one"]),
    ("recipe=fig1/cpu", ["the recipe is not an override", "experiment= and scale="]),
    ("recipe@_global_=fig1/huge", ["there is no recipe/fig1/huge", "experiment= and scale="]),
    ("seed", ["missing EQUAL", "key=value"]),
    ("optim.lr=fast", ["optim.lr", "could not be converted", "value of its type"]),
])
def test_hydra_refusals_are_one_line_naming_the_fix(monkeypatch, capsys, override, needles):
    code, _, err = entry(monkeypatch, capsys, override, "--cfg", "job")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "+" not in lines[0].split("error: ", 1)[1].split("=")[0]  # no `+key` hint leading in a circle
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_help_lists_every_experiment_and_scale_and_the_commands(monkeypatch, capsys):
    code, out, _ = entry(monkeypatch, capsys, "--help")
    assert code == 0
    groups = {line.split(":")[0]: line.split(": ", 1)[1].split(", ") for line in out.splitlines()
              if line.startswith(("experiment:", "scale:"))}
    assert sorted(groups["experiment"]) == sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
    assert sorted(groups["scale"]) == sorted(p.stem for p in (CONF / "scale").glob("*.yaml"))
    for command in ("python -m repro.train experiment=", "python -m repro.train -m ", "python -m repro.report fig1"):
        assert command in out
    assert "powered by Hydra" not in out


def test_a_sweeps_jobs_record_their_own_overrides(monkeypatch, capsys, tmp_path):
    """env.json's `overrides` is each job's own (seed=1, seed=2), what reruns it alone; `argv` the sweep's line."""
    code, _, err = entry(monkeypatch, capsys, "-m", "experiment=fig1_bn", "scale=smoke", "seed=1,2",
                         "train.steps=20", "train.eval_every=10", f"runs_dir={tmp_path}")
    assert code == 0, err
    envs = sorted((json.loads(p.read_text()) for p in tmp_path.glob("fig1_bn-smoke-s*/env.json")),
                  key=lambda e: e["run_dir"])
    assert [sorted(e["overrides"]) for e in envs] == [
        sorted(["experiment=fig1_bn", "scale=smoke", f"seed={s}", "train.steps=20", "train.eval_every=10",
                f"runs_dir={tmp_path}"]) for s in (1, 2)]
    assert all("seed=1,2" in e["argv"] for e in envs)


def test_the_slurm_launcher_without_srun_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, as on a laptop
    code, _, err = entry(monkeypatch, capsys, "-m", "hydra/launcher=slurm", "experiment=fig1_bn", "scale=smoke",
                         f"runs_dir={tmp_path}")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "srun is not on this machine's PATH" in lines[0], err
    assert "drop hydra/launcher=slurm" in lines[0]


@pytest.mark.parametrize("argv, added", [
    (["-m", "experiment=inception,bn_x30,ensemble_1", "scale=cpu_tuned"], "family=imagenet"),  # bases followed
    (["-m", "experiment=fig1_baseline,fig1_bn"], "family=fig1"),
    (["-m", "experiment=fig1_bn,inception", "scale=cpu"], None),  # two families: Hydra's default stands
    (["-m", "experiment=inception,bn_x30", "family=imagenet"], None),  # said already
    (["experiment=inception", "scale=cpu_tuned"], None),  # not a sweep
])
def test_a_sweep_over_one_familys_experiments_names_the_family(argv, added):
    from repro.config import sweep_family

    assert sweep_family(["repro.train", *argv]) == ["repro.train", *argv, *([added] if added else [])]


def test_a_sweep_of_inceptions_at_a_scale_figure_1_lacks_starts_its_jobs(monkeypatch, capsys, tmp_path):
    """Hydra composes a sweep's primary config with the default experiment (fig1_bn); at cpu_tuned, which
    Figure 1 has no recipe for, the sweep stopped there before any job ran. Now each job starts (and here
    refuses its own bad rate, so no data is needed)."""
    code, _, err = entry(monkeypatch, capsys, "-m", "experiment=inception,bn_x30", "scale=cpu_tuned", "optim.lr=-1",
                         f"runs_dir={tmp_path}")
    assert code != 0 and "there is no recipe" not in err, err
    assert "2 job(s) of this sweep failed" in err and err.count("optim.lr=-1.0 is not valid") >= 2, err
