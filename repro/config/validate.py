"""Every value of a composed Config checked in one place, before anything is made on disk.

The schema (repro.config.schema) catches unknown keys and wrong types; this module catches the rest: values
out of range, enum-like strings that are not one of their options, keys appended with Hydra's `+`
(which the schema lets through), and relative paths, recorded absolute so that a run resolves to the
same files from any working directory. `check(cfg)` runs at compose time (`to_config`) and again at
the top of `repro.train.run`; either way a bad value is one ReproError naming the key and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from repro.config.names import DATASETS, FOLDER_DATASETS, SOURCES
from repro.config.schema import CONF_DIR
from repro.errors import ReproError

# ----------------------------------------------------------------------------------------------
# The rules: (key, test, what a valid value is). A test gets the value and the whole Config.


def _one_of(*options) -> tuple[Callable, str]:
    return (lambda v, c: v in options), "one of " + ", ".join("null" if o is None else str(o) for o in options)


def _at_least(lo) -> tuple[Callable, str]:
    return (lambda v, c: v >= lo), f">= {lo}"


def _above(lo) -> tuple[Callable, str]:
    return (lambda v, c: v > lo and math.isfinite(v)), f"finite and > {lo}"  # optim.lr=inf is no rate


def _optional(test: tuple[Callable, str]) -> tuple[Callable, str]:
    return (lambda v, c: v is None or test[0](v, c)), f"null or {test[1]}"


def _signal(name: str) -> bool:
    name = str(name).upper()
    return (name if name.startswith("SIG") else f"SIG{name}") in (set(signal.Signals.__members__) -
                                                                  {"SIGKILL", "SIGSTOP", "SIGINT"})


_POSITIVE, _NON_NEGATIVE = _at_least(1), _at_least(0)
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")

def experiment_family(experiment: str) -> str | None:
    """The family an experiment file selects (`override /family: X` in conf/experiment/<name>.yaml, or in
    the experiment it builds on: bn_x30 on bn_x5, ensemble_1 on bn_x30)."""
    path = Path(CONF_DIR) / "experiment" / f"{experiment}.yaml"
    try:
        defaults = (yaml.safe_load(path.read_text()) or {}).get("defaults") or []
    except (OSError, yaml.YAMLError):
        return None
    for d in defaults:
        if isinstance(d, dict) and "override /family" in d:
            return d["override /family"]
    bases = [d for d in defaults if isinstance(d, str) and d != "_self_" and d != experiment]
    return next((f for f in map(experiment_family, bases) if f is not None), None)


RULES: list[tuple[str, Callable, str]] = [(k, *t) for k, t in (
    ("seed", _NON_NEGATIVE),
    ("family", ((lambda v, c: experiment_family(c.experiment) in (None, v)),
                "the family its experiment's file selects (leave family= out; experiment=fig1_bn family=imagenet "
                "would train an Inception under the name fig1_bn)")),
    ("resume", _one_of("never", "auto", "force")),
    ("runs_dir", ((lambda v, c: bool(v)), "a directory")),
    ("data.name", _one_of(*DATASETS, *FOLDER_DATASETS)),
    ("data.source", _one_of(*SOURCES)),
    ("data.shuffle", _one_of("full", "fixed_batches")),
    ("data.binarize_threshold", ((lambda v, c: 0 <= v <= 1), "in [0, 1]")),
    ("data.test_size", _POSITIVE),
    ("data.limit_train", _optional(_POSITIVE)),
    ("data.limit_test", _optional(_POSITIVE)),
    ("data.translate", _NON_NEGATIVE),
    ("data.zoom", _at_least(1.0)),
    ("data.distort", _NON_NEGATIVE),
    ("data.image_size", _at_least(8)),
    ("data.workers", _NON_NEGATIVE),
    ("model.norm", _one_of("bn", "none", "gn", "ln")),
    ("model.act", _one_of("sigmoid", "relu")),
    ("model.hidden", _optional(((lambda v, c: len(v) > 0 and min(v) >= 1), "a list of widths >= 1"))),
    ("model.init_std", _optional(_above(0))),
    ("model.drop_rate", _optional(((lambda v, c: 0 <= v < 1), "in [0, 1)"))),
    ("model.conv1", _one_of(None, "separable", "plain")),
    ("model.table", _one_of(None, "slim", "caffe")),
    ("model.pools", _one_of(None, "port", "symmetric")),
    ("model.width", _optional(_above(0))),
    ("model.init_scale", _optional(_above(0))),
    ("model.per_activation_bn", _optional(_NON_NEGATIVE)),
    ("model.bn_eps", _optional(_above(0))),
    ("optim.name", _one_of("sgd", "adam")),
    ("optim.lr", _above(0)),
    ("optim.lr_mult", _above(0)),
    ("optim.momentum", ((lambda v, c: 0 <= v < 1), "in [0, 1)")),
    ("optim.nesterov", ((lambda v, c: not v or (c.optim.name == "sgd" and c.optim.momentum > 0)),
                        "false unless optim.name=sgd with optim.momentum > 0 (Nesterov needs momentum)")),
    ("optim.weight_decay", _NON_NEGATIVE),
    ("optim.weight_decay_mult", _NON_NEGATIVE),
    ("optim.schedule", _one_of("constant", "exponential")),
    ("optim.decay_rate", ((lambda v, c: 0 < v <= 1), "in (0, 1]")),
    ("optim.decay_steps", _POSITIVE),
    ("optim.decay_speedup", _above(0)),
    ("train.steps", _POSITIVE),
    ("train.batch_size", _POSITIVE),
    ("train.eval_every", _POSITIVE),
    ("train.eval_log", _NON_NEGATIVE),
    ("train.log_every", _POSITIVE),
    ("train.eval_batch_size", _POSITIVE),
    ("train.probe_every", _NON_NEGATIVE),
    ("train.probe_units", _POSITIVE),
    ("train.probe_batch", _POSITIVE),
    ("train.checkpoint_every", _NON_NEGATIVE),
    ("train.init_from", ((lambda v, c: v is None or Path(v).expanduser().is_file()),
                         "null or an existing weights file (a run's ckpt.pt or model.safetensors, a state dict)")),
    ("train.resume_from", ((lambda v, c: v is None or (Path(v).expanduser().is_file() and c.train.init_from is None)),
                           "null or an existing checkpoint (a run's ckpt.pt), without train.init_from")),
    ("train.threads", _NON_NEGATIVE),
    ("train.diverge_factor", ((lambda v, c: v == 0 or v > 1), "0 (NaN/inf only) or > 1")),
    ("train.diverge_logs", _POSITIVE),
    ("train.preempt_signals", ((lambda v, c: all(_signal(s) for s in v)),
                               "a list of catchable signal names, e.g. [SIGTERM,SIGUSR1,SIGUSR2], or []")),
    ("train.device", ((lambda v, c: bool(_DEVICE.fullmatch(v))), "auto, cpu, cuda or cuda:N")),
    ("logger.wandb.mode", _one_of("offline", "online", "disabled")),
    ("logger.progress", _one_of("auto", "on", "off")),
    ("logger.progress_every_s", _NON_NEGATIVE),
    ("scale.images_per_gpu_s", _NON_NEGATIVE),
)]

# Paths recorded absolute, so `repro.evaluate` and a resume find the same files from anywhere.
PATHS = ("runs_dir", "data.root", "data.debian_dir", "logger.wandb.dir")


# ----------------------------------------------------------------------------------------------
# Checks


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _set(cfg: Any, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        cfg = getattr(cfg, part)
    setattr(cfg, last, value)


def unknown_keys(obj: Any, prefix: str = "") -> list[tuple[str, list[str]]]:
    """Keys set on a config dataclass that its schema does not declare (Hydra's `+key=value`),
    each with the declared keys beside it."""
    fields = [f.name for f in dataclasses.fields(obj)]
    found = [(prefix + k, fields) for k in vars(obj) if k not in fields]
    for name in fields:
        value = getattr(obj, name)
        if dataclasses.is_dataclass(value):
            found += unknown_keys(value, f"{prefix}{name}.")
    return found


def problems(cfg: Any) -> list[str]:
    """Every rule `cfg` breaks, as `key=value: must be ...`."""
    out = []
    for key, fields in unknown_keys(cfg):
        near = difflib.get_close_matches(key.rsplit(".", 1)[-1], fields, n=1)
        hint = f"did you mean {key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{near[0]}?" if near else \
            f"its keys are {', '.join(fields)}"
        out.append(f"{key} is not a key of the schema (repro/config/schema.py; {hint}); drop the `+` override")
    for key, test, valid in RULES:
        value = _get(cfg, key)
        try:
            ok = test(value, cfg)
        except TypeError:  # e.g. None where a number belongs
            ok = False
        if not ok:
            out.append(f"{key}={value!r} is not valid: it must be {valid}")
    return out


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def check(cfg: Any) -> Any:
    """Raise one ReproError listing every invalid value of `cfg`; record its paths absolute. Returns cfg.
    (A given data.root stays data.source=auto: auto reads the files under it first, and what the files
    are, not where, joins a run's identity: repro.runs.rundir.run_facts.)"""
    found = problems(cfg)
    if found:
        raise ReproError("; ".join(found))
    for key in PATHS:
        _set(cfg, key, _absolute(_get(cfg, key)))
    for key in ("train.init_from", "train.resume_from"):  # optional paths
        if _get(cfg, key) is not None:
            _set(cfg, key, _absolute(_get(cfg, key)))
    return cfg
