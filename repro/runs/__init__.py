"""A run's record: its directory's life (`rundir`: name, claim and lock, header, checkpoints, resume), its
files written atomically (`files`), what a person follows while it trains (`progress`), its wandb mirror
(`wandb_mirror`) and the distributed helpers every rank calls (`dist`)."""
