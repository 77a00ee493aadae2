"""Every experiment composes against the typed schema; bad keys and types fail at compose time."""

from __future__ import annotations

import subprocess
import sys

import pytest

from repro.config import Config
from repro.errors import ReproError
from tests.conftest import EXPERIMENTS, ROOT, compose_config

SCALES = ("smoke", "cpu", "cpu_long", "gpu", "paper")


def _recipe_exists(family: str, scale: str) -> bool:
    return (ROOT / "conf" / "recipe" / family / f"{scale}.yaml").exists()


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("scale", SCALES)
def test_every_experiment_composes(experiment, scale):
    family = compose_config([f"experiment={experiment}", "scale=smoke"]).family
    if not _recipe_exists(family, scale):
        pytest.skip(f"{family} has no {scale} recipe")
    cfg = compose_config([f"experiment={experiment}", f"scale={scale}"])
    assert isinstance(cfg, Config)
    assert cfg.experiment == experiment and cfg.scale.name == scale
    assert cfg.train.steps > 0 and cfg.train.batch_size > 0 and cfg.optim.lr > 0


def test_fig1_protocol_matches_paper():
    """§4.1: 3x100 sigmoid, batch 60, 50,000 steps, binary input; BN only in fig1_bn."""
    for exp, norm in (("fig1_baseline", "none"), ("fig1_bn", "bn")):
        cfg = compose_config([f"experiment={exp}", "scale=cpu"])
        assert (cfg.train.steps, cfg.train.batch_size) == (50000, 60)
        assert cfg.model.hidden == [100, 100, 100] and cfg.model.act == "sigmoid" and cfg.model.norm == norm
        assert cfg.data.binarize
    a, b = (compose_config([f"experiment={e}", "scale=cpu"]) for e in ("fig1_baseline", "fig1_bn"))
    assert (a.optim, a.model.init_std) == (b.optim, b.model.init_std)  # same optimizer for both nets


@pytest.mark.parametrize("experiment", ["inception", "bn_x5", "bn_x5_sigmoid"])
def test_cpu_long_is_the_cpu_recipe_four_times_as_long(experiment):
    """Only the length changes, with the schedule and the evaluation grid stretched to match: the
    same 24 evaluations (the plateau precondition's last 6 are the last quarter) and decay every steps / 30."""
    cpu = compose_config([f"experiment={experiment}", "scale=cpu"])
    long = compose_config([f"experiment={experiment}", "scale=cpu_long"])
    assert long.train.steps == 4 * cpu.train.steps
    assert long.train.steps // long.train.eval_every == cpu.train.steps // cpu.train.eval_every == 24
    assert long.optim.decay_steps * 30 == long.train.steps and cpu.optim.decay_steps * 30 == cpu.train.steps
    for key in ("train", "optim", "model", "data"):
        a, b = (vars(getattr(c, key)).copy() for c in (cpu, long))
        for k in ("steps", "eval_every", "log_every", "checkpoint_every", "decay_steps"):
            a.pop(k, None), b.pop(k, None)
        assert a == b, key


def test_unknown_key_fails_at_compose():
    with pytest.raises(ReproError) as e:  # compose turns Hydra's refusal into one line (issue 19)
        compose_config(["train.stepz=10"])
    assert "stepz" in str(e.value) and "\n" not in str(e.value)


def test_wrong_type_fails_at_compose():
    with pytest.raises(ReproError) as e:
        compose_config(["train.steps=many"])
    assert "steps" in str(e.value) and "\n" not in str(e.value)


def test_cli_unknown_key_is_one_clear_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "repro.train", "train.stepz=10", f"runs_dir={tmp_path}"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode != 0
    assert "stepz" in out.stderr and "Traceback" not in out.stderr
    assert not any(tmp_path.iterdir()) if tmp_path.exists() else True


def test_missing_scale_recipe_names_options():
    with pytest.raises(ReproError) as e:
        compose_config(["experiment=fig1_bn", "scale=nonexistent"])
    assert "nonexistent" in str(e.value) and "cpu_tuned" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("scale", SCALES)
def test_the_recorded_data_choice_is_the_data_that_runs(scale):
    """Hydra's record of the data group (multirun.yaml, --info) names the dataset the recipe trains on;
    only Figure 1's MNIST is binarized (§4.1)."""
    from hydra import compose, initialize_config_dir

    from repro.config import CONF_DIR, register_configs

    register_configs()
    for experiment in ("fig1_bn", "bn_x30"):
        if not _recipe_exists("fig1" if experiment.startswith("fig1") else "imagenet", scale):
            continue
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("config", [f"experiment={experiment}", f"scale={scale}"], return_hydra_config=True)
        assert cfg.hydra.runtime.choices.data == cfg.data.name
        assert cfg.data.binarize == experiment.startswith("fig1")


def test_a_choice_outside_its_options_fails_when_hydra_composes(tmp_path):
    """Issue 19: choices are StrEnums in the schema, so `--cfg job` (and every job of a sweep) fails before
    anything runs; their values are the same strings in config.yaml and the identity as before."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = subprocess.run([sys.executable, "-m", "repro.train", "--cfg", "job", "logger.wandb.mode=ofline"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode != 0 and "expected one of [offline, online, disabled]" in out.stderr
    from repro.config import compose
    from repro.runs import rundir

    d = rundir.config_dict(compose(["optim.name=adam", "logger.progress=off"]))
    assert d["optim"]["name"] == "adam" and type(d["optim"]["name"]) is str and type(d["logger"]["progress"]) is str
