"""Training objective: Hungarian matching and the deep-supervised set-prediction loss."""

from .criterion import SetCriterion
from .matcher import HungarianMatcher

__all__ = ["HungarianMatcher", "SetCriterion"]
