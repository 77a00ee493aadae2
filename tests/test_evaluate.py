"""Figure 4 evaluation: probability (not logit) ensembles, EMA vs Alg. 2, exact-once under DDP, errors."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from repro.data.crops import multi_crop
from repro.errors import ReproError
from repro.evaluate import (
    correct_at,
    evaluate_runs,
    inference_network,
    load_runs,
    main,
    view_probabilities,
)
from repro.models import build_model
from repro.train import run
from tests.conftest import ROOT, compose_config, make_image_folder

N_TEST = 501  # odd, so two ranks get unequal shards
# Constant logits over classes 0-2 (the rest -20): their mean picks class 2, their mean probability
# picks class 1, so the two ensemble rules disagree on every image.
LOGITS_A = [4.0, -4.0, 3.0]
LOGITS_B = [-6.0, 5.0, 1.0]



@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    """One smoke-scale Figure 1 BN network on an odd-sized test set."""
    runs = tmp_path_factory.mktemp("runs")
    summary = run(compose_config(["experiment=fig1_bn", "scale=smoke", f"runs_dir={runs}",
                                  f"data.limit_test={N_TEST}"]))
    assert summary["status"] == "complete"
    return Path(summary["run_dir"])


def constant_copy(src: Path, dst: Path, logits: list[float]) -> Path:
    """A copy of a run whose network outputs `logits` for every image (zero output weights)."""
    shutil.copytree(src, dst)
    ckpt = torch.load(dst / "ckpt.pt", weights_only=False)
    sd = ckpt["model"]
    w, b = [k for k, v in sd.items() if v.dim() == 2][-1], [k for k, v in sd.items() if v.dim() == 1][-1]
    sd[w].zero_()
    sd[b].fill_(-20.0)
    sd[b][: len(logits)] = torch.tensor(logits)
    torch.save(ckpt, dst / "ckpt.pt")
    return dst


def test_views_average_probabilities_not_logits():
    a, b = torch.tensor([LOGITS_A]), torch.tensor([LOGITS_B])
    assert ((a + b) / 2).argmax().item() == 2
    probs = view_probabilities(torch.nn.Identity(), torch.cat([a, b]), [2])  # one image, two views
    assert probs.argmax().item() == 1
    torch.testing.assert_close(probs, (a.softmax(-1) + b.softmax(-1)) / 2)
    assert correct_at(probs, torch.tensor([0]), ks=(1, 2)) == [0, 1]


def test_ensemble_of_runs_averages_probabilities(smoke_run, tmp_path):
    a = constant_copy(smoke_run, tmp_path / "a", LOGITS_A)
    b = constant_copy(smoke_run, tmp_path / "b", LOGITS_B)
    result = evaluate_runs([a, b], crops=10)
    assert result["models"] == 2 and result["n_images"] == N_TEST
    assert set(result["predictions"]) == {1}
    assert [m["run_dir"] for m in result["per_model"]] == [str(a), str(b)]


def test_one_crop_ema_reproduces_the_runners_final_accuracy(smoke_run, tmp_path, capsys):
    out = tmp_path / "res" / "ema.json"
    args = [str(smoke_run), "--crops", "1", "--bn-stats", "ema", "--device", "cpu", "--out", str(out)]
    assert main(args) == 2  # its data.limit_test departs from the recipe: refused, the key named
    assert "data.limit_test=" in capsys.readouterr().err
    assert main([*args, "--any-settings"]) == 0
    result = json.loads(out.read_text())
    summary = json.loads((smoke_run / "summary.json").read_text())
    assert result["top1_error"] == pytest.approx(100 * (1 - summary["final_test_acc"]))
    assert result["n_images"] == len(result["predictions"]) == N_TEST
    assert result["crops"] == 1 and result["crop_size"] == 28 and result["bn_stats"] == "ema"


def test_full_test_set_scores_the_whole_split_after_checking_the_run(smoke_run):
    """The run evaluated the first 501 test images while training: `full_test` scores it on every image of
    the test split (Figure 4), and its first 501 predictions are those of the run's own test set."""
    own, whole = evaluate_runs([smoke_run]), evaluate_runs([smoke_run], full_test=True)
    assert own["n_images"] == N_TEST and own["dataset"]["n_test"] == N_TEST
    assert whole["n_images"] == whole["dataset"]["n_test"] > N_TEST  # the smoke data's whole test split
    assert whole["predictions"][:N_TEST] == own["predictions"]
    assert evaluate_runs([smoke_run], full_test=True, limit=700)["n_images"] == 700
    with pytest.raises(ReproError, match=f"--limit 700: this test set has only {N_TEST} images"):
        evaluate_runs([smoke_run], limit=700)  # more than the run's own test set: refused, not scored on fewer


