"""The ISRG network (paper section 2): one component per module, composed in ``isrg_model``, built by ``build``."""
from .build import DEFAULT_SETTINGS, PRESETS, build_isrg_model, build_isrg_model_from_config
from .image_embedding import ImageEmbedding
from .isrg_model import ISRGModel, OptionalComponents

__all__ = ["DEFAULT_SETTINGS", "PRESETS", "build_isrg_model", "build_isrg_model_from_config", "ImageEmbedding",
           "ISRGModel", "OptionalComponents"]
