"""Many networks trained as one stack: the Figure 1 MLPs side by side (`mlp`) and the launcher of the
Figure 1 map (`mapgrid`). `python -m repro.stacked` runs it (`__main__`)."""
