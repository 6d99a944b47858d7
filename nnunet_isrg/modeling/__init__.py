"""The ISRG network (paper section 2): one component per module, composed in ``isrg_model``, built by ``build``."""
from .build import PRESETS, build_isrg_model, build_isrg_model_from_config
from .isrg_model import ISRGModel

__all__ = ["PRESETS", "build_isrg_model", "build_isrg_model_from_config", "ISRGModel"]
