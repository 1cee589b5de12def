"""Training: the trainer (the orchestrator), its schedule, the run folder and the per-epoch report.

Import the submodules directly (`from dynamic_detr.train.trainer import Trainer`); this package imports nothing
itself so that light commands stay light.
"""
