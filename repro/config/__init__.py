"""The typed config: its schema (`schema`), every value checked (`validate`), the names of datasets
and sources both the checker and the data code read (`names`), and the two doors from YAML to a
checked `Config`: `to_config` (Hydra's entry point) and `compose` (scripts and tests).

    from repro.config import Config, compose
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from repro.config import validate
from repro.config.schema import (  # noqa: F401  (the schema, read as repro.config)
    CONF_DIR,
    Config,
    DataConfig,
    LoggerConfig,
    ModelConfig,
    OptimConfig,
    ScaleConfig,
    TrainConfig,
    WandbConfig,
    register_configs,
)


def to_config(cfg: Any) -> Config:
    """Convert a composed DictConfig into the typed `Config` (resolving interpolations), then check
    every value and record its paths absolute (repro.config.validate): a ReproError if any is invalid."""
    return validate.check(OmegaConf.to_object(cfg) if not isinstance(cfg, Config) else cfg)


def compose(overrides: list[str]) -> Config:
    """The typed Config that `python -m repro.train OVERRIDES` runs, for scripts and tests; what Hydra
    refuses (an unknown experiment or key, a choice outside its options) is a one-line ReproError."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from repro.errors import ReproError, one_line

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        try:
            composed = hydra_compose(config_name="config", overrides=overrides)
        except (HydraException, OmegaConfBaseException) as e:
            raise ReproError(one_line(e)) from e
        return to_config(composed)
