"""What a training run sees of its data: the training stream, exact-once evaluation batches, the probe's
held-out images, and what the run records about the data (`describe`: its identity and provenance).
"""

from __future__ import annotations

import logging

import torch

from repro.config import Config
from repro.config.names import DATASETS
from repro.data import loaders
from repro.data.mnist import load_splits

log = logging.getLogger("repro.train")


class Data:
    """Training stream, exact-once evaluation batches and what the run records about the data."""

    def __init__(self, cfg: Config, device: torch.device):
        d, t = cfg.data, cfg.train
        if d.name in DATASETS:
            splits = load_splits(d)
            x_test, self.y_test = splits.x_test.to(device), splits.y_test.to(device)
            self.stream = loaders.InMemoryStream(splits.x_train.to(device), splits.y_train.to(device),
                                                 t.batch_size, cfg.seed, d)
            self.eval_batches = lambda: loaders.tensor_eval_batches(x_test, self.y_test, t.eval_batch_size)
            self.probe_x = x_test[: t.probe_batch]
            self.describe, self.num_classes, shape = splits.describe(), splits.num_classes, splits.x_train.shape
            self.n_test, self.in_chans, self.img_size = len(self.y_test), shape[1], shape[-1]
        else:
            train, val = loaders.folder_datasets(d)
            self.stream = loaders.LoaderStream(train, t.batch_size, cfg.seed, d.workers, device, d.skip_corrupt)
            self.eval_batches = lambda: loaders.loader_eval_batches(val, t.eval_batch_size, d.workers, device)
            self.probe_x = None
            self.n_test, self.num_classes = len(val), len(train.classes)
            self.in_chans, self.img_size = 3, d.image_size
            self.describe = loaders.folder_describe(d, train, val)
            log.info("%s from %s at %s: %d train / %d test images", d.name, self.describe["source"],
                     d.root, self.describe["n_train"], self.describe["n_test"])  # in-memory datasets log theirs in repro.data
