"""Checkpoints and weights as torch and timm users load them (issue 19): ckpt.pt under torch.load's default
weights_only=True (RNG states as tensors and numbers, not NumPy pickles), the final weights exported as
model.safetensors that timm.create_model(..., checkpoint_path=) loads, and old checkpoints still resumable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import timm
import torch

from repro.runs import process, rundir
from repro.train import run


def test_checkpoint_loads_weights_only_and_timm_loads_the_export(smoke):
    s = run(smoke("experiment=fig1_bn", "train.steps=50"))
    d = Path(s["run_dir"])
    ckpt = torch.load(d / "ckpt.pt", weights_only=True)  # torch's default: no pickled NumPy or Python objects
    assert ckpt["step"] == 50 and isinstance(ckpt["rng"][0]["numpy"]["keys"], torch.Tensor)
    args = s["weights"]["create_model"]
    assert args["model_name"] == "mnist_mlp" and s["weights"]["file"] == str(d / rundir.WEIGHTS)
    for path in (s["weights"]["file"], d / "ckpt.pt"):  # the export, and the checkpoint's "model" entry
        net = timm.create_model(**args, checkpoint_path=str(path))
        assert all(torch.equal(v, ckpt["model"][k]) for k, v in net.state_dict().items())


def test_a_checkpoint_with_numpy_rng_pickles_still_loads_and_restores(tmp_path):
    np.random.seed(3)
    state = process.rng_state()
    old = state | {"numpy": np.random.get_state()}  # as checkpoints before issue 19 held it
    torch.save({"rng": [old], "step": 1}, tmp_path / "ckpt.pt")
    expected = np.random.rand(3)
    np.random.seed(0)
    process.set_rng_state(rundir.load_checkpoint(tmp_path)["rng"][0])
    assert np.array_equal(np.random.rand(3), expected)
    process.set_rng_state(state)  # and the new form
    assert np.array_equal(np.random.rand(3), expected)


def test_a_full_disk_at_a_metrics_flush_is_one_line_and_the_way_out_still_runs(tmp_path):
    """Issue 19: the flush's OSError escaped, and closing the log raised again before the lock was released."""
    import errno

    import pytest

    from repro.errors import ReproError
    from repro.runs import files

    log = files.MetricsLog(tmp_path, None)

    class Full:
        closed = False

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        flush = write

        def close(self):
            self.closed = True
            raise OSError(errno.ENOSPC, "No space left on device")

    log._file.close()
    log._file = Full()
    with pytest.raises(ReproError, match="could not append to .*metrics.jsonl at step 7 .No space left.*resume=auto"):
        log.log({"step": 7})
    log.close(failed=True)  # no second error on the way out
