"""Issue 11: no silent wrong result and no traceback. Each numbered case of the issue is a test here
(a CLI subprocess where the exit code and the one-line message are the point), then its weak spots."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from repro.errors import DataError, ReproError
from repro.evaluate import evaluate_runs
from repro.evaluate import main as evaluate_main
from repro.runs import files, rundir
from repro.train import run
from tests.conftest import ROOT, compose_config, make_image_folder, run_killed_after
from tests.test_data import _write_idx_dir

SHORT = ["experiment=fig1_bn", "scale=smoke", "train.steps=100", "train.checkpoint_every=50", "resume=auto"]


def cli(module: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env=env)


def assert_one_line_error(out: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """Exit `code`, no traceback, exactly one `error:` line on stderr holding every needle."""
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == code, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and len(errors) == 1, out.stderr[-2000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def the_run_dir(runs_dir: Path) -> Path:
    (d,) = [p for p in runs_dir.iterdir() if not p.name.startswith(".")]
    return d


def rows(run_dir) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall"} for r in files.read_jsonl(Path(run_dir) / "metrics.jsonl")]


# ----------------------------------------------------------------------------------------------
# Silent wrong results


def test_1_checkpoint_every_is_honoured_between_log_steps(tmp_path):
    """checkpoint_every=30 with log_every=50 saves at 30, 60, 90; a kill at 70 resumes from 60 and the
    metrics (whose loss windows straddle the checkpoint) equal an unbroken run's."""
    ov = [*SHORT, "train.checkpoint_every=30"]
    full = run(compose_config([*ov, f"runs_dir={tmp_path / 'a'}"]))
    cfg = compose_config([*ov, f"runs_dir={tmp_path / 'b'}"])
    run_killed_after(cfg, 70)
    d = the_run_dir(tmp_path / "b")
    assert rundir.load_checkpoint(d)["step"] == 60
    assert rows(run(cfg)["run_dir"]) == rows(full["run_dir"])


def test_2_and_10_another_runs_checkpoint_is_refused_on_the_cli(tmp_path):
    """A seed-2 checkpoint placed in an interrupted seed-1 run: exit 2, one line, the run untouched."""
    ov = [*SHORT, f"runs_dir={tmp_path}"]
    other = Path(run(compose_config([*ov, "seed=2"]))["run_dir"])
    cfg = compose_config([*ov, "seed=1"])
    run_killed_after(cfg, 70)
    (d,) = tmp_path.glob("fig1_bn-smoke-s1-*")
    before = (d / "metrics.jsonl").read_text()
    shutil.copy(other / "ckpt.pt", d / "ckpt.pt")
    out = cli("repro.train", *ov, "seed=1")
    assert_one_line_error(out, 2, "belongs to run fig1_bn-smoke-s2-", "resume=never")
    assert (d / "metrics.jsonl").read_text() == before and not (d / "summary.json").exists()


def test_10_checkpoints_of_another_network_or_without_keys_are_one_line_errors(tmp_path):
    ov = [*SHORT, f"runs_dir={tmp_path}"]
    baseline = torch.load(Path(run(compose_config([*ov, "experiment=fig1_baseline"]))["run_dir"]) / "ckpt.pt",
                          weights_only=False)
    cfg = compose_config(ov)
    run_killed_after(cfg, 70)
    (d,) = tmp_path.glob("fig1_bn-*")
    own = torch.load(d / "ckpt.pt", weights_only=True)
    del own["identity"], baseline["identity"]  # as checkpoints written before identities
    torch.save(own, d / "ckpt.pt")
    with pytest.raises(ReproError, match="carries no run identity.*pass resume=force") as e:  # refused unless asked
        run(cfg)
    assert "\n" not in str(e.value)
    forced = compose_config([*ov, "resume=force"])
    torch.save(baseline, d / "ckpt.pt")  # asked for, the network itself must still fit
    with pytest.raises(ReproError, match="does not fit this run's network") as e:
        run(forced)
    assert "\n" not in str(e.value)
    torch.save({"weights": torch.zeros(3)}, d / "ckpt.pt")
    with pytest.raises(ReproError, match="not a repro.train checkpoint.*lacks model"):
        run(cfg)
    torch.save(own, d / "ckpt.pt")
    assert run(forced)["status"] == "complete" and (d / "summary.json").exists()


