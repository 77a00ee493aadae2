"""Shared fixtures: compose the real Hydra configs as the CLI does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from repro.config import Config
from repro.config import compose as compose_config  # the typed Config the CLI would build

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
# The ImageNet-family smoke recipe (conf/recipe/imagenet/smoke.yaml) trains on the full MNIST in
# torchvision's layout, which `make data` puts here; tests that need it skip, saying so, without it.
DATA = ROOT / "data"
MNIST_RAW = DATA / "MNIST" / "raw"
NO_MNIST = f"{MNIST_RAW} absent: run `make data` (the full MNIST the ImageNet-family smoke tests train on)"
needs_mnist = pytest.mark.skipif(not MNIST_RAW.is_dir(), reason=NO_MNIST)

# Test tensors are tiny: one thread per process is faster than two fighting over 2 cores, and
# subprocesses (CLI, torchrun) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture
def smoke(tmp_path):
    """Compose a smoke-scale config writing under tmp_path."""

    def make(*overrides: str) -> Config:
        return compose_config(["scale=smoke", f"runs_dir={tmp_path / 'runs'}", *smoke_data(*overrides), *overrides])

    return make


def smoke_data(*overrides: str) -> list[str]:
    """`data.root` of the repository's data/ for an ImageNet-family smoke run (so tests find it from any
    working directory); nothing for Figure 1's, whose recipe keeps its own sources."""
    experiment = next((o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")), "fig1_bn")
    return [] if experiment.startswith("fig1") else [f"data.root={DATA}"]


def make_image_folder(root: Path, train: int = 12, val: int = 5, square_val: int = 0) -> Path:
    """An ImageNet-layout folder (train/ and val/, classes cat and dog) of random 40x48 PNGs; the
    first `square_val` validation images of each class are 40x40 instead."""
    from torchvision.io import write_png

    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", train), ("val", val)):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                w = 40 if split == "val" and i < square_val else 48
                img = (torch.rand(3, 40, w, generator=gen) * 255).to(torch.uint8)
                write_png(img, str(root / split / c / f"{i}.png"))
    return root


def run_killed_after(cfg: Config, batches: int) -> None:
    """Run `cfg` and kill it (KeyboardInterrupt) when it asks for batch number `batches` + 1."""
    from repro.data.loaders import InMemoryStream, LoaderStream
    from repro.train import run

    calls = {"n": 0}

    def dying(original):
        def next_batch(self):
            calls["n"] += 1
            if calls["n"] > batches:
                raise KeyboardInterrupt
            return original(self)

        return next_batch

    with pytest.MonkeyPatch.context() as mp:
        for stream in (InMemoryStream, LoaderStream):
            mp.setattr(stream, "next", dying(stream.next))
        with pytest.raises(KeyboardInterrupt):
            run(cfg)


class Killed(BaseException):
    """A kill, as far as the files are concerned (finally blocks still run; a real SIGKILL is tested apart)."""


def killed_at_checkpoint_write(at: int, run) -> None:
    """Call `run()` and kill it at its `at`-th rename onto a checkpoint file (ckpt.pt or a stack's
    ckpt.next.pt), before the rename happens."""
    from repro.stacked.members import CKPT, NEXT

    calls, replace = {"n": 0}, os.replace

    def dying(src, dst):
        if Path(dst).name in (CKPT, NEXT):
            calls["n"] += 1
            if calls["n"] == at:
                raise Killed
        return replace(src, dst)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "replace", dying)
        with pytest.raises(Killed):
            run()
