"""A stack's members as single runs: each writes its own run directory as repro.train writes it, and
the whole stack saves its checkpoints as one commit, so a kill anywhere resumes it.

Every member writes the files a single run writes (config.yaml, env.json, metrics.jsonl, summary.json,
ckpt.pt) and resumes from its ckpt.pt as a single run does. A stack moves in lockstep, so its members'
checkpoints must hold one step. `commit` first writes every member's new checkpoint beside its old one
(ckpt.next.pt, itself written through a temporary and renamed), and only when all of them are on disk
renames each over its ckpt.pt. A kill before the last ckpt.next.pt is whole leaves every ckpt.pt at the
previous step; a kill among the renames leaves every member holding the new step in one of its two
files. At the next start `open_members` finds the latest step every member holds, finishes the renames
(or drops the unfinished commit's files) and the stack resumes there: it never has to start over
(before, a kill inside the checkpoint loop left members at two steps, and only resume=never helped).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from repro.config import Config
from repro.errors import ReproError
from repro.models import build_model
from repro.optim import peak_lr
from repro.runs import files, rundir, wandb_mirror
from repro.runs.divergence import DivergenceRule

log = logging.getLogger("repro.stacked")
CKPT, NEXT = "ckpt.pt", "ckpt.next.pt"


def _found(cfg: Config, facts: dict) -> Path | None:
    """With resume=auto, the latest directory of this config that finished or holds a checkpoint, a
    commit's ckpt.next.pt included (rundir.find_resumable, which knows only ckpt.pt, would miss a member
    killed before its first rename)."""
    if cfg.resume not in ("auto", "force"):
        return None
    done = [p for p in rundir.existing_run_dirs(cfg, facts) if any((p / f).exists() for f in ("summary.json", CKPT, NEXT))]
    return done[-1] if done else None


class Member:
    """One member's run: its config, run directory, network (built as repro.train builds it), metrics log."""

    def __init__(self, cfg: Config, describe: dict, shape: tuple[int, int, int], device: torch.device):
        """`shape`: the network's (input channels, classes, image size)."""
        self.cfg, self.describe, self.status, self.diverged_at = cfg, describe, "running", None
        self.facts = rundir.run_facts(1, describe)
        self.run_dir = _found(cfg, self.facts)
        self.finished = bool(self.run_dir and rundir.finished(self.run_dir))  # a preempted run goes on
        torch.manual_seed(cfg.seed)  # as repro.train: the same seed gives the same initial weights
        self.net = build_model(cfg.model, *shape).to(device)
        self.rng = torch.get_rng_state()  # what repro.train's dropout would draw from next
        self.ckpt = self.lock = self.log = self.wandb_id = None
        self.wall0, self.resumes = 0.0, []
        self.divergence = DivergenceRule(cfg.train.diverge_factor, cfg.train.diverge_logs)  # as repro.train

    def summary(self) -> dict:
        """A finished member's summary.json."""
        return json.loads((self.run_dir / "summary.json").read_text())

    def start(self, env: dict) -> None:
        """Load the checkpoint `open_members` settled on (checked as repro.train checks it), or make the
        run directory; write its header and open its metrics log."""
        if self.ckpt is not None:
            rundir.check_checkpoint(self.ckpt, self.run_dir / CKPT, self.cfg, self.describe)
            self.net.load_state_dict(self.ckpt["model"])
            if "divergence" in self.ckpt:
                self.divergence.load_state_dict(self.ckpt["divergence"])
        if self.run_dir is None:
            self.run_dir = rundir.new_run_dir(self.cfg, self.facts)
            self.lock = rundir.hold(self.run_dir)
        rundir.write_run_header(self.run_dir, self.cfg, env | {"data": self.describe, "run_dir": str(self.run_dir)})
        ck = self.ckpt
        self.wandb_id = (ck["wandb_id"] if ck else None) or wandb_mirror.new_id()  # one wandb run per run directory
        self.log = files.MetricsLog(self.run_dir, ck["step"] if ck else None,
                                    wandb_mirror.start(self.run_dir, self.cfg, self.wandb_id))
        if ck:
            self.wall0, self.resumes = ck["wall"], ck.get("resumes", []) + [ck["step"]]

    def finish(self, steps: int, wall: float, signal: str | None = None) -> dict:
        history = files.read_jsonl(self.log.path)
        accs = [r["test_acc"] for r in history if "test_acc" in r]
        cfg, done = self.cfg, self.status == "complete"
        summary = {
            "experiment": cfg.experiment, "scale": cfg.scale.name, "seed": cfg.seed, "run_dir": str(self.run_dir),
            "status": self.status, "diverged_at": self.diverged_at, "steps": self.diverged_at or steps,
            "final_test_acc": accs[-1] if accs and done else None, "best_test_acc": max(accs) if accs else None,
            "lr_base": cfg.optim.lr, "lr_peak": peak_lr(cfg.optim), "world_size": 1,
            "global_batch": cfg.train.batch_size, "wall_s": round(self.wall0 + wall, 2), "data": self.describe,
            "resumed_from": self.resumes, "wandb_id": self.wandb_id, "stacked": True,
        }
        if self.status == "diverged":
            summary["diverged_why"] = self.divergence.why
        if self.status == "preempted":
            summary |= {"preempted_at": steps, "preempted_by": signal,
                        "note": f"preempted at step {steps} by {signal}: resume=auto continues it"}
        files.write_json(self.run_dir / "summary.json", summary)
        self.log.close(summary, failed=self.status == "preempted")
        rundir.release(self.lock)
        return summary

    def close(self) -> None:
        """After an error or Ctrl-C: no lock left behind, no wandb run left open (a no-op once finished)."""
        if self.log is not None:
            self.log.close(failed=True)
        rundir.release(self.lock)


