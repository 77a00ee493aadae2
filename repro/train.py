"""Training entry point: `python -m repro.train experiment=fig1_bn scale=cpu seed=1`.

`main` (Hydra) converts the config once and calls `run(cfg) -> summary`, which tests call directly.
The loop is driven by steps, not epochs: the paper's claims are "steps to reach accuracy X".
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import timm
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from torch import nn
from tqdm import tqdm

import repro.models  # noqa: F401  (registers the paper's networks with timm)
from repro import records
from repro.config import Config, ModelConfig, register_configs, to_config
from repro.data import Splits, load_splits
from repro.errors import ReproError
from repro.optim import build_optimizer, lr_at, peak_lr, set_lr

log = logging.getLogger("repro.train")

# ----------------------------------------------------------------------------------------------
# Components


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ReproError(f"train.device={name} but no CUDA GPU is visible: use train.device=cpu")
    return torch.device(name)


def build_model(cfg: ModelConfig, splits: Splits) -> nn.Module:
    """A timm-registered name plus the switches the config sets (None = the model's default)."""
    kwargs = {k: v for k, v in vars(cfg).items() if k != "name" and v is not None}
    if cfg.name == "mnist_mlp":
        kwargs["img_size"] = splits.x_train.shape[-1]
    try:
        return timm.create_model(cfg.name, num_classes=splits.num_classes,
                                 in_chans=splits.x_train.shape[1], **kwargs)
    except RuntimeError as e:  # timm: "Unknown model"
        raise ReproError(f"model.name={cfg.name!r}: {e}; the paper's networks are "
                         f"{timm.list_models(['mnist_mlp', '*inception*'])}") from e
    except (TypeError, ValueError) as e:
        raise ReproError(f"model {cfg.name!r} rejected its switches {kwargs}: {e}") from e


class Batcher:
    """Mini-batches drawn by index from in-memory tensors; a new permutation every pass.

    The whole state (generator, permutation, position) is checkpointed, so a resumed run sees the
    same batches as one that never stopped.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        if batch_size > n:
            raise ReproError(f"train.batch_size={batch_size} exceeds the {n} training images: lower it")
        self.n, self.batch_size = n, batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.perm, self.pos = torch.randperm(n, generator=self.gen), 0

    def next(self) -> torch.Tensor:
        if self.pos + self.batch_size > self.n:  # drop the remainder, reshuffle
            self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self.perm[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "perm": self.perm, "pos": self.pos}

    def load_state_dict(self, s: dict) -> None:
        self.gen.set_state(s["gen"])
        self.perm, self.pos = s["perm"], s["pos"]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> dict:
    """Accuracy and loss over the whole held-out set (inference mode: BN uses its running stats)."""
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(x), batch_size):
        logits = model(x[i:i + batch_size])
        loss += F.cross_entropy(logits, y[i:i + batch_size], reduction="sum").item()
        correct += (logits.argmax(1) == y[i:i + batch_size]).sum().item()
    model.train()
    return {"test_acc": correct / len(x), "test_loss": loss / len(x)}


class SigmoidProbe:
    """Figure 1b/1c: 15th/50th/85th percentiles of the input to last-hidden-layer sigmoids.

    Measured on a fixed held-out batch with the inference network, for the first `units` units.
    """

    QUANTILES = (0.15, 0.50, 0.85)

    def __init__(self, model: nn.Module, x: torch.Tensor, units: int):
        sigmoids = [m for m in model.modules() if isinstance(m, nn.Sigmoid)]
        self.module = sigmoids[-1] if sigmoids else None
        self.x, self.units = x, units
        self.q = torch.tensor(self.QUANTILES, device=x.device)

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> dict | None:
        if self.module is None:
            return None
        captured = []
        handle = self.module.register_forward_hook(lambda m, inp, out: captured.append(inp[0]))
        model.eval()
        model(self.x)
        model.train()
        handle.remove()
        pre = captured[0].flatten(1)[:, : self.units].float()  # (B, units)
        p = torch.quantile(pre, self.q, dim=0).cpu().tolist()  # (3, units)
        return {"p15": p[0], "p50": p[1], "p85": p[2]}


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    if s["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


# ----------------------------------------------------------------------------------------------
# The run


def run(cfg: Config) -> dict:
    """Train one network as `cfg` says, write its run directory, return its summary."""
    t_cfg = cfg.train
    if min(t_cfg.steps, t_cfg.batch_size, t_cfg.eval_every, t_cfg.log_every) <= 0:
        raise ReproError("train.steps, batch_size, eval_every and log_every must be positive")
    run_dir = records.find_resumable(cfg)
    if run_dir is not None and (run_dir / "summary.json").exists():
        log.info("%s already finished; delete it or pass resume=never to run again", run_dir)
        return json.loads((run_dir / "summary.json").read_text())
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if t_cfg.threads > 0:
        torch.set_num_threads(t_cfg.threads)
    device = pick_device(t_cfg.device)

    splits = load_splits(cfg.data)
    log.info("data: %s, %d train / %d test images", splits.source, len(splits.y_train), len(splits.y_test))
    x_train, y_train = splits.x_train.to(device), splits.y_train.to(device)
    x_test, y_test = splits.x_test.to(device), splits.y_test.to(device)
    model = build_model(cfg.model, splits).to(device)
    optimizer = build_optimizer(model, cfg.optim)
    batcher = Batcher(len(y_train), t_cfg.batch_size, cfg.seed)
    probe = SigmoidProbe(model, x_test[: t_cfg.probe_batch], t_cfg.probe_units) if t_cfg.probe_every else None

    start, wall0, wandb_id = 0, 0.0, None
    ckpt = records.load_checkpoint(run_dir) if run_dir is not None else None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        batcher.load_state_dict(ckpt["batcher"])
        _set_rng_state(ckpt["rng"])
        start, wall0, wandb_id = ckpt["step"], ckpt["wall"], ckpt["wandb_id"]
        log.info("resuming %s from step %d", run_dir, start)
    run_dir = run_dir or records.new_run_dir(cfg)  # only now: a run that fails to start leaves nothing
    env = records.environment(device) | {"data": splits.describe(), "run_dir": str(run_dir)}
    records.write_run_header(run_dir, cfg, env)
    metrics = records.MetricsLog(run_dir, cfg, start if ckpt else None, wandb_id)

    def checkpoint(step: int) -> None:
        records.save_checkpoint(run_dir, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "batcher": batcher.state_dict(),
            "rng": _rng_state(), "step": step, "wall": wall0 + time.perf_counter() - t0,
            "wandb_id": metrics.wandb_id})

    def observe(step: int, loss: float | None) -> dict:
        rec = {"step": step, "lr": lr_at(step, cfg.optim), "wall": round(wall0 + time.perf_counter() - t0, 3)}
        if loss is not None:
            rec["loss"] = loss
        if step % t_cfg.eval_every == 0 or step == t_cfg.steps:
            rec |= evaluate(model, x_test, y_test, t_cfg.eval_batch_size)
        if probe is not None and (step % t_cfg.probe_every == 0 or step == t_cfg.steps):
            if (p := probe(model)) is not None:
                rec["probe"] = p
        metrics.log(rec)
        return rec

    t0 = time.perf_counter()
    if start == 0:
        observe(0, None)
    constant_lr = cfg.optim.schedule == "constant"
    losses = torch.zeros(t_cfg.log_every, device=device)  # per-step losses, read once per window
    bar = tqdm(total=t_cfg.steps, initial=start, desc=run_dir.name, unit="step", dynamic_ncols=True,
               disable=None if cfg.logger.progress == "auto" else cfg.logger.progress == "off")
    status, diverged_at, last = "complete", None, {}
    model.train()
    for step in range(start, t_cfg.steps):
        if not constant_lr:
            set_lr(optimizer, lr_at(step, cfg.optim))
        idx = batcher.next()
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses[step % t_cfg.log_every] = loss.detach()
        done = step + 1
        if done % t_cfg.log_every and done % t_cfg.eval_every and done != t_cfg.steps:
            continue  # nothing to record: no sync, no Python beyond the step itself
        window = losses[: (done - 1) % t_cfg.log_every + 1].cpu()
        if not torch.isfinite(window).all():  # the paper's "machine infinity" (§5, x5 without BN)
            first_bad = int((~torch.isfinite(window)).nonzero()[0]) + 1
            status, diverged_at = "diverged", done - len(window) + first_bad
            break
        last = observe(done, window.mean().item())
        bar.update(done - bar.n)
        bar.set_postfix(loss=f"{last['loss']:.3f}", acc=f"{last.get('test_acc', float('nan')):.4f}", refresh=False)
        if t_cfg.checkpoint_every and done % t_cfg.checkpoint_every == 0 and done != t_cfg.steps:
            checkpoint(done)
    bar.close()

    history = records.read_jsonl(metrics.path)
    accs = [r["test_acc"] for r in history if "test_acc" in r]
    wall = wall0 + time.perf_counter() - t0
    summary = {
        "experiment": cfg.experiment, "scale": cfg.scale.name, "seed": cfg.seed, "run_dir": str(run_dir),
        "status": status, "diverged_at": diverged_at, "steps": history[-1]["step"] if history else 0,
        "final_test_acc": accs[-1] if accs else None, "best_test_acc": max(accs) if accs else None,
        "lr_base": cfg.optim.lr, "lr_peak": peak_lr(cfg.optim), "wall_s": round(wall, 2),
        "data": splits.describe(),
    }
    if status == "complete":
        checkpoint(t_cfg.steps)
    records.write_json(run_dir / "summary.json", summary)
    metrics.close(summary)
    log.info("%s: %s, test accuracy %s after %d steps (%.1f s)", run_dir.name, status,
             summary["final_test_acc"], summary["steps"], wall)
    return summary


# ----------------------------------------------------------------------------------------------
# Entry

register_configs()


CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(dcfg: DictConfig) -> None:
    try:
        summary = run(to_config(dcfg))
    except ReproError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if summary["status"] == "diverged":
        msg = (f"error: loss became NaN/inf at step {summary['diverged_at']} ({summary['experiment']}, "
               f"lr {summary['lr_peak']}): the run diverged; lower optim.lr or use BN. "
               f"Its files are kept in {summary['run_dir']}")
        print(msg, file=sys.stderr)
        if HydraConfig.get().mode != RunMode.MULTIRUN:  # a sweep records divergence and goes on
            sys.exit(3)


if __name__ == "__main__":
    # Call the copy of `main` that lives in the importable module, not in __main__, so launchers
    # that pickle the task (joblib, submitit) send a reference and workers import repro (and its
    # timm registrations) themselves.
    from repro.train import main as entry

    entry()
