"""The data sections of scripts/gpu_check.py: a generated ImageFolder of ImageNet-sized JPEGs, the
folder loader against GPU decoding, and a torchrun kill-and-resume of bn_x30 on that folder."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader

from repro.config import compose
from repro.data import loaders
from repro.data.mnist import idx_bytes, read_idx_dir

ROOT = Path(__file__).resolve().parent.parent
FMNIST_DIRS = (ROOT / ".gpu_data" / "fashion-mnist", Path("/usr/share/datasets/fashion-mnist"))
STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------------
# Data: real Fashion-MNIST where it was carried or installed, else a random stand-in


def fashion_mnist(tmp: Path) -> dict:
    """A folder of the four Fashion-MNIST IDX files: the real ones if found, else random images."""
    for d in FMNIST_DIRS:
        if all((d / f"{s}.gz").is_file() or (d / s).is_file() for s in STEMS):
            return {"dir": str(d), "real": True}
    d = tmp / "fashion-mnist-standin"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for stem, n in zip(STEMS, (6000, 6000, 1000, 1000)):
        a = rng.integers(0, 256, (n, 28, 28)) if "images" in stem else rng.integers(0, 10, n)
        (d / f"{stem}.gz").write_bytes(gzip.compress(idx_bytes(a), compresslevel=1))
    return {"dir": str(d), "real": False}


def _jpeg(job) -> int:
    """One ImageNet-sized JPEG from a 28 px image: upscaled, tinted, on a coloured background, with
    sensor-like noise (so the file's size and decoding cost resemble a photo's); returns its bytes."""
    path, img, seed, (w, h) = job
    g = torch.Generator().manual_seed(seed)
    fg = F.interpolate(torch.from_numpy(img).float()[None, None] / 255, size=(h, h), mode="bilinear")[0]
    canvas = (torch.rand(3, 1, 1, generator=g) * 0.4).expand(3, h, w).clone()
    off = int(torch.randint(0, w - h + 1, (1,), generator=g))
    tint = torch.rand(3, 1, 1, generator=g) * 0.6 + 0.4
    canvas[:, :, off:off + h] = canvas[:, :, off:off + h] * (1 - fg) + tint * fg
    canvas += torch.randn(3, h, w, generator=g) * 0.06
    torchvision.io.write_jpeg((canvas.clamp(0, 1) * 255).to(torch.uint8), path, quality=90)
    return Path(path).stat().st_size


def _balanced(y: np.ndarray, n: int) -> list[int]:
    """n indices taking the classes in turn (the first image of each class, then the second, ...)."""
    per_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    rank = np.concatenate([np.arange(len(ix)) for ix in per_class])
    return np.concatenate(per_class)[np.argsort(rank, kind="stable")][:n].tolist()


def make_folder(root: Path, fmnist: dict, sz) -> dict:
    """ImageNet layout (train/ and val/, one folder per class) of generated JPEGs. The training split
    lists each unique image `folder_links` times (hard links), so one pass is long enough to time the
    loader in steady state without generating thousands more files."""
    t0 = time.time()
    x_tr, y_tr, x_te, y_te = read_idx_dir(Path(fmnist["dir"]), "check the Fashion-MNIST files")
    jobs, links = [], []
    for split, xs, ys, n in (("train", x_tr, y_tr, sz.folder_train), ("val", x_te, y_te, sz.folder_val)):
        # the first images of each class in turn, so every class has a folder in both splits
        for i in _balanced(ys, n):
            d = root / split / f"class{int(ys[i])}"
            d.mkdir(parents=True, exist_ok=True)
            jobs.append((str(d / f"{i}.jpg"), xs[i], i + (0 if split == "train" else 10**6), sz.jpeg_size))
            if split == "train":
                links += [(d / f"{i}.jpg", d / f"{i}_{k}.jpg") for k in range(1, sz.folder_links)]
    with Pool(min(16, os.cpu_count()), initializer=torch.set_num_threads, initargs=(1,)) as pool:
        sizes = pool.map(_jpeg, jobs, chunksize=16)
    for src, dst in links:
        os.link(src, dst)
    return {"root": str(root), "train": sz.folder_train * sz.folder_links, "train_unique": sz.folder_train,
            "val": sz.folder_val, "jpeg_size": list(sz.jpeg_size), "mean_kib": float(np.mean(sizes)) / 1024,
            "from_real_fashion_mnist": fmnist["real"], "seconds": round(time.time() - t0, 1)}


# ----------------------------------------------------------------------------------------------
# 3. The input pipeline


def _folder_cfg(sz, root: Path):
    return compose(["experiment=bn_x30", "scale=gpu", "data.name=imagenet", f"data.root={root}",
                    f"data.image_size={sz.img}", f"data.workers={sz.workers}"]).data


class _FileBytes(torch.utils.data.Dataset):
    """(the file's bytes, label) for each sample of an ImageFolder: workers only read files (as bytes:
    tensors would travel as shared-memory file descriptors, thousands per pass)."""

    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        return Path(path).read_bytes(), label


def _lists(batch):
    return [torch.frombuffer(bytearray(b[0]), dtype=torch.uint8) for b in batch], torch.tensor([b[1] for b in batch])


def _rate(batches, n: int, batch: int, device) -> float:
    """Images/s from the first batch's arrival to the n-th's (worker start-up excluded)."""
    it = iter(batches)
    next(it)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n - 1):
        next(it)
    _sync(device)
    return (n - 1) * batch / (time.perf_counter() - t0)


def pipeline(sz, device, root: Path) -> dict:
    """Decoded-and-augmented training images/s: the runner's loader (CPU workers) and nvJPEG on the GPU."""
    from torchvision.datasets import ImageFolder

    cfg = _folder_cfg(sz, root)
    train_t, _ = loaders.folder_transforms(cfg)
    train, _ = loaders.folder_datasets(cfg)
    stream = loaders.LoaderStream(train, sz.loader_batch, 1, sz.workers, device)
    cpu_ips = _rate(iter(stream.next, None), sz.loader_batches, sz.loader_batch, device)
    del stream  # its workers stop before the next path is timed

    def gpu_batches(augment):
        data = DataLoader(_FileBytes(ImageFolder(root / "train").samples), batch_size=sz.loader_batch,
                          shuffle=True, num_workers=sz.workers, collate_fn=_lists, prefetch_factor=4)
        for files, y in data:
            yield augment(torchvision.io.decode_jpeg(files, device=device.type)), y.to(device, non_blocking=True)

    gen = torch.Generator(device=device).manual_seed(0)
    paths = {  # decode alone bounds the others; per-image transforms are the runner's own, on the GPU
        "gpu_decode_only": lambda images: images,
        "gpu_batched": lambda images: gpu_augment(images, sz.img, cfg.distort, gen),
        "gpu_per_image": lambda images: torch.stack([train_t(im) for im in images]),
    }
    n = {"gpu_per_image": max(2, sz.loader_batches // 4)}  # slow: fewer batches
    out = {"workers": sz.workers, "batch": sz.loader_batch, "batches_timed": sz.loader_batches - 1,
           "transforms": repr(train_t).replace("\n", " "), "loader_images_s": cpu_ips}
    for name, fn in paths.items():
        out[f"{name}_images_s"] = _rate(gpu_batches(fn), n.get(name, sz.loader_batches), sz.loader_batch, device)
    return out


def gpu_augment(images: list[torch.Tensor], size: int, distort: float, gen: torch.Generator) -> torch.Tensor:
    """Inception-style crops, mirrors and colour jitter for a whole batch of decoded uint8 images in a
    few kernels: one `roi_align` resamples each image's random crop (scale 8-100%, aspect 3/4-4/3, as
    RandomResizedCrop) to size x size, averaging 2x2 bilinear samples per pixel; then per-image
    brightness, contrast and saturation factors in [1 - distort, 1 + distort] (no hue shift)."""
    from torchvision.ops import roi_align
    from torchvision.transforms import RandomResizedCrop

    n, dev = len(images), images[0].device
    h, w = max(im.shape[-2] for im in images), max(im.shape[-1] for im in images)
    batch = torch.zeros(n, 3, h, w, device=dev)
    boxes = torch.empty(n, 5)
    for i, im in enumerate(images):
        batch[i, :, :im.shape[-2], :im.shape[-1]] = im
        top, left, ch, cw = RandomResizedCrop.get_params(im, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
        boxes[i] = torch.tensor([i, left, top, left + cw, top + ch])
    x = roi_align(batch, boxes.to(dev), output_size=size, sampling_ratio=2, aligned=True) / 255
    flip = torch.rand(n, 1, 1, 1, device=dev, generator=gen) < 0.5
    x = torch.where(flip, x.flip(-1), x)
    if distort:
        f = 1 + (torch.rand(3, n, 1, 1, 1, device=dev, generator=gen) * 2 - 1) * distort
        luma = torch.tensor([0.299, 0.587, 0.114], device=dev).view(1, 3, 1, 1)
        x = x * f[0]  # brightness
        mean = (x * luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        x = (x - mean) * f[1] + mean  # contrast: towards the mean grey
        grey = (x * luma).sum(1, keepdim=True)
        x = (x - grey) * f[2] + grey  # saturation: towards each pixel's grey
    return x.clamp(0, 1)


# ----------------------------------------------------------------------------------------------
# 4. Kill and resume under torchrun


def _metrics(runs_dir: Path) -> list[dict]:
    files = sorted(runs_dir.glob("*/metrics.jsonl"))
    if not files:
        return []
    rows = []
    for line in files[0].read_text().splitlines():
        try:
            rows.append({k: v for k, v in json.loads(line).items() if k != "wall"})
        except json.JSONDecodeError:
            break
    return rows


def _summary(runs_dir: Path) -> dict:
    files = sorted(runs_dir.glob("*/summary.json"))
    return json.loads(files[0].read_text()) if files else {}


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc): torchrun starts its workers in sessions of their own, so
    killing the launcher's process group would leave them running."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    out, frontier = [], [pid]
    while frontier:
        kids = [c for c, pp in parent.items() if pp in frontier]
        out += kids
        frontier = kids
    return out


def _launch(cmd: list[str], log: Path, kill_after: int | None = None, runs_dir: Path | None = None) -> dict:
    """Run `cmd`; with kill_after, SIGKILL it and every process it started once a step >= kill_after
    is logged (the step reported is the last one seen: the run may get a little further)."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t0 = time.time()
    with open(log, "ab") as f:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        killed_at = None
        while kill_after is not None and p.poll() is None:
            rows = _metrics(runs_dir)
            if rows and rows[-1]["step"] >= kill_after:
                killed_at = rows[-1]["step"]
                for pid in [p.pid, *_descendants(p.pid)]:  # the launcher and its workers, at once
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.01)
        rc = p.wait()
    return {"rc": rc, "seconds": round(time.time() - t0, 1), "killed_at_step": killed_at}


def resume(sz, device, root: Path, tmp: Path) -> dict:
    n, every = sz.resume_steps, sz.resume_every
    args = ["experiment=bn_x30", "scale=gpu", "data.name=imagenet", f"data.root={root}", f"data.image_size={sz.img}",
            "model.small_input=false", f"data.workers={sz.workers}", f"train.steps={n}", f"train.eval_every={every}",
            f"train.checkpoint_every={every}", f"train.log_every={max(1, every // 8)}", "logger.wandb.mode=disabled",
            "logger.progress=off", "resume=auto", f"train.device={device.type}"]
    if device.type == "cpu":
        args += [f"model.width={sz.width}", "train.batch_size=8", "train.amp=false", "train.eval_batch_size=8"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "-m", "repro.train", *args]
    out = {"command": "torchrun --nproc_per_node=1 -m repro.train " + " ".join(a for a in args if "root=" not in a)}
    for setting in sz.resume_settings:
        extra = ["train.deterministic=true"] if setting == "deterministic" else []
        d = tmp / f"resume-{setting}"
        d.mkdir(parents=True, exist_ok=True)
        log = d / "log.txt"
        ref = _launch([*cmd, *extra, f"runs_dir={d / 'ref'}"], log)
        killed = _launch([*cmd, *extra, f"runs_dir={d / 'b'}"], log, kill_after=every * 3 // 2, runs_dir=d / "b")
        resumed = _launch([*cmd, *extra, f"runs_dir={d / 'b'}"], log)
        a, b = _metrics(d / "ref"), _metrics(d / "b")
        text = log.read_text(errors="replace")
        diffs = {k: max((abs(x[k] - y[k]) for x, y in zip(a, b) if k in x and k in y), default=None)
                 for k in ("loss", "test_acc", "test_loss")}
        out[setting] = {
            "runs": {"unbroken": ref, "killed": killed, "resumed": resumed},
            "resumed_from": _summary(d / "b").get("resumed_from"),
            "steps_compared": len(a) if [r["step"] for r in a] == [r["step"] for r in b] else None,
            "identical": bool(a) and a == b, "max_abs_diff": diffs,
            "final_test_acc": {"unbroken": (a[-1] if a else {}).get("test_acc"),
                               "resumed": (b[-1] if b else {}).get("test_acc")},
            "nondeterministic_ops": sorted({ln.split("UserWarning: ")[-1][:120] for ln in text.splitlines()
                                            if "does not have a deterministic implementation" in ln}),
            "log_tail": text[-1500:],
        }
    return out
