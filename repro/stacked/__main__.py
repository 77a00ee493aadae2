"""`python -m repro.stacked OVERRIDES` trains Figure 1's MLPs as stacks (repro.stacked.mlp), one per seed,
and Figures 2-3's networks as one convolutional stack of their seeds (repro.stacked.convrun, for the GPU):

    python -m repro.stacked experiment=fig1_baseline,fig1_bn optim.lr=0.01,0.1 model.init_std=0.01,0.1 \
        seed=1,2,3 scale=cpu runs_dir=runs/fig1_map resume=auto
    python -m repro.stacked --map results/fig1/map/claims.yaml runs_dir=runs/fig1_map   # the whole map
    python -m repro.stacked --jobs 2 experiment=fig1_baseline,fig1_bn seed=1,2,3,4 scale=cpu  # seeds over 2 processes

Comma lists expand to their product; every member is a repro.train run directory. Exit 0 when done,
2 on bad input (one line), 130 on Ctrl-C, 75 when preempted (SIGTERM/SIGUSR1/SIGUSR2: checkpointed,
resume=auto continues).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from hydra.errors import HydraException

from repro.errors import ReproError, one_line
from repro.runs.preempt import hand_over
from repro.stacked import mapgrid
from repro.stacked.mlp import run

log = logging.getLogger("repro.stacked")


def main(argv: list[str] | None = None) -> int:
    """`python -m repro.stacked OVERRIDES`, or `--map LEDGER [OVERRIDES]` for the whole map."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = sys.argv[1:] if argv is None else argv
    if args[:1] in (["--help"], ["-h"]):
        print(__doc__)
        return 0
    if args[:1] == ["--map"]:
        if len(args) < 2 or not Path(args[1]).is_file():
            print(f"error: --map needs the map's ledger, e.g. results/fig1/map/claims.yaml "
                  f"(got {args[1] if len(args) > 1 else 'nothing'})", file=sys.stderr)
            return 2
        try:
            return mapgrid.run_map(Path(args[1]), args[2:])
        except KeyboardInterrupt:  # each process has said where its checkpoints are
            print("error: interrupted; the same command continues every run from its last checkpoint", file=sys.stderr)
            return 130
    if args[:1] == ["--jobs"]:  # the seeds shared out over N processes (make reproduce)
        return mapgrid.run_split(args[1:])
    try:
        t0 = time.perf_counter()
        summaries = run(args)
    except ReproError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except HydraException as e:  # an unknown experiment or key, a malformed override: Hydra's message, one line
        print(f"error: {one_line(e)} (python -m repro.stacked --help)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; each member's ckpt.pt holds its last checkpoint (train.checkpoint_every): the "
              "same command with resume=auto continues from there", file=sys.stderr)
        return 130
    bad = [s for s in summaries if s["status"] == "diverged"]
    log.info("%d runs in %.1f s (%d diverged)", len(summaries), time.perf_counter() - t0, len(bad))
    stopped = [s for s in summaries if s["status"] == "preempted"]
    if stopped:
        print(f"preempted at step {stopped[0]['preempted_at']} by {stopped[0]['preempted_by']}: {len(stopped)} runs "
              f"checkpointed; the same command with resume=auto continues them", file=sys.stderr)
        hand_over(stopped[0]["preempted_by"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
