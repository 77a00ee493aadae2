"""Training entry point, the same on a laptop, one GPU, many GPUs and SLURM:

    python -m repro.train experiment=fig1_bn scale=cpu seed=1
    torchrun --nproc_per_node=8 -m repro.train experiment=bn_x30 scale=paper data.root=/data/imagenet

`main` (Hydra) converts the config once and calls `run(cfg) -> summary`, which tests call directly.
The loop is driven by steps, not epochs: the paper's claims are "steps to reach accuracy X".
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from torch import nn

from repro.config import CONF_DIR, Config, hydra_cli, register_configs, to_config, validate
from repro.data import loaders
from repro.data.training import Data
from repro.errors import ReproError, failed
from repro.models import build_model, create_model_args  # also registers the paper's networks with timm
from repro.models.probe import SigmoidProbe
from repro.optim import build_optimizer, lr_at, peak_lr, set_lr
from repro.runs import dist, files, process, progress, rundir, startpoint, wandb_mirror
from repro.runs.divergence import DivergenceRule
from repro.runs.preempt import Preemption, hand_over

log = logging.getLogger("repro.train")

# ----------------------------------------------------------------------------------------------
# Components


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGINT during training; the message says where the last checkpoint is."""


# ----------------------------------------------------------------------------------------------
# The run


def run(cfg: Config) -> dict:
    """Train one network as `cfg` says, write its run directory (rank 0), return its summary."""
    validate.check(cfg)
    if cfg.train.device.startswith("cuda") and not torch.cuda.is_available():
        raise ReproError(f"train.device={cfg.train.device} but no CUDA GPU is visible: use train.device=cpu")
    device = dist.setup(cfg.train.device)
    process.seed_and_backends(cfg, device)
    run_log = progress.RunLog() if dist.is_main() else None  # holds the data line until train.log opens
    try:
        data = Data(cfg, device)  # before the claim: what the data is joins the run's identity (run_facts)
        facts = rundir.run_facts(dist.world_size(), data.describe)
        run_dir, finished = rundir.claim(cfg, facts)
    except BaseException:
        if run_log is not None:
            run_log.close()
        raise
    if finished:
        if run_log is not None:
            run_log.close()
        log.info("%s already finished; delete it or pass resume=never to run again", run_dir)
        return json.loads((run_dir / "summary.json").read_text())
    # rank 0: the lock file it holds, the directory it created, the train.log it writes, its metrics log
    held = {"lock": None, "made": None, "log": run_log, "metrics": None}
    try:
        if run_dir is not None and dist.is_main():
            held["lock"] = rundir.hold(run_dir)
        return _train(cfg, device, run_dir, held, data, facts)
    except (ReproError, KeyboardInterrupt) as e:
        if held["log"] is not None:  # the console gets it from main(); the run's train.log gets it here
            held["log"].write(f"error: {e or 'interrupted'}", logging.ERROR)
        if isinstance(e, KeyboardInterrupt):
            raise
        made = held["made"]
        if made is not None and not (made / "ckpt.pt").exists() and not held.get("trained"):  # failed start: nothing left
            log.info("removing %s: the run stopped before its first checkpoint", made)
            shutil.rmtree(made, ignore_errors=True)
        raise
    finally:
        if held["metrics"] is not None:  # stopped early (Ctrl-C, an error): the wandb run ends as failed
            held["metrics"].close(failed=True)
        rundir.release(held["lock"])
        if held["log"] is not None:
            held["log"].close()