@pytest.mark.parametrize("experiment", ["bn_x30", "ensemble_5", "fig1_bn"])  # ensemble_5: per-activation BN
def test_inference_network_computes_the_eval_network(experiment):
    """Folded BN (Alg. 2, step 5) in channels_last memory: the eval-mode network's outputs to float rounding,
    with BN statistics far from the identity, and the trained network left as it was."""
    cfg = compose_config([f"experiment={experiment}", "scale=cpu"])
    torch.manual_seed(0)
    net = build_model(cfg.model, 1, 10, 28)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.3, 3)
            if m.affine:
                m.weight.data.uniform_(0.5, 2), m.bias.data.uniform_(-1, 1)
    x = torch.rand(64, 1, 28, 28)
    want = net.eval()(x)
    fast = inference_network(net)
    assert sum(isinstance(m, torch.nn.Identity) for m in fast.modules()) > 0  # some BN folded away
    torch.testing.assert_close(fast(x.contiguous(memory_format=torch.channels_last)), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(net(x), want)  # the input network is unchanged


def test_population_statistics_evaluation_reports_its_audit(smoke_run):
    result = evaluate_runs([smoke_run], crops=1, bn_stats="population", pop_batches=20)
    assert result["pop_batches"] == 20 and result["pop_batch_size"] == [60]
    audit = result["per_model"][0]["bn_audit"]
    assert [r["name"] for r in audit] == ["hidden.0.norm", "hidden.1.norm", "hidden.2.norm"]
    assert all(0 <= r["dmean_mean"] < 1 and 0 <= r["dlogvar_mean"] < 1 for r in audit)
    assert result["top1_error"] < 50  # chance is 90


def test_bad_inputs_are_one_line_errors(smoke_run, tmp_path, capsys):
    with pytest.raises(ReproError, match="does not exist"):
        evaluate_runs([tmp_path / "nope"])
    unfinished = tmp_path / "unfinished"
    shutil.copytree(smoke_run, unfinished)
    (unfinished / "ckpt.pt").unlink()
    with pytest.raises(ReproError, match="has no ckpt.pt"):
        evaluate_runs([smoke_run, unfinished])
    other = Path(run(compose_config(["experiment=fig1_bn", "scale=smoke", f"runs_dir={tmp_path}", "train.steps=1",
                                     "data.limit_test=400"]))["run_dir"])
    with pytest.raises(ReproError, match="different test sets") as e:
        evaluate_runs([smoke_run, other])
    first, second = str(e.value).split("(", 1)[1].split(" vs ")
    assert first != second.split(")")[0]  # the two descriptions say what differs
    edited = tmp_path / "edited"  # a config.yaml edited after training no longer matches its checkpoint
    shutil.copytree(smoke_run, edited)
    cfg = yaml.safe_load((edited / "config.yaml").read_text())
    cfg["data"]["limit_test"] = 400
    (edited / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ReproError, match="belongs to run"):
        evaluate_runs([edited])
    assert main([str(tmp_path / "nope"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: run directory") and "\n" not in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_evaluate_each_image_exactly_once(smoke_run, tmp_path):
    out = tmp_path / "ddp.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "repro.evaluate", str(smoke_run), "--crops", "10", "--bn-stats", "population",
           "--pop-batches", "10", "--device", "cpu", "--out", str(out), "--any-settings"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["world_size"] == 2
    assert result["n_images"] == N_TEST and len(result["predictions"]) == N_TEST
    single = evaluate_runs([smoke_run], crops=10, bn_stats="population", pop_batches=10)
    assert result["predictions"] == single["predictions"]
    assert result["top1_error"] == pytest.approx(single["top1_error"])


# ----------------------------------------------------------------------------------------------
# Folder datasets (ImageNet layout): views from each decoded, uncropped validation image


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> Path:
    """A smoke BN-x5 trained on a generated ImageNet-layout folder; 2 of the 5 val images per class
    are square (48 distinct views of 144), the rest 40x48 (144)."""
    root = make_image_folder(tmp_path_factory.mktemp("imagenet"), square_val=2)
    summary = run(compose_config(["experiment=bn_x5", "scale=smoke", "data.name=imagenet", f"data.root={root}",
                                  "data.image_size=32", "data.workers=0", "train.steps=3", "train.batch_size=4",
                                  f"runs_dir={root.parent / 'runs'}"]))
    assert summary["status"] == "complete"
    return Path(summary["run_dir"])


def test_view_probabilities_average_each_images_own_views():
    model = torch.nn.Linear(3, 4)
    views, counts = torch.randn(7, 3), [1, 4, 2]
    got = view_probabilities(model, views, counts)
    p = model(views).softmax(-1)
    torch.testing.assert_close(got, torch.stack([p[:1].mean(0), p[1:5].mean(0), p[5:].mean(0)]))


def test_folder_one_crop_is_the_runners_evaluation(folder_run):
    result = evaluate_runs([folder_run], crops=1)
    summary = json.loads((folder_run / "summary.json").read_text())
    assert result["n_images"] == 10 and result["crop_size"] == 32
    assert result["top1_error"] == pytest.approx(100 * (1 - summary["final_test_acc"]))
    assert result["dataset"]["dataset"] == "imagenet" and result["dataset"]["n_test"] == 10


def test_folder_views_come_from_the_uncropped_image(folder_run):
    from torchvision.transforms.v2.functional import pil_to_tensor

    data = load_runs([folder_run], torch.device("cpu"))[0].data
    batches = list(data.view_batches(list(range(10)), 144, 32, batch_size=10_000))
    assert [c for _, c in batches] == [[48, 48, 144, 144, 144] * 2]  # square images: 48 distinct views
    views, _ = batches[0]
    assert views.shape == (48 * 4 + 144 * 6, 3, 32, 32)
    img = data.val[0][0]  # the PIL image as stored: 40x40
    assert views.dtype == torch.uint8  # a quarter of the memory; floats only on the device
    torch.testing.assert_close(views[:48], multi_crop(pil_to_tensor(img)[None], 144, 32, unique=True)[0])


def test_folder_ensemble_with_population_statistics(folder_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(folder_run, other)
    result = evaluate_runs([folder_run, other], crops=10, bn_stats="population", pop_batches=3)
    assert result["models"] == 2 and result["n_images"] == len(result["predictions"]) == 10
    a, b = result["per_model"]
    assert a["top1_error"] == b["top1_error"] == result["top1_error"]  # identical members
    assert a["bn_audit"] and result["pop_batch_size"] == [4, 4]


def test_folder_and_tensor_runs_are_different_test_sets(folder_run, smoke_run):
    with pytest.raises(ReproError, match="different test sets"):
        evaluate_runs([folder_run, smoke_run])
