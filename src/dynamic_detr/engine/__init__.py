"""Training engine: trainer loop, COCO evaluation, checkpoints, distributed helpers and run reports.

Import the submodules directly (`from dynamic_detr.engine.evaluate import CocoEvaluator`); this package
imports nothing itself so that light commands stay light.
"""
