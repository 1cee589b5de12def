"""The Dynamic DETR model: ResNet-FPN backbone, dynamic encoder, dynamic decoder (docs/paper.md)."""

from .detector import DynamicDETR

__all__ = ["DynamicDETR"]
