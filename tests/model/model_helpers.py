"""Inputs shared by the model tests (their config: `builders.tiny_config(classes=5).model`)."""

from __future__ import annotations

import torch


def padded_batch(sizes: list[tuple[int, int]], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1] of the given (h, w), zero-padded bottom / right to the largest; masks: True = pad."""
    g = torch.Generator().manual_seed(seed)
    h, w = max(s[0] for s in sizes), max(s[1] for s in sizes)
    images = torch.zeros(len(sizes), 3, h, w)
    masks = torch.ones(len(sizes), h, w, dtype=torch.bool)
    for i, (hi, wi) in enumerate(sizes):
        images[i, :, :hi, :wi] = torch.rand(3, hi, wi, generator=g)
        masks[i, :hi, :wi] = False
    return images, masks
