"""Prediction: the predictor over images, folders, URLs and videos, its writers, and explain.

Import the submodules directly (`from dynamic_detr.predict.predictor import Predictor`).
"""
