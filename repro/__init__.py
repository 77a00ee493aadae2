"""repro: reproducing Ioffe & Szegedy (2015), Batch Normalization."""
