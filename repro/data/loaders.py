"""Training-batch streams and exact-once evaluation, for in-memory tensors and image folders.

Small datasets (MNIST, Fashion-MNIST) stay on the device as tensors and batches are drawn by index,
augmented in one vectorized call: no DataLoader, no per-sample Python. Large ones (ImageNet as an
ImageFolder, CIFAR-10) go through a DataLoader with workers and pinned memory. Both streams
checkpoint their exact position, so a resumed run sees the batches an unbroken run would.

§4.2.1 change 6 ("shuffle training examples more thoroughly") is `data.shuffle`: `full` draws a new
permutation every pass; `fixed_batches` keeps each mini-batch's members together across passes and
only reorders the batches, so "the same examples keep sharing a mini-batch", as without
within-shard shuffling.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler

from repro.config import DataConfig
from repro.config.names import FOLDER_DATASETS
from repro.errors import DataError, ReproError
from repro.runs import dist

log = logging.getLogger("repro.data")

# ----------------------------------------------------------------------------------------------
# In-memory stream


def uniform(gen: torch.Generator, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """U(0, 1) draws from a CPU generator (the same numbers on every device), sent to `device`
    from pinned memory so a CUDA step never waits for the host (a pageable copy syncs the stream)."""
    pin = device.type == "cuda"
    return torch.rand(shape, generator=gen, pin_memory=pin).to(device, non_blocking=pin)


class Draw(NamedTuple):
    """One training batch's random numbers: which images, and the uniforms its augmentation turns into
    crops, mirrors and jitter (None where the recipe has no such augmentation)."""

    idx: torch.Tensor  # (B,) indices into the training tensors
    crop: torch.Tensor | None  # (4, B): crop size, centre x, centre y, mirror (data.augment)
    photo: torch.Tensor | None  # (2, B, 1, 1, 1): brightness, contrast (data.distort)


def crop_flip(x: torch.Tensor, r: torch.Tensor, translate: int, zoom: float, hflip: bool) -> torch.Tensor:
    """Inception-style crops for small images, per image in one batched call, from uniforms r (4, N): a
    square crop of 1/z of the side (z uniform in [1, zoom]) anywhere inside the image shifted by up to
    `translate` px, resized back to the full size, and mirrored with probability 1/2 if `hflip`."""
    n, w = x.shape[0], x.shape[-1]
    side = 1 / (1 + r[0] * (zoom - 1))  # crop side, as a fraction of the image
    room = 1 - side + 2 * translate / w  # how far the crop centre may move, in [-1, 1] coordinates
    flip = torch.where(r[3] < 0.5, -1.0, 1.0) if hflip else torch.ones_like(side)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 1, 1] = side * flip, side
    theta[:, 0, 2], theta[:, 1, 2] = (r[1] * 2 - 1) * room, (r[2] * 2 - 1) * room
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def jitter(x: torch.Tensor, u: torch.Tensor, strength: float) -> torch.Tensor:
    """Brightness and contrast jitter of relative `strength` per image, from uniforms u (2, N, 1, 1, 1)
    (§4.2.1 change 7 lowers the strength)."""
    u = (u * 2 - 1) * strength
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * (1 + u[1]) + mean + u[0]).clamp(0, 1)


def augment(x: torch.Tensor, crop: torch.Tensor | None, photo: torch.Tensor | None, cfg: DataConfig) -> torch.Tensor:
    """The training pipeline's augmentation of images x (N, C, H, W) from their drawn uniforms (`Draw`):
    a pure tensor function, the same per image whatever else is in the batch (repro.stacked.conv augments
    every member's batch in one call)."""
    if cfg.augment:
        x = crop_flip(x, crop, cfg.translate, cfg.zoom, cfg.hflip)
    if cfg.distort:
        x = jitter(x, photo, cfg.distort)
    return x


class InMemoryStream:
    """Mini-batches by index from tensors already on the device.

    Under DDP every rank draws the same permutation (same seed) and takes its own slice of each
    global batch of batch_size x world_size images, so replicas never see the same image in a step.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, cfg: DataConfig):
        self.x, self.y, self.cfg = x, y, cfg
        self.local, self.world = batch_size, dist.world_size()
        self.batch = batch_size * self.world
        self.n = len(y) - len(y) % self.batch  # whole global batches only
        if self.n == 0:
            raise ReproError(f"train.batch_size={batch_size} x {self.world} replicas exceeds the {len(y)} "
                             f"training images: lower train.batch_size")
        self.gen = torch.Generator().manual_seed(seed)
        self.aug_gen = torch.Generator().manual_seed(seed + 1_000_003)
        self._batches = torch.randperm(len(y), generator=self.gen)[: self.n].view(-1, self.batch)
        self.order, self.pos = self._new_order(), 0

    def _new_order(self) -> torch.Tensor:
        """A pass's batches of indices, drawn on the CPU and sent to the device once per pass."""
        if self.cfg.shuffle == "full":
            order = torch.randperm(len(self.y), generator=self.gen)[: self.n].view(-1, self.batch)
        else:
            order = self._batches[torch.randperm(len(self._batches), generator=self.gen)]
        return order.to(self.x.device)

    def draw(self, device: torch.device | None = None) -> Draw:
        """The next batch's indices and augmentation uniforms, on `device` (default: the images'); the
        stream moves on as `next` moves it."""
        if self.pos == len(self.order):
            self.order, self.pos = self._new_order(), 0
        r, c, n = dist.rank(), self.cfg, self.local
        idx = self.order[self.pos, r * n:(r + 1) * n]
        self.pos += 1
        device = self.x.device if device is None else device
        crop = uniform(self.aug_gen, (4, n), device) if c.augment else None
        photo = uniform(self.aug_gen, (2, n, 1, 1, 1), device) if c.distort else None
        return Draw(idx.to(device), crop, photo)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.draw()
        return augment(self.x[d.idx], d.crop, d.photo, self.cfg), self.y[d.idx]

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "aug_gen": self.aug_gen.get_state(), "order": self.order,
                "pos": self.pos, "batches": self._batches}

    def load_state_dict(self, s: dict) -> None:
        self.gen.set_state(s["gen"])
        self.aug_gen.set_state(s["aug_gen"])
        self.order, self.pos, self._batches = s["order"].to(self.x.device), s["pos"], s["batches"]


