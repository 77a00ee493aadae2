"""The typed config: its schema (`schema`), every value checked (`validate`), the names of datasets
and sources both the checker and the data code read (`names`), and the two doors from YAML to a
checked `Config`: `to_config` (Hydra's entry point) and `compose` (scripts and tests).

    from repro.config import Config, compose
"""

from __future__ import annotations

import difflib
import os
import sys
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

    from repro.errors import ReproError

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        try:
            composed = hydra_compose(config_name="config", overrides=overrides)
        except (HydraException, OmegaConfBaseException) as e:
            raise ReproError(refusal(e)) from e
        return to_config(composed)


def _keys(obj: Any, prefix: str = "") -> list[str]:
    """Every key of the schema, dotted (`optim.lr`)."""
    import dataclasses

    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out += _keys(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else [prefix + f.name]
    return out


def refusal(e: BaseException, command: str = "python -m repro.train") -> str:
    """Hydra's or OmegaConf's refusal of the overrides (several lines, a `+key` hint that leads in a circle)
    as one line naming the problem and the fix."""
    import re

    from repro.errors import one_line

    text = one_line(e)
    if "'recipe" in text:  # recipe/<family>/<scale>.yaml is chosen by the experiment's family and the scale
        missing = re.search(r"Could not find '(recipe/[^']+)'", text)
        return (f"{'there is no ' + missing.group(1) if missing else 'the recipe is not an override'}: the recipe is "
                f"recipe/<family>/<scale>.yaml, chosen by experiment= and scale= (`{command} --help` lists both)")
    if (m := re.search(r"Key '([^']+)' not in '\w+'(?:, full_key: (\S+))?", text)) or \
            (m := re.search(r"Could not override '([^']+)'", text)):
        key = (m.group(2) if m.lastindex and m.lastindex > 1 and m.group(2) else m.group(1)).rstrip(",")
        near = difflib.get_close_matches(key, _keys(Config()), n=1)
        fix = f"did you mean {near[0]}?" if near else f"`{command} --cfg job` prints every key"
        return f"{key} is not a key of the config (repro/config/schema.py): {fix}"
    if "Available options" in text or "expected one of" in text:
        return f"{text}: pick one of these"
    if "Error parsing override" in text:
        return f"{text.split(';')[0]}: an override is key=value (`{command} --help`)"
    if "could not be converted" in text:
        return f"{text}: give that key a value of its type (repro/config/schema.py)"
    return f"{text} (`{command} --help`)"


def sweep_family(argv: list[str]) -> list[str]:
    """`argv` with `family=F` added to a sweep whose experiments all select family F. Hydra composes a sweep's
    primary config without the swept values, so with the default experiment (fig1_bn): `-m
    experiment=inception,bn_x30 scale=cpu_tuned` would stop on recipe/fig1/cpu_tuned, which Figure 1 has
    not, before any job ran. The family is the one each job's experiment selects anyway."""
    if not {"-m", "--multirun"} & set(argv) or any(a.startswith(("family=", "+family=", "~family")) for a in argv):
        return argv
    swept = [a.split("=", 1)[1] for a in argv if a.startswith("experiment=") and "," in a]
    if len(swept) != 1 or "(" in swept[0]:  # one plain list; glob(...) and range(...) are left to Hydra
        return argv
    families = {validate.experiment_family(e.strip()) for e in swept[0].split(",")}
    return [*argv, f"family={families.pop()}"] if len(families) == 1 and None not in families else argv


def hydra_cli(main, command: str) -> None:
    """Run a @hydra.main entry point with Hydra's refusals (an unknown key, experiment or scale, a malformed
    override) as one line and exit 2, instead of Hydra's several lines and exit 1."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises what it refuses instead of printing it
    sys.argv = sweep_family(sys.argv)
    try:
        main()
    except (HydraException, OmegaConfBaseException) as e:
        print(f"error: {refusal(e, command)}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as e:  # submitit's launcher off a SLURM cluster: "Could not detect "srun""
        if "srun" not in str(e):
            raise
        print("error: hydra/launcher=slurm submits through SLURM, but srun is not on this machine's PATH: run the "
              "command on a SLURM login node, or drop hydra/launcher=slurm to train here", file=sys.stderr)
        sys.exit(2)
