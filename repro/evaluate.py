"""Figure 4 (§4.2.3): evaluate trained runs with 1, 10 or 144 crops, alone or as an ensemble.

    python -m repro.evaluate RUN_DIR [RUN_DIR ...] --crops 144 --bn-stats population --out fig4.json
    torchrun --nproc_per_node=2 -m repro.evaluate RUN_DIR ... --device cpu

Each network's softmax probabilities are averaged over its views, then the ensemble takes the
arithmetic mean of the networks' class probabilities (§4.2.3), never of their logits. In-memory
datasets (MNIST, Fashion-MNIST) cut the views from the stored test tensors; folder datasets (ImageNet,
CIFAR-10) cut them from each decoded, uncropped validation image, in DataLoader workers, and the one
view is the runner's own resize-and-center-crop. Every batch of views goes through all the networks,
so the images are decoded once however large the ensemble. BN uses either
the moving averages left by training (`ema`, §3.1's alternative) or Alg. 2's population statistics
recomputed over K training mini-batches (`population`, repro.models.bnstats). Each network is evaluated
as Alg. 2's inference network: every BN that follows a conv or linear layer folded into it, in
channels_last memory (2.1-2.3x faster on one CPU thread: results/bench/evaluate_cpu_1thread.txt). The test set
is the one the run evaluated during training (its `data.limit_test` first images), or with
`--full-test-set` the dataset's whole test split. Under torchrun each rank evaluates `dist.shard(N)`, so
every test image is counted exactly once.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import yaml
from omegaconf import OmegaConf
from torch import nn
from tqdm import tqdm

from repro.config import Config
from repro.data.crops import VIEWS
from repro.data.evalsets import FolderData, TensorData, load_data
from repro.errors import ReproError
from repro.models import build_model, fold_bn
from repro.models.bnstats import bn_audit, buffers_identical_across_ranks, population_statistics
from repro.runs import dist, files, rundir
from repro.runs.records import recipe_problems

BN_STATS = ("ema", "population")
DEFAULT_POP_BATCHES = 100  # our choice: Alg. 2 says "many" mini-batches; 100 x 60 = 6,000 images for Fig. 1


# ----------------------------------------------------------------------------------------------
# Averaging and scoring


def view_probabilities(model: nn.Module, views: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """(n, K): each image's class probabilities averaged over its `counts[i]` consecutive views.

    §4.2.3's rule, for views as for networks: the mean of the softmax, never the softmax of the mean logit."""
    probs = model(views).float().softmax(-1)  # (sum V, K)
    if len(set(counts)) == 1:
        return probs.view(len(counts), counts[0], -1).mean(1)
    return torch.stack([p.mean(0) for p in probs.split(counts)])


def correct_at(probs: torch.Tensor, y: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """How many labels `y` fall in the top-k classes of `probs`, for each k (capped at K classes)."""
    top = probs.topk(min(max(ks), probs.shape[-1]), dim=-1).indices  # (N, k)
    hits = top == y[:, None]
    return [int(hits[:, :k].any(1).sum()) for k in ks]


# ----------------------------------------------------------------------------------------------
# Loading runs


@dataclass
class Run:
    """One trained network ready to evaluate."""

    run_dir: Path
    cfg: Config
    data: TensorData | FolderData
    model: nn.Module
    step: int  # the training step its checkpoint holds (train.steps unless unfinished)


def read_config(run_dir: Path) -> Config:
    """The typed Config a run recorded in its config.yaml."""
    path = run_dir / "config.yaml"
    if not path.exists():
        raise ReproError(f"{run_dir} has no config.yaml: pass a run directory written by repro.train")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), rundir.recorded_config(yaml.safe_load(path.read_text())))
        return OmegaConf.to_object(merged)
    except Exception as e:  # omegaconf raises several types for keys or values the schema rejects
        raise ReproError(f"{path} does not fit this version's config schema ({type(e).__name__}: "
                         f"{str(e).splitlines()[0]})") from e


def _test_set(data) -> str:
    d = data.describe()
    binarized = ", binarized" if d.get("binarized") else ""
    return f"{d['dataset']} from {d['source']}, {len(data.labels)} images{binarized}, checksum {d['checksum'][:8]}"