# ----------------------------------------------------------------------------------------------
# Image-folder stream (ImageNet, CIFAR-10)


class ResumableSampler(Sampler[int]):
    """Each rank's indices of a seeded per-epoch permutation, starting at a saved position."""

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool = True):
        self.n, self.batch, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.world, self.rank = dist.world_size(), dist.rank()
        self.per_rank = n // self.world // batch_size * batch_size  # drop the ragged tail
        self.epoch, self.start = 0, 0

    def __iter__(self):
        """(epoch, index) keys: `SeededItems` seeds each image's augmentation from them."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        mine = perm[self.rank::self.world][: self.per_rank]
        return ((self.epoch, i) for i in mine[self.start:].tolist())

    def __len__(self) -> int:
        return self.per_rank - self.start


class SeededItems(torch.utils.data.Dataset):
    """Training items by (epoch, index) key, each augmented under its own seed (run seed, epoch, index):
    a resumed run draws the crops an unbroken one drew, whichever worker decodes the image and however
    many workers there are. A corrupt image is a DataError naming the file, or, with
    data.skip_corrupt, replaced by the next readable image and counted (`skipped`)."""

    def __init__(self, dataset, seed: int, skip_corrupt: bool):
        self.dataset, self.seed, self.skip_corrupt = dataset, seed, skip_corrupt
        self.skipped = multiprocessing.Value("i", 0)  # shared with DataLoader workers

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        key = f"{self.seed},{epoch},{index}".encode()
        seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")
        with torch.random.fork_rng(devices=[]):  # the main process's RNG (dropout) is left as it was
            torch.manual_seed(seed)
            for i in range(index, index + len(self)):
                try:
                    return self.dataset[i % len(self)]
                except CorruptImage as e:
                    if not self.skip_corrupt:
                        raise
                    with self.skipped.get_lock():
                        self.skipped.value += 1
                    log.warning("skipped (data.skip_corrupt=true): %s", e.path)
        raise DataError("no training image could be read (data.skip_corrupt=true skipped them all)")


class LoaderStream:
    """Batches from a DataLoader with workers and pinned memory; position = (epoch, batch)."""

    def __init__(self, dataset, batch_size: int, seed: int, workers: int, device: torch.device,
                 skip_corrupt: bool = False):
        self.batch, self.device, self.workers, self.seed = batch_size, device, workers, seed
        self.dataset = SeededItems(dataset, seed, skip_corrupt)
        self.sampler = ResumableSampler(len(dataset), batch_size, seed)
        if self.sampler.per_rank == 0:
            raise ReproError(f"train.batch_size={batch_size} exceeds this rank's share of {len(dataset)} images")
        self.batches_done, self._it = 0, None

    def _loader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch, sampler=self.sampler, num_workers=self.workers,
                          pin_memory=self.device.type == "cuda", drop_last=True,
                          persistent_workers=False, prefetch_factor=4 if self.workers else None,
                          generator=torch.Generator().manual_seed(self.seed))  # not the global RNG

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._it is None:
            self.sampler.start = self.batches_done * self.batch
            self._it = iter(self._loader())
        try:
            x, y = next(self._it)
        except StopIteration:
            self.sampler.epoch, self.batches_done, self.sampler.start = self.sampler.epoch + 1, 0, 0
            self._it = iter(self._loader())
            x, y = next(self._it)
        self.batches_done += 1
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def state_dict(self) -> dict:
        return {"epoch": self.sampler.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, s: dict) -> None:
        self.sampler.epoch, self.batches_done, self._it = s["epoch"], s["batches_done"], None


class CorruptImage(DataError):
    """An image file that does not decode."""

    def __init__(self, message: str, path: str = ""):
        super().__init__(message)
        self.path = path


def open_image(path: str):
    """torchvision's PIL loader, with a corrupt or truncated file named instead of PIL's traceback."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")  # convert decodes the whole file: truncation shows here
    except (OSError, SyntaxError, ValueError) as e:  # UnidentifiedImageError is an OSError
        raise CorruptImage(f"{path} is not a readable image ({type(e).__name__}: {e}): replace or delete it "
                           f"(a training image may be skipped with data.skip_corrupt=true)", path) from e


