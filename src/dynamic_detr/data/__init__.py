"""Data side: COCO-format datasets with validation, v2 transforms, collate, the synthetic generator, lint.

See docs/data.md for the dataset layout and the bad-input policy.
"""

from .check import CheckReport, check_dataset
from .coco import CocoDetection, DatasetWarning
from .collate import Batch, build_loader, collate
from .synthetic import CLASSES, generate
from .transforms import RandomSizeCrop, ResizeShortSide, build_transforms

__all__ = [
    "CLASSES",
    "Batch",
    "CheckReport",
    "CocoDetection",
    "DatasetWarning",
    "RandomSizeCrop",
    "ResizeShortSide",
    "build_loader",
    "build_transforms",
    "check_dataset",
    "collate",
    "generate",
]
