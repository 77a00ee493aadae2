"""`python -m repro.stacked ...` (and `--map LEDGER`): the entry point; the code lives in repro.stacked.mlp,
which hands Figures 2-3's networks to repro.stacked.convrun."""

import sys

from repro.stacked.mlp import main

if __name__ == "__main__":
    sys.exit(main())
