"""Before a long job: check that the in-memory dataset its recipe trains on is here, else say in one
line what to run (exit 2). Folder datasets (CIFAR-10, ImageNet) are checked by the runner itself.

    python scripts/need_data.py experiment=bn_x30 scale=cpu [MAKE_TARGET]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from repro.config import compose  # noqa: E402
from repro.data.fetch import FASHION_FIX  # noqa: E402
from repro.data.mnist import DATASETS, load_splits  # noqa: E402
from repro.errors import ReproError  # noqa: E402

# What obtains each dataset on a fresh machine.
FIX = {
    "fashion_mnist": FASHION_FIX,
    "mnist": "run `make data` (or put the four IDX files in data/MNIST/raw)",
}


def main(argv: list[str]) -> int:
    """0 when the data of `argv`'s recipe loads, else 2 after one line naming the fix."""
    overrides = [a for a in argv if "=" in a]
    target = next((a for a in argv if "=" not in a), "this job")
    try:
        data = compose(overrides).data
    except ReproError as e:  # a bad override: the runner's own one-line error
        print(f"error: {e}", file=sys.stderr)
        return 2
    if data.name not in DATASETS:
        return 0
    try:
        load_splits(data)
    except ReproError as e:
        print(f"error: {target} trains on {data.name}, which is not here: {FIX.get(data.name, str(e))}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