def _train(cfg: Config, device: torch.device, run_dir: Path | None, held: dict, data: Data, facts: dict) -> dict:
    """The paper's loop: set up (network, optimizer; a checkpoint's state when resuming), open the run's
    record, then step, evaluating and recording on the way, and sum the run up."""
    net, optimizer, probe = _build(cfg, data, device)
    losses = torch.zeros(cfg.train.log_every, device=device)  # per-step losses, read once per window
    ckpt, start, wall0, wandb_id, resumes = _resume(cfg, run_dir, net, optimizer, data, losses)
    if ckpt is None and cfg.train.init_from:  # timm's --initial-checkpoint
        held["init"] = startpoint.initial_weights(net, cfg.train.init_from)
    wandb_id = wandb_id or wandb_mirror.new_id()  # one wandb run per run directory, resumes included
    model = dist.ddp(net) if dist.is_distributed() else net  # BN statistics per replica (§4.2)
    step_model = torch.compile(model) if cfg.train.compile else model

    run_dir, metrics = _open_run_dir(cfg, device, run_dir, held, data, start if ckpt else None, wandb_id)

    record = Record(cfg, run_dir, net, optimizer, data, losses, probe, metrics, held["log"],
                    start, ckpt is not None and not cfg.train.resume_from, wall0, wandb_id, resumes)
    record.divergence = _divergence_rule(cfg, ckpt, metrics)
    with Preemption(cfg.train.preempt_signals) as preemption:
        status, stopped_at = _steps(cfg, model, step_model, optimizer, data, losses, record, start, device, preemption)
    held["trained"] = True  # from here a failure (a full disk at the last checkpoint) keeps the metrics
    if status == "complete" or (status == "preempted" and record.saved != stopped_at):
        record.checkpoint(stopped_at)
    return _summarize(cfg, record, data, status, stopped_at, preemption.name)


def _divergence_rule(cfg: Config, ckpt: dict | None, metrics) -> DivergenceRule:
    """The rule as the checkpoint left it; a checkpoint from before the rule takes its first logged loss."""
    rule = DivergenceRule(cfg.train.diverge_factor, cfg.train.diverge_logs)
    if ckpt is not None and "divergence" in ckpt:
        rule.load_state_dict(ckpt["divergence"])
    elif ckpt is not None:
        first = next((r["loss"] for r in files.read_jsonl(metrics.path) if "loss" in r), None) if metrics else None
        rule.initial = dist.broadcast_object(first)
    return rule


# ----------------------------------------------------------------------------------------------
# Set up


def _build(cfg: Config, data: Data, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer, SigmoidProbe | None]:
    """The network on its device (channels-last, synchronized BN where asked), its optimizer, the Figure 1 probe."""
    t_cfg = cfg.train
    net = build_model(cfg.model, data.in_chans, data.num_classes, data.img_size).to(device)
    if t_cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if t_cfg.sync_bn:
        net = dist.sync_batchnorm(net, device)
    optimizer = build_optimizer(net, cfg.optim)
    probe = SigmoidProbe(net, data.probe_x, t_cfg.probe_units) if t_cfg.probe_every and data.probe_x is not None else None
    return net, optimizer, probe


def _resume(cfg: Config, run_dir: Path | None, net: nn.Module, optimizer, data: Data, losses: torch.Tensor):
    """Load the claimed run's checkpoint, if any, into the network, optimizer, data stream, loss window and
    RNGs: (checkpoint or None, start step, wall seconds so far, wandb id, steps resumed from)."""
    ckpt = rundir.load_checkpoint(run_dir) if run_dir is not None else None
    path = run_dir / "ckpt.pt" if run_dir is not None else None
    if cfg.train.resume_from:  # timm's --resume: this run's checkpoint from elsewhere
        ckpt, path = startpoint.explicit_checkpoint(cfg, run_dir, ckpt)
    if ckpt is None:
        return None, 0, 0.0, None, []
    rundir.check_checkpoint(ckpt, path, cfg, data.describe, world_size=dist.world_size())
    try:
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        data.stream.load_state_dict(ckpt["data"])
        if "losses" in ckpt:  # each rank's loss window so far, when the checkpoint fell between log steps
            mine = ckpt["losses"]
            losses.copy_(mine[dist.rank()] if len(mine) == dist.world_size() else mine[0])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        raise ReproError(f"{path} does not fit this run's network or optimizer ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0][:200]}): move it away, or pass resume=never to start a "
                         f"new run beside it") from e
    rngs = ckpt["rng"]
    process.set_rng_state(rngs[dist.rank()] if len(rngs) == dist.world_size() else rngs[0])
    start = ckpt["step"]
    log.info("resuming %s from step %d", run_dir or path, start)
    return ckpt, start, ckpt["wall"], ckpt["wandb_id"], ckpt.get("resumes", []) + [start]  # every step resumed from


