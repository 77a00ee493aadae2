"""timm's feature API for a network that runs its blocks in a fixed order (`block_names`, and its
`feature_info` naming the blocks whose outputs are feature maps): `forward_intermediates` (and so
`features_only` / `feature_cls="getter"`), `prune_intermediate_layers` and `set_grad_checkpointing`,
as timm's own models provide them."""

from __future__ import annotations

import torch
from timm.models import checkpoint
from timm.models._features import feature_take_indices  # what timm's own models import
from torch import nn


class BlockFeatures:
    """Mixin: needs `block_names`, `feature_info`, `grad_checkpointing` and `reset_classifier`."""

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        """Recompute each block in backward instead of storing it (timm's --grad-checkpointing).

        BN layers run twice per step in train mode (forward, then the recomputation), so their running
        statistics take two momentum updates from the same batch; the gradients are unchanged.
        """
        self.grad_checkpointing = enable

    def _blocks(self, x, taps: set[str], stop: str | None):
        """Run the blocks in order; (output, the outputs of the blocks named in `taps`)."""
        taken = []
        for name in self.block_names:
            block = getattr(self, name)
            x = checkpoint(block, x) if self.grad_checkpointing and torch.is_grad_enabled() else block(x)
            if name in taps:
                taken.append(x)
            if name == stop:
                break
        return x, taken

    def forward_intermediates(self, x, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's feature API: the `feature_info` maps (conv1, conv2, the last module at each resolution)."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        names = [f["module"] for f in self.feature_info]
        take, last = feature_take_indices(len(names), indices)
        stop = names[last] if stop_early or intermediates_only else None
        x, taken = self._blocks(x, {names[i] for i in take}, stop)
        return taken if intermediates_only else (x, taken)

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True):
        """Drop the blocks after the last feature map kept (timm's FeatureGetterNet); the kept indices."""
        names = [f["module"] for f in self.feature_info]
        take, last = feature_take_indices(len(names), indices)
        for name in self.block_names[self.block_names.index(names[last]) + 1:]:
            setattr(self, name, nn.Identity())
        self.num_features = self.feature_info[last]["num_chs"]  # the map the head now sees
        if prune_head or last < len(names) - 1:
            self.reset_classifier(0, "")
        return take