def load_runs(run_dirs: list[str | Path], device: torch.device, full_test: bool = False) -> list[Run]:
    """Each run's config, data and checkpointed network; all must share one test set. The checkpoint is
    checked against the data the run trained with; `full_test` then evaluates on every image of the
    dataset's test split instead of the first `data.limit_test` (test images never reach training)."""
    if not run_dirs:
        raise ReproError("no run directory given: pass one or more runs/<experiment>-... directories")
    cache: dict[str, TensorData | FolderData] = {}  # ensemble members usually share their data config
    runs = []
    for d in map(Path, run_dirs):
        if not d.is_dir():
            raise ReproError(f"run directory {d} does not exist")
        cfg = read_config(d)
        ckpt = rundir.load_checkpoint(d)
        key = repr(asdict(cfg.data))
        if ckpt is not None and key not in cache:
            cache[key] = load_data(cfg.data)
        rundir.check_evaluable(d, ckpt, cfg, cache.get(key))
        data = cache[key]
        if full_test and cfg.data.limit_test is not None:
            whole = replace(cfg.data, limit_test=None)
            if (wkey := repr(asdict(whole))) not in cache:
                cache[wkey] = load_data(whole)
            data = cache[wkey]
        model = build_model(cfg.model, data.in_chans, data.num_classes, data.image_size)
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise ReproError(f"{d}/ckpt.pt does not fit the model its config.yaml builds "
                             f"({cfg.model.name}): {str(e).splitlines()[0]}") from e
        runs.append(Run(d, cfg, data, model.to(device).eval(), ckpt["step"]))
    first = runs[0]
    for r in runs[1:]:
        if r.data is not first.data and not first.data.same_test_set(r.data):
            raise ReproError(
                f"{first.run_dir.name} and {r.run_dir.name} have different test sets ({_test_set(first.data)} "
                f"vs {_test_set(r.data)}): an ensemble averages networks over one test set")
    return runs


def training_batches(n: int, batch_size: int, num_batches: int, seed: int) -> list[torch.Tensor]:
    """Indices of `num_batches` mini-batches: successive seeded shuffles of n images, tails dropped."""
    if batch_size > n:
        raise ReproError(f"train.batch_size={batch_size} exceeds the {n} training images")
    gen = torch.Generator().manual_seed(seed)
    per_pass = n // batch_size
    out = []
    while len(out) < num_batches:
        out += list(torch.randperm(n, generator=gen)[: per_pass * batch_size].view(per_pass, batch_size))
    return out[:num_batches]


def with_population_statistics(run: Run, num_batches: int, device: torch.device) -> nn.Module:
    """Alg. 2: the run's network with BN statistics averaged over `num_batches` training batches."""
    # m is the per-replica batch each BN layer normalized over in training. The images are the
    # undistorted training set, as the inference network sees images (our choice: Alg. 2 does not say).
    indices = training_batches(run.data.n_train, run.cfg.train.batch_size, num_batches, run.cfg.seed)
    mine = dist.shard(num_batches)  # every rank draws the same K batches and feeds its share of them
    batches = run.data.train_batches([indices[k] for k in mine])
    return population_statistics(run.model, batches, len(mine))


# ----------------------------------------------------------------------------------------------
# Evaluation


def inference_network(model: nn.Module) -> nn.Module:
    """Alg. 2, step 5: an eval-mode copy with each BN that follows a conv or linear layer folded into it
    (per-activation BN stays a BN), in channels_last memory. The same function as `model.eval()` to float
    rounding (tests/test_evaluate.py), 2.1-2.3x faster on one CPU thread (scripts/bench_evaluate.py)."""
    return fold_bn(model).to(memory_format=torch.channels_last)


