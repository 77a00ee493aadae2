"""`python -m repro.wandb sync RUN_DIR...`: replay runs into wandb, one run each (repro.runs.wandb_mirror).

Only an entry point: the code lives in repro.runs.wandb_mirror, so nothing here shadows the wandb package.
"""

import sys

from repro.runs.wandb_mirror import main

if __name__ == "__main__":
    sys.exit(main())
