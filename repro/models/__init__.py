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


def build_model(cfg: ModelConfig, in_chans: int, num_classes: int, img_size: int) -> nn.Module:
    """A timm-registered name plus the switches the config sets (None = the model's default)."""
    kwargs = {k: v for k, v in vars(cfg).items() if k != "name" and v is not None} | {"img_size": img_size}
    try:
        return timm.create_model(cfg.name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except RuntimeError as e:  # timm: "Unknown model"
        raise ReproError(f"model.name={cfg.name!r}: {e}; the paper's networks are "
                         f"{timm.list_models(['mnist_mlp', '*inception*'])}") from e
    except (TypeError, ValueError) as e:
        raise ReproError(f"model {cfg.name!r} rejected its switches {kwargs}: {e}") from e