def _checksum(dataset) -> str:
    """sha1 of what names a folder dataset's items: relative paths and labels (ImageFolder), or its
    arrays (CIFAR-10). Image bytes are not read: that would mean reading ImageNet at every start."""
    h = hashlib.sha1()
    if hasattr(dataset, "samples"):
        root = Path(dataset.root)
        for path, label in dataset.samples:
            h.update(f"{Path(path).relative_to(root)}\t{label}\n".encode())
    else:
        h.update(dataset.data.tobytes())
        h.update(bytes(str(list(dataset.targets)), "ascii"))
    return h.hexdigest()


def folder_describe(cfg: DataConfig, train, val) -> dict:
    """What a run records about a folder dataset; source, counts and checksum are its identity."""
    return {"dataset": cfg.name, "source": type(train).__name__, "path": cfg.root, "n_train": len(train),
            "n_test": len(val), "image_shape": [3, cfg.image_size, cfg.image_size],
            "checksum": _checksum(train) + _checksum(val)[:8]}


def folder_transforms(cfg: DataConfig):
    """(train, val) transforms for folder datasets: the paper's Inception-style crops and photometric
    distortions for training; resize to size*256/224 and center crop for validation (one crop, §4.2)."""
    from torchvision.transforms import v2

    size = cfg.image_size
    train_tf = [v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True), v2.RandomHorizontalFlip()]
    if cfg.distort:
        s = cfg.distort
        train_tf.append(v2.ColorJitter(brightness=s, contrast=s, saturation=s, hue=min(0.5, s / 4)))
    to_float = v2.ToDtype(torch.float32, scale=True)
    train_t = v2.Compose([v2.ToImage(), *train_tf, to_float])
    val_t = v2.Compose([v2.ToImage(), v2.Resize(round(size * 256 / 224), antialias=True), v2.CenterCrop(size), to_float])
    return train_t, val_t


