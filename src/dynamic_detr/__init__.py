"""Dynamic DETR: End-to-End Object Detection with Dynamic Attention (Dai et al., ICCV 2021)."""

__version__ = "0.1.0"
