"""repro.stacked.conv: every seed of a Figures 2-3 variant as one stack, each member the run repro.train
makes, its step free of host syncs, and a killed stack resuming to the unbroken one's bits."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from repro.config import compose
from repro.data import mnist
from repro.stacked import conv, convrun
from repro.stacked import members as mem
from repro.stacked import mlp as stacked
from repro.train import run
from tests.conftest import DATA, ROOT, killed_at_checkpoint_write, needs_mnist, run_killed_after

pytestmark = needs_mnist

# The smoke recipe's BN-x30 (crops, mirrors, photometric jitter, full shuffling) at batch 4.
SMOKE = ["scale=smoke", f"data.root={DATA}", "train.batch_size=4", "train.threads=1"]
LONG = [*SMOKE, "train.steps=200", "train.log_every=20", "train.eval_every=100", "train.checkpoint_every=100"]


def _metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def float64(monkeypatch):
    """Both runners in double precision: images, weights and draws. In float32 a member and its single
    run part after a few steps (their sums are ordered differently, and a near-tie in a max pool sends a
    gradient elsewhere); in float64 the same arithmetic stays within ~1e-12 over hundreds of steps."""
    images = mnist._images
    monkeypatch.setattr(mnist, "_images", lambda x, cfg: images(x, cfg).double())
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def _assert_twins(a_dir, b_dir, tol: float) -> None:
    """Two runs' metrics and final checkpoints agree within `tol` (0: bit for bit)."""
    a, b = _metrics(a_dir), _metrics(b_dir)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys() and ra["lr"] == rb["lr"]
        for key in ("loss", "test_acc", "test_loss"):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], abs=tol), (ra["step"], key)
    ca = torch.load(Path(a_dir, "ckpt.pt"), weights_only=False)
    cb = torch.load(Path(b_dir, "ckpt.pt"), weights_only=False)
    assert ca.keys() == cb.keys() and ca["step"] == cb["step"] and ca["identity"] == cb["identity"]
    assert list(ca["model"]) == list(cb["model"])
    for k, v in ca["model"].items():
        assert torch.allclose(cb["model"][k].double(), v.double(), rtol=tol, atol=tol), k
    sa, sb = ca["optimizer"], cb["optimizer"]
    assert sa["param_groups"] == sb["param_groups"] and sa["state"].keys() == sb["state"].keys()
    for i, s in sa["state"].items():
        assert torch.allclose(sb["state"][i]["momentum_buffer"], s["momentum_buffer"], rtol=tol, atol=tol), i
    for k in ("gen", "aug_gen", "order", "batches"):
        assert torch.equal(ca["data"][k], cb["data"][k]), k
    assert torch.equal(ca["rng"][0]["torch"], cb["rng"][0]["torch"])


@pytest.mark.parametrize(("experiment", "steps"), [("bn_x30", 200), ("inception", 20)])
def test_a_member_matches_its_single_run(tmp_path, float64, experiment, steps):
    """Seeds 1 and 2 of BN-x30 as one stack against seed 2 through repro.train: the same run directory,
    records, weights, BN statistics, momentum, data position and RNG over 200 steps. Inception adds
    dropout (each member's masks from its own generator) and LRN.

    Both at Inception's rate 0.0015: at BN-x30's 0.045 this 8-channel network on batches of 4 is chaotic
    (measured: a 1e-16 difference grows tenfold a step, so no two summation orders agree past ~15
    steps), at 0.0015 the two runners stay within 1e-12."""
    short = [*LONG, f"train.steps={steps}", "optim.lr_mult=1"]
    summaries = stacked.run([f"experiment={experiment}", "seed=1,2", f"runs_dir={tmp_path / 'stack'}", *short])
    assert [s["status"] for s in summaries] == ["complete", "complete"]
    single = run(compose([f"experiment={experiment}", "seed=2", f"runs_dir={tmp_path / 'single'}", *short]))
    twin = next(s for s in summaries if s["seed"] == 2)
    assert Path(twin["run_dir"]).name == Path(single["run_dir"]).name
    _assert_twins(single["run_dir"], twin["run_dir"], tol=1e-10)
    env = json.loads(Path(twin["run_dir"], "env.json").read_text())
    assert env["data"] == single["data"] and env["stacked"]["members"] == 2
    assert twin["final_test_acc"] == pytest.approx(single["final_test_acc"], abs=1e-9)


class _NoHostSync(TorchDispatchMode):
    """Fails on any op that makes a CUDA step wait for the host or read a value back to it."""

    SYNC = {"_local_scalar_dense", "item", "nonzero", "masked_select", "_unique", "_unique2", "unique_dim",
            "unique_consecutive", "is_nonzero", "equal", "allclose", "lift_fresh"}  # lift_fresh: torch.tensor(data)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in self.SYNC or (name in ("_to_copy", "to") and kwargs.get("device") is not None):
            raise AssertionError(f"{func} in the step: it would sync the host with a CUDA stream")
        return func(*args, **kwargs)


