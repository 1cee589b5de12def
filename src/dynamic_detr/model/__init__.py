"""The Dynamic DETR model: ResNet-FPN backbone, dynamic encoder, dynamic decoder (PAPER.md)."""

from .detector import DynamicDETR

__all__ = ["DynamicDETR"]