def test_3_resume_refuses_data_that_changed_between_starts(tmp_path, monkeypatch):
    """Other files replace data/MNIST/raw between two starts of a run."""
    monkeypatch.chdir(tmp_path)
    _write_idx_dir(tmp_path / "data" / "MNIST" / "raw", n_train=100, n_test=20)
    cfg = compose_config([*SHORT, "data.source=auto", f"runs_dir={tmp_path / 'runs'}"])
    run_killed_after(cfg, 70)
    d = the_run_dir(tmp_path / "runs")
    env = (d / "env.json").read_text()
    _write_idx_dir(tmp_path / "data" / "MNIST" / "raw", n_train=120, n_test=20)
    with pytest.raises(ReproError, match="other data than this start finds.*n_train: 100 then, 120 now"):
        run(cfg)
    assert (d / "env.json").read_text() == env and '"n_train": 100' in env  # the record still tells the truth


def test_4_evaluate_finds_the_runs_own_data_from_anywhere(tmp_path, monkeypatch):
    """data.root is recorded absolute: evaluation from another directory scores the run's own test set,
    and refuses when the run's data changed since training."""
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    _write_idx_dir(tmp_path / "a" / "data" / "MNIST" / "raw", n_train=100, n_test=50)
    summary = run(compose_config([*SHORT, "data.source=auto", f"runs_dir={tmp_path / 'runs'}"]))
    config = (Path(summary["run_dir"]) / "config.yaml").read_text()
    assert f"root: {tmp_path / 'a' / 'data'}" in config and f"runs_dir: {tmp_path / 'runs'}" in config
    _write_idx_dir(tmp_path / "b" / "data" / "MNIST" / "raw", n_train=100, n_test=20)  # other files, elsewhere
    monkeypatch.chdir(tmp_path / "b")
    result = evaluate_runs([summary["run_dir"]])
    assert result["n_images"] == 50 and result["top1_error"] == pytest.approx(100 * (1 - summary["final_test_acc"]))
    _write_idx_dir(tmp_path / "a" / "data" / "MNIST" / "raw", n_train=100, n_test=20)
    with pytest.raises(ReproError, match="other data"):
        evaluate_runs([summary["run_dir"]])


def test_5_and_9_bad_values_fail_on_the_cli_before_anything_is_made(tmp_path):
    """`+train.stepz=10` (what Hydra's own message suggests) and a bad value: one line naming both, exit 2."""
    out = cli("repro.train", "+train.stepz=10", "optim.lr=-3", f"runs_dir={tmp_path / 'runs'}")
    assert_one_line_error(out, 2, "train.stepz is not a key", "did you mean train.steps", "optim.lr=-3.0")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("override, needle", [
    ("+train.stepz=10", "train.stepz is not a key"),
    ("+foo=1", "foo is not a key"),
    ("optim.lr=-3", "optim.lr=-3.0 is not valid"),
    ("optim.nesterov=true", "Nesterov needs momentum"),
    ("optim.decay_steps=0", "optim.decay_steps=0 is not valid"),
    ("train.eval_batch_size=0", "train.eval_batch_size=0"),
    ("logger.wandb.mode=onlin", "expected one of [offline, online, disabled]"),
    ("data.shuffle=yes", "expected one of [full, fixed_batches]"),
    ("optim.schedule=cosine", "expected one of [constant, exponential]"),
    ("optim.name=rmsprop", "expected one of [sgd, adam]"),
    ("resume=always", "expected one of [never, auto, force]"),
    ("model.norm=batch", "Invalid value 'batch', expected one of [bn, none, gn, ln], full_key: model.norm"),
    ("logger.progress=yes", "expected one of [auto, on, off]"),
    ("train.device=gpu0", "cuda:N"),
    ("data.workers=-1", "data.workers=-1"),
    ("train.init_from=/nonexistent/w.pt", "train.init_from='/nonexistent/w.pt' is not valid: it must be null or an existing"),
])
def test_9_every_value_is_checked_at_compose_time(override, needle):
    """Choices (enums in the schema, issue 19) fail inside Hydra's composition, the rest in validate: one line."""
    with pytest.raises(ReproError, match=None) as e:
        compose_config(["experiment=fig1_bn", "scale=smoke", override])
    assert needle in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------------------------
# Tracebacks where a one-line error is promised


def test_6_zero_image_test_file_is_one_line_and_leaves_nothing(tmp_path):
    paths = _write_idx_dir(tmp_path / "data" / "MNIST" / "raw", n_train=100, n_test=20, gz=False)
    paths["t10k-images-idx3-ubyte"].write_bytes(bytes.fromhex("00000803") + (0).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2)
    paths["t10k-labels-idx1-ubyte"].write_bytes(bytes.fromhex("00000801") + (0).to_bytes(4, "big"))
    out = cli("repro.train", "experiment=fig1_bn", "scale=smoke", "data.source=auto", f"data.root={tmp_path / 'data'}",
              f"runs_dir={tmp_path / 'runs'}")
    assert_one_line_error(out, 2, "t10k-images-idx3-ubyte: the file holds no images")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def _folder(tmp_path, *extra: str) -> list[str]:
    return ["experiment=bn_x5", "scale=smoke", "data.name=imagenet", f"data.root={tmp_path / 'data'}",
            "data.image_size=32", "train.batch_size=4", f"runs_dir={tmp_path / 'runs'}", *extra]