def test_the_step_is_a_pure_tensor_function(tmp_path):
    """One step of a 2-member Inception stack (dropout, LRN, crops, jitter) runs under a guard that fails
    on every op that syncs with the host (.item(), nonzero, a host tensor's copy), as a CUDA graph needs;
    it changes nothing but the stack's tensors, and the same inputs give the same step."""
    cfgs = [compose(["experiment=inception", f"seed={s}", f"runs_dir={tmp_path}", *SMOKE]) for s in (1, 2)]
    splits = mnist.load_splits(cfgs[0].data)
    ms = [mem.Member(c, splits.describe(), (1, 10, 28), torch.device("cpu")) for c in cfgs]
    stack = conv.ConvStack([m.net for m in ms], splits.x_train, splits.y_train, cfgs[0].data, 4,
                           [c.optim for c in cfgs], 0.4)
    streams = [convrun.loaders.InMemoryStream(splits.x_train, splits.y_train, 4, c.seed, c.data) for c in cfgs]
    masks = [torch.full((4, stack.features), 1 / 0.6) for _ in cfgs]
    stack.inputs.fill([s.draw() for s in streams], masks, [0.1, 0.2])
    before = {k: v.clone() for k, v in (stack.params | stack.buffers).items()}
    with _NoHostSync():
        loss = stack.step()
    assert loss.shape == (2,) and torch.isfinite(loss).all()
    changed = [k for k, v in (stack.params | stack.buffers).items() if not torch.equal(v, before[k])]
    assert "conv1.conv.weight" in changed and len(changed) == len(before)  # every weight moved, both members
    with pytest.raises(AssertionError, match="sync"), _NoHostSync():
        loss.sum().item()


def test_refuses_what_it_does_not_implement(tmp_path):
    base = [f"runs_dir={tmp_path}", *SMOKE]
    with pytest.raises(stacked.ReproError, match="share model"):
        stacked.run(["experiment=bn_x30,inception", *base])
    with pytest.raises(stacked.ReproError, match="SGD"):
        stacked.run(["experiment=bn_x30", "optim.name=adam", *base])


# ----------------------------------------------------------------------------------------------
# Kills


CUT = [*SMOKE, "experiment=bn_x30", "seed=1,2", "train.steps=8", "train.log_every=2", "train.eval_every=4",
       "train.checkpoint_every=2", "resume=auto"]


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> list[dict]:
    """The unbroken stack every kill test compares with."""
    return stacked.run([*CUT, f"runs_dir={tmp_path_factory.mktemp('whole')}"])


@pytest.mark.parametrize("at", [2, 4, 6, 8])
def test_a_kill_inside_the_checkpoint_commit_resumes(tmp_path, whole, at):
    """Killed at the at-th checkpoint file operation (per commit of 2 members: two ckpt.next.pt writes, then
    two renames over ckpt.pt): in the first commit's writes nothing is resumable and the stack starts anew;
    anywhere later it resumes at the last step every member holds, and ends with the unbroken stack's bits."""
    killed_at_checkpoint_write(at, lambda: stacked.run([*CUT, f"runs_dir={tmp_path}"]))
    resumed = stacked.run([*CUT, f"runs_dir={tmp_path}"])
    assert [s["resumed_from"] for s in resumed] == [[] if at <= 2 else [2 if at <= 6 else 4]] * 2
    for s, w in zip(resumed, whole):
        _assert_twins(w["run_dir"], s["run_dir"], tol=0)
        assert not Path(s["run_dir"], mem.NEXT).exists()


def test_either_runner_resumes_the_others_checkpoint(tmp_path):
    """A member killed inside the stack's second commit is resumed by repro.train from the step-2 checkpoint
    the stack wrote; a single run killed after step 4 is resumed by a stack (of that one member)."""
    killed_at_checkpoint_write(5, lambda: stacked.run([*CUT, f"runs_dir={tmp_path}"]))
    one = [o for o in CUT if not o.startswith("seed=")] + [f"runs_dir={tmp_path}"]
    single = run(compose([*one, "seed=1"]))
    assert single["status"] == "complete" and single["resumed_from"] == [2] and "stacked" not in single
    run_killed_after(compose([*one, "seed=3"]), 5)
    (stacked_member,) = stacked.run([*one, "seed=3"])
    assert stacked_member["status"] == "complete" and stacked_member["resumed_from"] == [4]
    assert [r["step"] for r in _metrics(stacked_member["run_dir"])] == [0, 2, 4, 6, 8]


def _written_since(runs: Path, t0: float) -> bool:
    """Whether a checkpoint under `runs` was written at or after time t0."""
    for f in runs.glob("*/ckpt*.pt"):
        try:
            if f.stat().st_mtime >= t0:
                return True
        except FileNotFoundError:  # renamed away between the listing and the look
            pass
    return False


def test_a_killed_stack_resumes_bit_identically(tmp_path, whole):
    """SIGKILL to `python -m repro.stacked` at a random moment after its first commit (every 2 steps is a
    commit of 2 checkpoints, so the kill may land inside one, or among the summaries), then the same
    command to the end: it resumes (does not start over) and the members end with the bits of an
    unbroken stack. The commit's every phase is killed deterministically above."""
    cut = tmp_path / "cut"
    cmd = [sys.executable, "-m", "repro.stacked", *CUT, f"runs_dir={cut}"]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    rng, kills = random.Random(), 0
    for _ in range(1):
        t0 = time.time()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and not _written_since(cut, t0):
            time.sleep(0.02)  # until this process has committed a checkpoint
        time.sleep(rng.uniform(0.0, 0.6 * whole[0]["wall_s"]))  # somewhere in the rest of its training
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    dirs = sorted(p for p in cut.iterdir() if (p / "summary.json").exists())
    assert len(dirs) == 2 and kills >= 1
    for d, w in zip(dirs, sorted(whole, key=lambda s: s["run_dir"])):
        assert json.loads((d / "summary.json").read_text())["resumed_from"]
        _assert_twins(w["run_dir"], d, tol=0)