class ImageProgress:
    """Evaluation progress: a tqdm bar on a terminal; off one (a file, nohup, SLURM) a line every
    `every_s` seconds and at the end, as training prints (a 144-view evaluation can run for an hour)."""

    def __init__(self, desc: str, total: int, progress: bool | None, every_s: float = 30.0):
        self.desc, self.total, self.every_s, self.done = desc, total, every_s, 0
        show = dist.is_main() and (progress if progress is not None else True)
        self.bar = tqdm(total=total, unit="img", dynamic_ncols=True, desc=desc) if show and sys.stderr.isatty() else None
        self.lines = show and self.bar is None
        self.t0 = self.t_line = time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.lines and (time.perf_counter() - self.t_line >= self.every_s or self.done == self.total):
            self._line()

    def _line(self) -> None:
        now = time.perf_counter()
        rate = self.done / max(now - self.t0, 1e-9)
        eta = (self.total - self.done) / rate if rate else 0.0
        print(f"evaluate {self.desc}: {self.done:,}/{self.total:,} images ({100 * self.done / max(self.total, 1):.0f}%), "
              f"{rate:.1f} images/s, ETA {int(eta) // 60}m{int(eta) % 60:02d}s", file=sys.stderr, flush=True)
        self.t_line = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def evaluate_runs(run_dirs: list[str | Path], crops: int = 1, bn_stats: str = "ema",
                  pop_batches: int = DEFAULT_POP_BATCHES, *, batch_size: int = 1024,
                  crop_size: int | None = None, device: str | torch.device = "cpu",
                  progress: bool | None = None, limit: int | None = None, full_test: bool = False) -> dict:
    """Top-1/top-5 error (%) of one network or the probability-averaged ensemble of several, on the first
    `limit` images of the runs' test set (`full_test`: of the dataset's whole test split)."""
    if crops not in VIEWS:
        raise ReproError(f"--crops {crops} is not one of {VIEWS}")
    if bn_stats not in BN_STATS:
        raise ReproError(f"--bn-stats {bn_stats!r} is not one of {BN_STATS}")
    if bn_stats == "population" and pop_batches < 1:
        raise ReproError("--pop-batches must be at least 1 for population statistics")
    if limit is not None and limit < 1:
        raise ReproError(f"--limit {limit}: give a number of test images >= 1, or leave --limit out for all")
    if batch_size < 1:
        raise ReproError(f"--batch-size {batch_size}: give a number of views >= 1")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    t0 = time.perf_counter()
    runs = load_runs(run_dirs, device, full_test)
    data = runs[0].data
    if limit is not None and limit > len(data.labels):
        raise ReproError(f"--limit {limit}: this test set has only {len(data.labels)} images; give at most "
                         f"{len(data.labels)}, or leave --limit out for all")
    y_test = data.labels[:limit]  # limit: the first N images
    crop_size = crop_size or data.image_size  # the size the runner trained and evaluated at
    if isinstance(data, FolderData) and crop_size != data.image_size:
        raise ReproError(f"--crop-size {crop_size}: the 1-crop view of a folder dataset is the runner's "
                         f"{data.image_size} px crop; leave --crop-size out")
    mine = list(dist.shard(len(y_test)))
    y_mine = y_test[mine].to(device)

    models = []
    audits = []
    for run in runs:
        model = run.model
        if bn_stats == "population":
            model = with_population_statistics(run, pop_batches, device)
            audits.append(bn_audit(run.model, model))
        # The checkpoint is one file and the all-reduce gives one sum, so this holds by construction;
        # checked because per-replica BN statistics that drift apart make ranks disagree silently.
        if not buffers_identical_across_ranks(model):
            raise RuntimeError("BN statistics differ across ranks; evaluation would not be one network")
        models.append(inference_network(model))

    probs = [[] for _ in models]
    bar = ImageProgress(f"{crops}-crop x {len(models)} network(s), {bn_stats} BN statistics", len(mine), progress)
    with torch.no_grad():
        for views, counts in data.view_batches(mine, crops, crop_size, batch_size):
            views = views.to(device, non_blocking=True)
            if views.dtype == torch.uint8:  # folder datasets' multi-crop views
                views = views.float().div_(255)
            views = views.contiguous(memory_format=torch.channels_last)
            for out, model in zip(probs, models, strict=True):
                out.append(view_probabilities(model, views, counts))
            bar.update(len(counts))
    bar.close()
    k = data.num_classes
    probs = [torch.cat(p) if p else torch.zeros(0, k, device=device) for p in probs]
    ensemble = torch.stack(probs).mean(0)  # §4.2.3: arithmetic mean of the networks' probabilities

    local = {
        "index": mine, "pred": ensemble.argmax(-1).tolist(), "model_pred": [p.argmax(-1).tolist() for p in probs],
        "correct": [correct_at(p, y_mine) for p in probs] + [correct_at(ensemble, y_mine)],
    }
    parts = dist.all_gather_objects(local)  # small: indices, top-1 labels and counts per rank
    index = [i for p in parts for i in p["index"]]
    if sorted(index) != list(range(len(y_test))):  # exactly once: no image padded in or dropped
        raise RuntimeError(f"ranks evaluated {len(index)} images, not each of the {len(y_test)} once")
    preds, model_preds = [0] * len(y_test), [[0] * len(y_test) for _ in runs]
    for p in parts:
        for i, c in zip(p["index"], p["pred"], strict=True):
            preds[i] = c
        for mp, pm in zip(model_preds, p["model_pred"], strict=True):
            for i, c in zip(p["index"], pm, strict=True):
                mp[i] = c
    counts = torch.tensor([p["correct"] for p in parts]).sum(0)  # (models + 1, 2)
    n = len(y_test)

    def errors(c: torch.Tensor) -> dict:
        return {"top1_error": 100.0 * (1 - c[0].item() / n), "top5_error": 100.0 * (1 - c[1].item() / n)}

    per_model = [{"run_dir": str(r.run_dir), "experiment": r.cfg.experiment, "seed": r.cfg.seed, "step": r.step,
                  "steps": r.cfg.train.steps, **errors(c)} for r, c in zip(runs, counts[:-1], strict=True)]
    for row, audit in zip(per_model, audits, strict=False):
        row["bn_audit"] = audit
    return {
        **errors(counts[-1]), "n_images": n, "crops": crops, "crop_size": crop_size, "models": len(runs),
        "bn_stats": bn_stats, "folded_bn": True, "pop_batches": pop_batches if bn_stats == "population" else None,
        "pop_batch_size": [r.cfg.train.batch_size for r in runs] if bn_stats == "population" else None,
        "dataset": data.describe(), "num_classes": data.num_classes, "top5_k": min(5, data.num_classes),
        "world_size": dist.world_size(), "wall_s": round(time.perf_counter() - t0, 2),
        "per_model": per_model, "predictions": preds, "model_predictions": model_preds, "labels": y_test.tolist(),
    }


