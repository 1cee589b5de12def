"""Typed configuration: the schema (dataclasses, every field documented with its source), strict YAML load /
dump, `key=value` overrides, the convergence recipe, named presets declared as data, and show / diff.

    schema.py, model_schema.py   the dataclasses          validate.py   every check of a config's values
    coerce.py                    plain data -> dataclasses io.py         YAML in, overrides
    recipe.py                    RECIPE, recipe_rung       presets.py    PRESETS, get_preset
    compare.py                   show / diff (`dynamic-detr config show | diff`)
"""

from .compare import diff, resolve, show
from .io import DuplicateKeyError, UniqueKeySafeLoader, apply_overrides, load_config
from .model_schema import BackboneConfig, DecoderConfig, DenseHeadConfig, EncoderConfig, ModelConfig
from .presets import PRESETS, Preset, get_preset, preset_chain
from .recipe import RECIPE, recipe_rung
from .schema import Config, DataConfig, LossConfig, TrainConfig
from .validate import check_data

__all__ = [
    "PRESETS", "RECIPE", "BackboneConfig", "Config", "DataConfig", "DecoderConfig", "DenseHeadConfig",
    "DuplicateKeyError", "EncoderConfig", "LossConfig", "ModelConfig", "Preset", "TrainConfig",
    "UniqueKeySafeLoader", "apply_overrides", "check_data", "diff", "get_preset", "load_config", "preset_chain",
    "recipe_rung", "resolve", "show",
]
