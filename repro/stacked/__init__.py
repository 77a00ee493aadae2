"""Many networks trained as one stack: the Figure 1 MLPs side by side (`mlp`) and the launcher of the
Figure 1 map (`mapgrid`); every seed of a Figures 2-3 variant as one convolutional stack for the GPU
(`conv`, trained by `convrun`; on the CPU repro.train is faster); each member's run directory and the
stack's one checkpoint commit (`members`). `python -m repro.stacked` runs it (`__main__`)."""