@pytest.mark.parametrize("damage, needle", [
    (lambda root: [shutil.rmtree(p) for p in (root / "train").iterdir()], "Couldn't find any class folder"),
    (lambda root: [p.unlink() for p in (root / "val" / "dog").iterdir()], "Found no valid file for the classes dog"),
])
def test_7_image_folders_without_images_are_one_line_errors(tmp_path, damage, needle):
    damage(make_image_folder(tmp_path / "data", train=2, val=1))
    with pytest.raises(DataError, match=needle) as e:
        run(compose_config(_folder(tmp_path, "data.workers=0")))
    assert "every class folder" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def _truncated_jpeg(path: Path) -> None:
    from torchvision.io import encode_jpeg

    data = encode_jpeg((torch.rand(3, 40, 48) * 255).to(torch.uint8)).numpy().tobytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("workers", [0, 2])
def test_8_corrupt_images_are_named_and_can_be_skipped(tmp_path, workers):
    root = make_image_folder(tmp_path / "data", train=6, val=2)
    _truncated_jpeg(root / "val" / "dog" / "1.png")  # truncated: PIL reads the header, then fails
    (root / "train" / "cat" / "3.png").write_bytes(b"not an image")
    with pytest.raises(DataError) as e:
        run(compose_config(_folder(tmp_path, f"data.workers={workers}", "train.steps=3")))
    assert str(e.value).startswith(f"{root / 'val' / 'dog' / '1.png'} is not a readable image") and "\n" not in str(e.value)
    _truncated_jpeg(root / "val" / "dog" / "1.png")
    shutil.copy(root / "val" / "cat" / "0.png", root / "val" / "dog" / "1.png")  # val mended; train still bad
    with pytest.raises(DataError, match="train/cat/3.png is not a readable image.*skip_corrupt") as e:
        run(compose_config(_folder(tmp_path, f"data.workers={workers}", "train.steps=3", "train.batch_size=12")))
    assert "\n" not in str(e.value)
    summary = run(compose_config(_folder(tmp_path, f"data.workers={workers}", "train.steps=3", "train.batch_size=12",
                                         "data.skip_corrupt=true")))
    assert summary["status"] == "complete" and summary["skipped_corrupt"] >= 1


def test_11_evaluate_limit_must_be_positive(tmp_path, capsys):
    out = cli("repro.evaluate", str(tmp_path), "--limit", "0", "--device", "cpu")
    assert_one_line_error(out, 2, "--limit 0")
    assert evaluate_main([str(tmp_path), "--limit", "-5", "--device", "cpu"]) == 2
    assert "--limit -5" in capsys.readouterr().err


def test_12_unwritable_runs_dir_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("a file where a folder should be")
    out = cli("repro.train", "experiment=fig1_bn", "scale=smoke", "train.steps=1", f"runs_dir={tmp_path / 'file' / 'runs'}")
    assert_one_line_error(out, 2, "cannot create the run directory", "runs_dir=DIR")

    def refused(self, *a, **k):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refused)  # a read-only or immutable folder (root ignores chmod)
    with pytest.raises(ReproError, match="Permission denied.*writable"):
        run(compose_config(["experiment=fig1_bn", "scale=smoke", "train.steps=1", f"runs_dir={tmp_path / 'ro'}"]))


def test_13_disk_full_while_checkpointing_loses_nothing(tmp_path, monkeypatch):
    cfg = compose_config([*SHORT, "train.checkpoint_every=30", f"runs_dir={tmp_path}"])
    real_save, calls = torch.save, []

    def save(obj, path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"half a checkpoint")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                               "data/0: file write failed")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(ReproError, match="could not write .*ckpt.pt .*MiB free there.*previous version .* MiB. is intact"):
        run(cfg)
    monkeypatch.setattr(torch, "save", real_save)
    d = the_run_dir(tmp_path)
    assert rundir.load_checkpoint(d)["step"] == 30 and not list(d.glob(".*.tmp"))
    assert run(cfg)["status"] == "complete"  # resumes from step 30


# ----------------------------------------------------------------------------------------------
# Weak spots


