"""Shared fixtures: compose the real Hydra configs as the CLI does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from repro.config import Config, register_configs, to_config

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))

# Test tensors are tiny: one thread per process is faster than two fighting over 2 cores, and
# subprocesses (CLI, torchrun) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


def compose_config(overrides: list[str]) -> Config:
    """The typed Config the CLI would build for these overrides."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return to_config(compose(config_name="config", overrides=overrides))


@pytest.fixture
def smoke(tmp_path):
    """Compose a smoke-scale config writing under tmp_path."""

    def make(*overrides: str) -> Config:
        return compose_config(["scale=smoke", f"runs_dir={tmp_path / 'runs'}", *overrides])

    return make


def run_killed_after(cfg: Config, batches: int) -> None:
    """Run `cfg` and kill it (KeyboardInterrupt) when it asks for batch number `batches` + 1."""
    from repro.loaders import InMemoryStream
    from repro.train import run

    original, calls = InMemoryStream.next, {"n": 0}

    def dying(self):
        calls["n"] += 1
        if calls["n"] > batches:
            raise KeyboardInterrupt
        return original(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(InMemoryStream, "next", dying)
        with pytest.raises(KeyboardInterrupt):
            run(cfg)
