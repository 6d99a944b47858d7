"""nnunet-isrg: interactive lesion segmentation and structured reports on top of nnU-Net v2.

The public API::

    from nnunet_isrg import ISRGSession, build_isrg_model, load_trained_model

Each name is imported from its module on first use (PEP 562), so ``import nnunet_isrg``, the
``isrg`` command line and torch-free modules such as ``nnunet_isrg.attributes`` stay light.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_PUBLIC_API: dict[str, str] = {
    "ISRGSession": "nnunet_isrg.inference.session",
    "build_isrg_model": "nnunet_isrg.modeling.build",
    "load_trained_model": "nnunet_isrg.inference.model_loading",
}

__all__ = ["ISRGSession", "build_isrg_model", "load_trained_model", "__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on demand
    from .inference.model_loading import load_trained_model
    from .inference.session import ISRGSession
    from .modeling.build import build_isrg_model


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC_API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC_API[name]), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC_API))
