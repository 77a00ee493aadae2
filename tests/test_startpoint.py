"""Issue 19: starting from given weights (train.init_from, as timm's --initial-checkpoint) or an explicit checkpoint
(train.resume_from, as timm's --resume) beside resume=auto; neither key changes an earlier run's identity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from repro.config import Config
from repro.errors import ReproError
from repro.runs import files, rundir
from repro.train import run
from tests.conftest import compose_config, run_killed_after

SHORT = ["experiment=fig1_bn", "scale=smoke", "train.steps=100", "train.checkpoint_every=50", "resume=auto"]


def rows(run_dir) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall"} for r in files.read_jsonl(Path(run_dir) / "metrics.jsonl")]


def test_the_new_keys_stay_out_of_earlier_identities():
    d = rundir.identity_dict(rundir.config_dict(Config(**vars(compose_config(SHORT)))))
    assert "init_from" not in d["train"] and "resume_from" not in d["train"]


def test_initial_weights_and_an_explicit_checkpoint(tmp_path):
    full = run(compose_config([*SHORT, f"runs_dir={tmp_path / 'a'}"]))  # unbroken
    weights = Path(full["weights"]["file"])

    # init_from: step 0 evaluates the given weights; another run directory (the path joins the identity)
    started = run(compose_config([*SHORT, f"runs_dir={tmp_path / 'a'}", f"train.init_from={weights}"]))
    first = files.read_jsonl(Path(started["run_dir"]) / "metrics.jsonl")[0]
    assert first["step"] == 0 and first["test_acc"] == full["final_test_acc"]
    assert started["run_dir"] != full["run_dir"]
    env = json.loads((Path(started["run_dir"]) / "env.json").read_text())
    assert env["init_from"]["path"] == str(weights) and len(env["init_from"]["sha256"]) == 64
    with pytest.raises(ReproError, match="does not fit this run's network") as e:  # the baseline MLP has no BN
        run(compose_config([*SHORT, "experiment=fig1_baseline", f"runs_dir={tmp_path / 'b'}",
                            f"train.init_from={weights}"]))
    assert "\n" not in str(e.value)

    # resume_from: a run cut at step 70 (checkpoint at 50) continued elsewhere equals the unbroken run
    cut = compose_config([*SHORT, f"runs_dir={tmp_path / 'c'}"])
    run_killed_after(cut, 70)
    (cut_dir,) = (tmp_path / "c").glob("fig1_bn-*")
    resumed = run(compose_config([*SHORT, f"runs_dir={tmp_path / 'd'}", f"train.resume_from={cut_dir / 'ckpt.pt'}"]))
    assert rows(resumed["run_dir"]) == rows(full["run_dir"]) and resumed["resumed_from"] == [50]
    with pytest.raises(ReproError, match="found .* with its own checkpoint .* drop train.resume_from"):
        run(compose_config([*SHORT, f"runs_dir={tmp_path / 'c'}", f"train.resume_from={cut_dir / 'ckpt.pt'}"]))
    with pytest.raises(ReproError, match="belongs to run fig1_bn-smoke-s1-.*not to this run fig1_bn-smoke-s2-"):  # another seed's checkpoint
        run(compose_config([*SHORT, "seed=2", f"runs_dir={tmp_path / 'e'}", f"train.resume_from={cut_dir / 'ckpt.pt'}"]))


def test_a_stack_refuses_the_starting_points_it_does_not_take(tmp_path):
    from repro.stacked.mlp import run as run_stacked

    (tmp_path / "w.pt").write_bytes(b"")
    with pytest.raises(ReproError, match="use python -m repro.train for train.init_from"):
        run_stacked([*SHORT, f"runs_dir={tmp_path}", f"train.init_from={tmp_path / 'w.pt'}"])
    assert not any(tmp_path.glob("fig1_bn-*"))