def _open_run_dir(cfg: Config, device: torch.device, run_dir: Path | None, held: dict, data: Data,
                  resume_step: int | None, wandb_id: str) -> tuple[Path, files.MetricsLog | None]:
    """Rank 0 makes the run directory (only now: a run that fails to start leaves nothing), locks it,
    writes its header and opens train.log and the metrics log; every rank learns the directory."""
    metrics = None
    if dist.is_main():
        if run_dir is None:
            run_dir = held["made"] = rundir.new_run_dir(cfg, rundir.run_facts(dist.world_size(), data.describe))
            held["lock"] = rundir.acquire(run_dir)
            if resume_step is not None:  # continued from train.resume_from: its metrics so far come along
                startpoint.carry_metrics(cfg, run_dir, resume_step)
        env = rundir.environment(device, dist.world_size()) | {"data": data.describe, "run_dir": str(run_dir)} | (
            {"init_from": held["init"]} if "init" in held else {})
        rundir.write_run_header(run_dir, cfg, env)
        held["log"].open(run_dir)
        metrics = held["metrics"] = files.MetricsLog(run_dir, resume_step, wandb_mirror.start(run_dir, cfg, wandb_id))
    return dist.broadcast_object(run_dir), metrics


# ----------------------------------------------------------------------------------------------
# Step


