"""Networks of the paper, registered with timm (`timm.create_model(name, **switches)`), and the one door
the runners build them through (`build_model`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import timm
from torch import nn

from repro.errors import ReproError
from repro.models import inception, mlp  # noqa: F401
from repro.models.counting import count_macs  # noqa: F401
from repro.models.fold import fold_bn  # noqa: F401

if TYPE_CHECKING:
    from repro.config import ModelConfig


def create_model_args(cfg: ModelConfig, in_chans: int, num_classes: int, img_size: int) -> dict:
    """`timm.create_model(**these)` builds the network: a registered name plus the switches the config sets
    (None = the model's own default). Recorded with a run's exported weights (summary.json `weights`)."""
    switches = {k: getattr(v, "value", v) for k, v in vars(cfg).items() if k != "name" and v is not None}
    return {"model_name": cfg.name, "num_classes": num_classes, "in_chans": in_chans, **switches, "img_size": img_size}


def build_model(cfg: ModelConfig, in_chans: int, num_classes: int, img_size: int) -> nn.Module:
    """A timm-registered name plus the switches the config sets (None = the model's default)."""
    args = create_model_args(cfg, in_chans, num_classes, img_size)
    kwargs = {k: v for k, v in args.items() if k not in ("model_name", "num_classes", "in_chans")}
    try:
        return timm.create_model(**args)
    except RuntimeError as e:  # timm: "Unknown model"
        raise ReproError(f"model.name={cfg.name!r}: {e}; the paper's networks are "
                         f"{timm.list_models(['mnist_mlp', '*inception*'])}") from e
    except (TypeError, ValueError) as e:
        raise ReproError(f"model {cfg.name!r} rejected its switches {kwargs}: {e}") from e