def folder_datasets(cfg: DataConfig, train_t=None, val_t=None):
    """(train, val) torchvision datasets, with `folder_transforms(cfg)` unless transforms are given."""
    from torchvision import datasets

    default_train, default_val = folder_transforms(cfg)
    train_t = default_train if train_t is None else train_t
    val_t = default_val if val_t is None else val_t
    root = Path(cfg.root)
    if cfg.name == "imagenet":
        if not (root / "train").is_dir() or not (root / "val").is_dir():
            raise DataError(f"ImageNet not found: expected {root}/train and {root}/val class folders "
                            f"(ILSVRC2012); set data.root=DIR")
        try:
            train = datasets.ImageFolder(root / "train", train_t, loader=open_image)
            val = datasets.ImageFolder(root / "val", val_t, loader=open_image)
        except FileNotFoundError as e:  # no class folders, or a class folder without images
            raise DataError(f"{e} (data.root={root}): every class folder of train/ and val/ needs at least "
                            f"one image") from e
        if train.classes != val.classes:  # ImageFolder numbers the classes of each folder separately
            missing = sorted(set(train.classes) ^ set(val.classes))
            raise DataError(f"{root}/train and {root}/val have different class folders ({len(train.classes)} vs "
                            f"{len(val.classes)}; e.g. {missing[:3]}): labels would not match; give both "
                            f"splits the same class folders")
        return train, val
    if cfg.name == "cifar10":
        try:
            return (datasets.CIFAR10(root, train=True, transform=train_t, download=cfg.download),
                    datasets.CIFAR10(root, train=False, transform=val_t, download=cfg.download))
        except (RuntimeError, OSError) as e:
            raise DataError(f"CIFAR-10 not found in {root} and could not be downloaded ({e}): put "
                            f"cifar-10-batches-py under data.root, or run where there is a network") from e
    raise DataError(f"data.name={cfg.name!r} has no folder loader: use one of {', '.join(FOLDER_DATASETS)}")


# ----------------------------------------------------------------------------------------------
# Exact-once evaluation


@torch.no_grad()
def evaluate(model, batches, n_total: int) -> dict:
    """Top-1 accuracy and loss over a held-out set that the ranks split without overlap or padding
    (DistributedSampler would pad, counting some images twice). Sums are all-reduced."""
    model.eval()
    sums = None
    for x, y in batches:
        logits = model(x).float()
        part = torch.stack([(logits.argmax(1) == y).sum().double(),
                            F.cross_entropy(logits, y, reduction="sum").double(),
                            torch.tensor(len(y), dtype=torch.float64, device=y.device)])
        sums = part if sums is None else sums + part
    model.train()
    device = next(model.parameters()).device
    sums = dist.all_reduce_sum(sums if sums is not None else torch.zeros(3, dtype=torch.float64, device=device))
    correct, loss, seen = sums.tolist()
    if int(seen) != n_total:
        raise RuntimeError(f"evaluation saw {int(seen)} images, expected {n_total}")
    return {"test_acc": correct / seen, "test_loss": loss / seen}


def tensor_eval_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int):
    """This rank's share of in-memory test tensors, in batches."""
    idx = torch.as_tensor(dist.shard(len(y)), device=x.device)
    for i in range(0, len(idx), batch_size):
        j = idx[i:i + batch_size]
        yield x[j], y[j]


def loader_eval_batches(dataset, batch_size: int, workers: int, device: torch.device):
    """This rank's share of a folder dataset: indices rank, rank + world, ... (no padding)."""
    loader = DataLoader(torch.utils.data.Subset(dataset, list(dist.shard(len(dataset)))), batch_size=batch_size,
                        num_workers=workers, pin_memory=device.type == "cuda", generator=torch.Generator())
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