def format_table(result: dict) -> str:
    """The result as a small text table: each network, then the ensemble when there are several."""
    head = f"{'model':<40} {'crops':>5} {'bn stats':>10} {'N':>6} {'top-1 err':>9} {'top-5 err':>9}"
    rows = [(Path(m["run_dir"]).name, m) for m in result["per_model"]]
    if result["models"] > 1:
        rows.append((f"ensemble of {result['models']}", result))
    lines = [head] + [f"{name[:40]:<40} {result['crops']:>5} {result['bn_stats']:>10} {result['n_images']:>6} "
                      f"{r['top1_error']:>8.2f}% {r['top5_error']:>8.2f}%" for name, r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Entry


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m repro.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories written by repro.train")
    p.add_argument("--crops", type=int, choices=VIEWS, default=1, help="views per image (default 1)")
    p.add_argument("--bn-stats", choices=BN_STATS, default="ema",
                   help="BN statistics: training moving averages, or Alg. 2's population statistics")
    p.add_argument("--pop-batches", type=int, default=DEFAULT_POP_BATCHES, metavar="K",
                   help=f"training mini-batches for population statistics (default {DEFAULT_POP_BATCHES})")
    p.add_argument("--batch-size", type=int, default=1024, help="views per forward pass")
    p.add_argument("--crop-size", type=int, default=None, help="network input size (default: the size the run trained at)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (torchrun: one GPU per rank)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N test images")
    p.add_argument("--full-test-set", action="store_true",
                   help="every image of the dataset's test split, not only the data.limit_test the run evaluated")
    p.add_argument("--out", type=Path, default=None, metavar="FILE.json", help="write the result here")
    p.add_argument("--any-settings", action="store_true",
                   help="also evaluate runs whose settings depart from their experiment's recipe")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """CLI: evaluate, print the table on rank 0, write --out; `error: ...` and exit 2 on bad input."""
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: --device {args.device} but no CUDA GPU is visible: use --device cpu (or auto)", file=sys.stderr)
        return 2
    if args.out is not None and (problem := _unwritable(args.out)):  # before the work, not after the table
        print(f"error: cannot write --out {args.out} ({problem}): pass a writable path", file=sys.stderr)
        return 2
    device = dist.setup(args.device)
    main_rank = dist.is_main()  # asked before teardown, after which every process reads as rank 0
    try:
        if not args.any_settings and (problems := recipe_problems(args.run_dirs)):
            raise ReproError("; ".join(problems) + " (pass --any-settings to evaluate them anyway)")
        result = evaluate_runs(args.run_dirs, args.crops, args.bn_stats, args.pop_batches,
                               batch_size=args.batch_size, crop_size=args.crop_size, device=device,
                               limit=args.limit, full_test=args.full_test_set)
    except ReproError as e:
        if main_rank:
            print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        dist.teardown()
    if main_rank:
        print(format_table(result))
        if args.out is not None:
            try:
                files.write_json(args.out, result)
            except ReproError as e:  # the disk filled meanwhile: the table above is the result
                print(f"error: {e}", file=sys.stderr)
                return 2
    return 0


def _unwritable(out: Path) -> str | None:
    """Why `out` cannot be written (its folder made if missing), or None."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return e.strerror
    return None if os.access(out.parent, os.W_OK) else f"{out.parent} is not writable"


if __name__ == "__main__":
    sys.exit(main())
