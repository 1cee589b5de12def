"""Dynamic DETR: End-to-End Object Detection with Dynamic Attention (Dai et al., ICCV 2021).

The Python API (`dynamic_detr.from_pretrained`, `save_pretrained`, `detect`, `TileOptions`) lives in `api.py`
and is loaded on first use, so that importing the package (and light commands such as `--help`) stays light.
(`detect`, not `predict`: `dynamic_detr.predict` is the prediction room, a subpackage.)
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["TileOptions", "detect", "from_pretrained", "save_pretrained"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'dynamic_detr' has no attribute {name!r}")
