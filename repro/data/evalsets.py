"""Test sets as repro.evaluate sees them: views (1, 10 or 144 crops) cut batch by batch, in memory
(MNIST, Fashion-MNIST: from the stored test tensors) or from each decoded validation image of a folder
dataset (ImageNet, CIFAR-10, in DataLoader workers), plus the training batches Alg. 2's population
statistics are computed over."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2.functional import pil_to_tensor

from repro.config import DataConfig
from repro.data import loaders
from repro.data.crops import multi_crop
from repro.data.mnist import DATASETS, Splits, load_splits
from repro.errors import ReproError


class TensorData:
    """An in-memory dataset: views are cut from the stored test tensors, batch by batch."""

    def __init__(self, splits: Splits):
        self.splits = splits
        self.num_classes, self.labels = splits.num_classes, splits.y_test
        self.in_chans, self.image_size = splits.x_train.shape[1], splits.x_train.shape[-1]
        self.n_train = len(splits.x_train)

    def describe(self) -> dict:
        return self.splits.describe()

    def same_test_set(self, other) -> bool:
        if not isinstance(other, TensorData):
            return False
        a, b = self.splits, other.splits
        return ((a.name, a.num_classes, a.x_test.shape) == (b.name, b.num_classes, b.x_test.shape)
                and torch.equal(a.y_test, b.y_test) and torch.equal(a.x_test, b.x_test))

    def view_batches(self, index: list[int], crops: int, crop_size: int, batch_size: int):
        """(views (sum V, C, crop, crop), views per image) for test images `index`, ~batch_size views a batch."""
        x = self.splits.x_test[torch.as_tensor(index, dtype=torch.long)]
        step = max(1, batch_size // crops)
        for i in range(0, len(x), step):
            views = multi_crop(x[i:i + step], crops, crop_size, unique=True)  # (n, V, C, crop, crop)
            yield views.flatten(0, 1), [views.shape[1]] * views.shape[0]

    def train_batches(self, batches: list[torch.Tensor]):
        """The undistorted training images of each index batch, as the inference network sees images."""
        return (self.splits.x_train[i] for i in batches)


class _Views(torch.utils.data.Dataset):
    """One image's views: the runner's 1-crop transform, or multi_crop of the decoded full image.

    Multi-crop views stay uint8 (144 float views of a 224 px image are 87 MB; uint8 is a quarter, in
    workers' shared memory and on the way to the GPU) and become floats in [0, 1] on the device."""

    def __init__(self, dataset, crops: int, crop_size: int, one_crop):
        self.dataset, self.crops, self.crop_size, self.one_crop = dataset, crops, crop_size, one_crop

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> torch.Tensor:
        img, _ = self.dataset[i]  # the dataset has no transform: a PIL image at its stored size
        if self.crops == 1:
            return self.one_crop(img).unsqueeze(0)  # (1, C, crop, crop) float, exactly what training evaluated
        # (V, C, crop, crop) uint8; V is 48 instead of 144 for a square image (same average, see repro.data.crops)
        return multi_crop(pil_to_tensor(img).unsqueeze(0), self.crops, self.crop_size, unique=True)[0]


def _cat_views(items: list[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    return torch.cat(items), [len(v) for v in items]


class FolderData:
    """A folder dataset (ImageNet, CIFAR-10): views are cut from each decoded validation image."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        _, self.val_t = loaders.folder_transforms(cfg)
        # validation images raw (views are built per item); training images as inference sees them (Alg. 2)
        self.train, self.val = loaders.folder_datasets(cfg, train_t=self.val_t, val_t=v2.Identity())
        self.labels = torch.as_tensor(self.val.targets)
        self.num_classes, self.in_chans, self.image_size = len(self.val.classes), 3, cfg.image_size
        self.n_train = len(self.train)
        self._describe = loaders.folder_describe(cfg, self.train, self.val)

    def describe(self) -> dict:
        return self._describe

    def same_test_set(self, other) -> bool:
        return (isinstance(other, FolderData) and self.cfg.name == other.cfg.name
                and Path(self.cfg.root).resolve() == Path(other.cfg.root).resolve()
                and self.image_size == other.image_size and torch.equal(self.labels, other.labels))

    def view_batches(self, index: list[int], crops: int, crop_size: int, batch_size: int):
        views = _Views(torch.utils.data.Subset(self.val, index), crops, crop_size, self.val_t)
        yield from torch.utils.data.DataLoader(views, batch_size=max(1, batch_size // crops),
                                               num_workers=self.cfg.workers, collate_fn=_cat_views,
                                               pin_memory=torch.cuda.is_available())

    def train_batches(self, batches: list[torch.Tensor]):
        loader = torch.utils.data.DataLoader(self.train, batch_sampler=[b.tolist() for b in batches],
                                             num_workers=self.cfg.workers, pin_memory=torch.cuda.is_available())
        return (x for x, _ in loader)


def load_data(cfg: DataConfig) -> TensorData | FolderData:
    """The evaluation view of a run's dataset: in memory (MNIST, Fashion-MNIST) or image folders."""
    if cfg.name in DATASETS:
        return TensorData(load_splits(cfg))
    if cfg.name in loaders.FOLDER_DATASETS:
        return FolderData(cfg)
    raise ReproError(f"data.name={cfg.name!r} is not a dataset this version knows "
                     f"({', '.join(DATASETS + loaders.FOLDER_DATASETS)})")
