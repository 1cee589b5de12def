"""Evaluation: COCO metrics, batched inference over a loader, and the error analysis (docs/analysis.md).

Import the submodules directly (`from dynamic_detr.evaluate.metrics import CocoEvaluator`).
"""