# ----------------------------------------------------------------------------------------------
# One checkpoint commit for the whole stack


def _held(run_dir: Path | None) -> dict[int, tuple[Path, dict]]:
    """The checkpoints a member's directory holds, by step (ckpt.pt wins a tie with ckpt.next.pt)."""
    held = {}
    for name in (NEXT, CKPT):
        path = run_dir / name if run_dir is not None else None
        if path is not None and path.exists():
            try:
                ckpt = torch.load(path, map_location="cpu", weights_only=False)
            except Exception as e:  # torch raises several types for a damaged zip/pickle
                raise ReproError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): delete it "
                                 f"to restart that run, or pass resume=never to start a new run beside it") from e
            held[ckpt["step"] if isinstance(ckpt, dict) and "step" in ckpt else -1] = (path, ckpt)
    return held


def open_members(members: list[Member], env: dict) -> int:
    """Lock every member's directory, settle an interrupted commit, load the checkpoints and open the
    logs; return the step the stack resumes from (0 for a new stack)."""
    for m in members:
        if m.run_dir is not None:
            m.lock = rundir.hold(m.run_dir)  # also removes a killed write's temporaries
    held = [_held(m.run_dir) for m in members]
    common = set.intersection(*(set(h) for h in held))
    if not common and any(m.run_dir is not None and (m.run_dir / CKPT).exists() for m in members):
        steps = {m.run_dir.name if m.run_dir else m.cfg.experiment: sorted(h) for m, h in zip(members, held)}
        raise ReproError(f"the members' checkpoints hold no common step ({steps}), but a stack moves in lockstep: "
                         f"resume them with the members they were trained with, or pass resume=never to start anew")
    if not common:  # the first commit never finished: nothing to resume, as a run killed before its checkpoint
        for m in members:
            if m.run_dir is not None:
                log.warning("%s: its stack stopped before its first checkpoint was committed; starting anew beside it",
                            m.run_dir)
                (m.run_dir / NEXT).unlink(missing_ok=True)
                rundir.release(m.lock)
                m.run_dir = m.lock = None
        step = 0
    else:
        step = max(common)
        for m, h in zip(members, held):
            path, m.ckpt = h[step]
            if path.name == NEXT:
                os.replace(path, m.run_dir / CKPT)  # finish the interrupted commit
                log.info("%s: finished the interrupted checkpoint commit of step %d", m.run_dir, step)
            else:
                (m.run_dir / NEXT).unlink(missing_ok=True)  # an unfinished commit's file, at a later step
    for m in members:
        m.start(env)
    return step


def commit(members: list[Member], state_of) -> None:
    """Save `state_of(j)` as the checkpoint of every running member j, all or none (module docstring)."""
    live = [(j, m) for j, m in enumerate(members) if m.status == "running"]
    for j, m in live:
        state = state_of(j)
        files.write_via_temporary(m.run_dir / NEXT, lambda tmp, s=state: torch.save(s, tmp))
    for _, m in live:
        os.replace(m.run_dir / NEXT, m.run_dir / CKPT)