def _steps(cfg: Config, model: nn.Module, step_model, optimizer, data: Data, losses: torch.Tensor, record: Record,
           start: int, device: torch.device, preemption: Preemption) -> tuple[str, int]:
    """SGD steps from `start` to the end, recording at log, eval and checkpoint steps, until the end, a
    divergence or a preemption signal: (complete | diverged | preempted, the step it stopped at)."""
    t_cfg = cfg.train
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if t_cfg.amp else contextlib.nullcontext
    if start == 0:
        record.observe(0, None)
    constant_lr = cfg.optim.schedule == "constant"
    status, stopped_at = "complete", t_cfg.steps
    model.train()
    step = start
    try:
        for step in range(start, t_cfg.steps):
            if not constant_lr:
                set_lr(optimizer, lr_at(step, cfg.optim))
            x, y = data.stream.next()
            if t_cfg.channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast():
                loss = F.cross_entropy(step_model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses[step % t_cfg.log_every] = loss.detach()
            done = step + 1
            # Most steps record nothing: no sync, no Python beyond the step itself.
            if not (done % t_cfg.log_every and done % t_cfg.eval_every and done != t_cfg.steps
                    and done not in record.dense_evals):
                window = dist.all_reduce_sum(losses[: (done - 1) % t_cfg.log_every + 1].clone()).cpu() / dist.world_size()
                if (bad := record.divergence.check(window, done)) is not None:  # §4.2.2's "machine infinity", or beyond
                    status, stopped_at = "diverged", bad
                    break
                record.observe(done, window.mean().item())
            if t_cfg.checkpoint_every and done % t_cfg.checkpoint_every == 0 and done != t_cfg.steps:
                record.checkpoint(done)  # on its own schedule, logging step or not (the loss window is saved too)
            if preemption.requested(device) and done != t_cfg.steps:  # SLURM / torchrun: save and stop here
                status, stopped_at = "preempted", done
                break
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted at step {step}; {_resume_point(record)}") from None
    except RuntimeError as e:  # under torchrun: a collective failed because another rank died or was stopped
        if not dist.is_distributed():
            raise
        raise ReproError(f"{dist.lost_ranks(e, step)}: the other ranks' output says why they stopped; "
                         f"{_resume_point(record)}") from None
    finally:
        record.shown.close()
    return status, stopped_at


def _resume_point(record: Record) -> str:
    """Where a stopped run continues from, for its one-line message."""
    run_dir, saved = record.run_dir, record.saved
    return (f"{run_dir / 'ckpt.pt'} holds step {saved}: rerun the same command with resume=auto to continue from it"
            if saved is not None else
            f"no checkpoint was saved yet (train.checkpoint_every={record.cfg.train.checkpoint_every}), so a rerun "
            f"starts over; {run_dir} can be deleted")


# ----------------------------------------------------------------------------------------------
# Evaluate and record


class Record:
    """What the loop writes as it goes: at log and eval steps a metrics record (the test set evaluated, the
    sigmoids probed), on the checkpoint schedule a checkpoint of every rank's state; rank 0 writes files."""

    def __init__(self, cfg: Config, run_dir: Path, net: nn.Module, optimizer, data: Data, losses: torch.Tensor,
                 probe: SigmoidProbe | None, metrics: files.MetricsLog | None, run_log, start: int, resumed: bool,
                 wall0: float, wandb_id: str, resumes: list[int]):
        self.cfg, self.run_dir, self.net, self.optimizer, self.data = cfg, run_dir, net, optimizer, data
        self.losses, self.probe, self.metrics = losses, probe, metrics
        self.wall0, self.wandb_id, self.resumes = wall0, wandb_id, resumes
        self.saved = start if resumed else None  # the step the last checkpoint holds
        t_cfg = cfg.train
        self.shown = progress.Progress(run_dir.name, t_cfg.steps, start, cfg.logger.progress,
                                       cfg.logger.progress_every_s, run_log)
        self.dense_evals = process.dense_eval_steps(t_cfg)
        self.divergence = DivergenceRule(t_cfg.diverge_factor, t_cfg.diverge_logs)
        self.t0 = time.perf_counter()

    def wall(self) -> float:
        return self.wall0 + time.perf_counter() - self.t0

    def observe(self, step: int, loss: float | None) -> dict:
        cfg, t_cfg, net = self.cfg, self.cfg.train, self.net
        rec = {"step": step, "lr": lr_at(step, cfg.optim), "wall": round(self.wall(), 3)}
        if loss is not None:
            rec["loss"] = loss
        if step % t_cfg.eval_every == 0 or step == t_cfg.steps or step in self.dense_evals:
            dist.average_buffers(net)  # one set of BN running statistics on every rank
            rec |= loaders.evaluate(net, self.data.eval_batches(), self.data.n_test)
        if self.probe is not None and (step % t_cfg.probe_every == 0 or step == t_cfg.steps):
            if (p := self.probe(net)) is not None:
                rec["probe"] = p
        if self.metrics is not None:
            self.metrics.log(rec)
        self.shown.update(rec)
        return rec

    def checkpoint(self, step: int) -> None:
        rngs = dist.all_gather_objects(process.rng_state())  # every rank's, for an exact resume
        windows = dist.all_gather_objects(self.losses.cpu())
        if dist.is_main():
            rundir.save_checkpoint(self.run_dir, {
                "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "data": self.data.stream.state_dict(), "rng": rngs, "step": step, "wall": self.wall(),
                "wandb_id": self.wandb_id, "losses": windows, "identity": rundir.run_identity(self.cfg, rundir.run_facts(dist.world_size(), self.data.describe)),
                "data_identity": self.data.describe, "resumes": self.resumes,
                "divergence": self.divergence.state_dict()})
        self.saved = step


def _summarize(cfg: Config, record: Record, data: Data, status: str, stopped_at: int, signal: str | None) -> dict | None:
    """summary.json (rank 0): the run's final and best test accuracy, status, steps and cost; every rank gets it.
    A preempted run's says so (`preempted at step s`); its next start with resume=auto continues it."""
    diverged_at = stopped_at if status == "diverged" else None
    summary = None
    if dist.is_main():
        t_cfg, run_dir, metrics = cfg.train, record.run_dir, record.metrics
        history = files.read_jsonl(metrics.path)
        accs = [r["test_acc"] for r in history if "test_acc" in r]
        wall = record.wall()
        summary = {
            "experiment": cfg.experiment, "scale": cfg.scale.name, "seed": cfg.seed, "run_dir": str(run_dir),
            "status": status, "diverged_at": diverged_at, "steps": diverged_at or (history[-1]["step"] if history else 0),
            "final_test_acc": accs[-1] if accs and status == "complete" else None,
            "best_test_acc": max(accs) if accs else None, "lr_base": cfg.optim.lr, "lr_peak": peak_lr(cfg.optim),
            "world_size": dist.world_size(), "global_batch": t_cfg.batch_size * dist.world_size(),
            "wall_s": round(wall, 2), "data": data.describe, "resumed_from": record.resumes,
            "wandb_id": record.wandb_id,
        }
        if status == "diverged":
            summary["diverged_why"] = record.divergence.why
        if status == "complete":  # the final weights as timm loads them (docs/reference.md)
            summary["weights"] = rundir.export_weights(run_dir, record.net.state_dict(), create_model_args(
                cfg.model, data.in_chans, data.num_classes, data.img_size))
        if status == "preempted":
            summary |= {"steps": stopped_at, "preempted_at": stopped_at, "preempted_by": signal,
                        "note": f"preempted at step {stopped_at} by {signal}: resume=auto continues it"}
        if isinstance(data.stream, loaders.LoaderStream) and data.stream.dataset.skipped.value:
            summary["skipped_corrupt"] = data.stream.dataset.skipped.value  # data.skip_corrupt=true
        files.write_json(run_dir / "summary.json", summary)
        metrics.close(summary, failed=status == "preempted")
        log.info("%s: %s, test accuracy %s after %d steps (%.1f s)", run_dir.name, status,
                 summary["final_test_acc"], summary["steps"], wall)
    return dist.broadcast_object(summary)


# ----------------------------------------------------------------------------------------------
# Entry

register_configs()


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(dcfg: DictConfig) -> None:
    cfg, summary = None, None
    try:
        cfg = to_config(dcfg)
        summary = run(cfg)
    except ReproError as e:
        return failed(str(e), 2)
    except KeyboardInterrupt as e:  # Ctrl-C: one line saying where the last checkpoint is, then stop (a sweep too)
        if dist.is_main():  # under torchrun every rank was interrupted: rank 0 says so
            print(f"error: {e or 'interrupted; resume=auto continues from the last checkpoint, if one was saved'}",
                  file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # a bug: the traceback, but a sweep still runs its other jobs
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        log.exception("job failed")
        return failed(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}", 1)
    finally:
        dist.teardown(clean=summary is not None)  # a rank that failed waits for no other
    if summary["status"] == "preempted":  # one line, then the launcher's own handler (submitit requeues) or exit 75
        again = "" if cfg.resume == "auto" else " with resume=auto"
        print(f"preempted at step {summary['preempted_at']} by {summary['preempted_by']}: checkpoint in "
              f"{summary['run_dir']}; the same command{again} continues it", file=sys.stderr)
        hand_over(summary["preempted_by"])
    if summary["status"] == "diverged":
        fix = "lower optim.lr" if cfg.model.norm != "none" else "lower optim.lr or add BN (model.norm=bn)"
        msg = (f"error: {summary['diverged_why']} at step {summary['diverged_at']} ({summary['experiment']}, "
               f"lr {summary['lr_peak']}): the run diverged; {fix}. Its files are kept in {summary['run_dir']}")
        print(msg, file=sys.stderr)
        if HydraConfig.get().mode != RunMode.MULTIRUN:  # a sweep records divergence and goes on
            sys.exit(3)


if __name__ == "__main__":
    # Call the copy of `main` that lives in the importable module, not in __main__, so launchers
    # that pickle the task (joblib, submitit) send a reference and workers import repro (and its
    # timm registrations) themselves.
    from repro.train import main as entry

    hydra_cli(entry, "python -m repro.train")
