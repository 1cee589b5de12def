"""Data side: COCO-format datasets with validation, v2 transforms, Dense O2O's mosaic and the augmentation policy,
collate, the synthetic generator, lint.

See docs/data.md for the dataset layout and the bad-input policy.
"""

from .check import CheckReport, check_dataset
from .coco import CocoDetection, DatasetWarning
from .collate import Batch, build_loader, collate
from .mosaic import Mosaic
from .policy import AugmentPolicy, TrainSamples
from .synthetic import CLASSES, generate
from .transforms import RandomSizeCrop, ResizeShortSide, build_transforms

__all__ = [
    "CLASSES",
    "AugmentPolicy",
    "Batch",
    "CheckReport",
    "CocoDetection",
    "DatasetWarning",
    "Mosaic",
    "RandomSizeCrop",
    "ResizeShortSide",
    "TrainSamples",
    "build_loader",
    "build_transforms",
    "check_dataset",
    "collate",
    "generate",
]
