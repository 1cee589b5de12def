"""Activation checkpointing (not in the paper): a module's training forward keeps only its inputs and is run
again in the backward to rebuild what its gradients need (Chen et al. 2016, "Training deep nets with sublinear
memory cost"; `torch.utils.checkpoint`, non-reentrant: the RNG and autocast state are replayed). Same outputs
and gradients, less memory held between forward and backward, one more forward of the module."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def run(module: nn.Module, *args: Any, enabled: bool) -> Any:
    """`module(*args)`, checkpointed when `enabled` and the module trains with gradients on (never in eval, under
    `torch.no_grad` or in an export trace, where nothing is kept for a backward anyway)."""
    if enabled and module.training and torch.is_grad_enabled():
        return checkpoint(module, *args, use_reentrant=False)
    return module(*args)