@pytest.mark.parametrize("workers", [0, 2])
def test_folder_dataset_resume_is_bit_identical(tmp_path, workers):
    """Worker-side augmentation is seeded per image from (run seed, epoch, index): a killed and resumed
    run over an image folder, with dropout, logs what an unbroken one logs (across an epoch boundary)."""
    make_image_folder(tmp_path / "data", train=6, val=2)
    ov = ["experiment=bn_baseline", "scale=smoke", "data.name=imagenet", f"data.root={tmp_path / 'data'}",
          "data.image_size=32", "train.batch_size=4", f"data.workers={workers}", "train.steps=6",
          "train.checkpoint_every=2", "train.eval_every=3", "resume=auto"]
    full = run(compose_config([*ov, f"runs_dir={tmp_path / 'a'}"]))
    cfg = compose_config([*ov, f"runs_dir={tmp_path / 'b'}"])
    run_killed_after(cfg, 5)
    assert rows(run(cfg)["run_dir"]) == rows(full["run_dir"])


@pytest.mark.slow
def test_ctrl_c_is_one_line_and_a_second_start_is_locked_out(tmp_path):
    """Ctrl-C prints where the last checkpoint is (exit 130); while a run runs, a second resume=auto
    start of it is refused; a lock left by a dead process is reported and taken over."""
    args = ["-m", "repro.train", "experiment=fig1_bn", "scale=smoke", "train.steps=1000000", "train.log_every=100",
            "train.eval_every=1000000", "train.probe_every=0", "train.checkpoint_every=100", "resume=auto",
            f"runs_dir={tmp_path}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # Ctrl-C as a terminal sends it: a suite started in the background (`cmd &` in a script) hands its children
    # SIGINT ignored, and Python then keeps ignoring it, so the child gets the default disposition back
    first = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("*/ckpt.pt")) and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.2)
        (d,) = [p.parent for p in tmp_path.glob("*/ckpt.pt")]
        second = cli(*args[1:])
        assert_one_line_error(second, 2, f"{d} is in use by pid {first.pid}")
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=60)
    finally:
        first.kill()
    assert_one_line_error(subprocess.CompletedProcess(first.args, first.returncode, "", err), 130,
                          "interrupted at step", f"{d / 'ckpt.pt'} holds step", "resume=auto")
    assert not (d / rundir.LOCK).exists()  # released on the way out
    (d / rundir.LOCK).write_text(json.dumps({"pid": second_pid_that_is_gone(), "host": socket.gethostname()}))
    rundir.release(rundir.acquire(d))  # stale: taken over, with a warning


def second_pid_that_is_gone() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_resume_skips_a_later_directory_without_checkpoint_and_says_so(tmp_path, caplog):
    cfg = compose_config([*SHORT, f"runs_dir={tmp_path}"])
    run_killed_after(cfg, 70)
    first = the_run_dir(tmp_path)
    orphan = first.with_name(first.name + ".2")
    orphan.mkdir()  # a later start killed before its first checkpoint
    (first / ".ckpt.pt.x1y2.tmp").write_bytes(b"half")  # left by a kill inside a checkpoint write
    with caplog.at_level("WARNING", logger="repro.resume"):
        summary = run(cfg)
    assert summary["run_dir"] == str(first) and f"{orphan} was left by a run stopped before" in caplog.text
    assert not list(first.glob(".*.tmp"))
    umask = os.umask(0)
    os.umask(umask)
    for name in ("ckpt.pt", "config.yaml", "summary.json", "metrics.jsonl"):
        assert (first / name).stat().st_mode & 0o777 == 0o666 & ~umask, name  # readable by others, as the umask says


def test_evaluate_warns_about_an_unfinished_run_and_records_its_step(tmp_path, caplog):
    cfg = compose_config([*SHORT, f"runs_dir={tmp_path}"])
    run_killed_after(cfg, 70)
    d = the_run_dir(tmp_path)
    with caplog.at_level("WARNING", logger="repro.resume"):
        result = evaluate_runs([d], limit=50)
    assert "unfinished (checkpoint at step 50 of 100)" in caplog.text
    assert result["per_model"][0]["step"] == 50 and result["per_model"][0]["steps"] == 100


@pytest.mark.slow
def test_a_sweep_runs_every_job_then_lists_the_failures(tmp_path):
    out = cli("repro.train", "-m", "experiment=fig1_bn", "scale=smoke", "train.steps=20", "optim.lr=-1,1",
              f"runs_dir={tmp_path}")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "1 job(s) of this sweep failed" in out.stderr and "optim.lr=-1.0 is not valid" in out.stderr
    assert [json.loads(p.read_text())["lr_base"] for p in tmp_path.glob("*/summary.json")] == [1.0]
