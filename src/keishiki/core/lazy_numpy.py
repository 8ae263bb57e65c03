"""``numpy``, imported on first use: ``from ..core.lazy_numpy import np``.

numpy costs ~130 ms of start-up; ``keishiki --help``, ``info`` on a safetensors or torch
file and ``scan`` never touch an array, yet the modules they import use ``np`` in the
functions that load tensors.  ``np`` here is a module object that imports numpy the first
time one of its attributes is read and then holds numpy's own attributes, so later reads
are plain attribute lookups (no proxy call per access).  Annotations need nothing: every
module using it has ``from __future__ import annotations``, and type checkers see numpy itself.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import TYPE_CHECKING


class _LazyNumpy(ModuleType):
    def __getattr__(self, name: str):
        numpy = importlib.import_module("numpy")
        self.__dict__.update({k: v for k, v in vars(numpy).items() if not k.startswith("__")})
        return getattr(numpy, name)

    def __dir__(self):
        return dir(importlib.import_module("numpy"))


if TYPE_CHECKING:
    import numpy as np
else:
    np = sys.modules["numpy"] if "numpy" in sys.modules else _LazyNumpy("numpy")
    """numpy itself when it is already imported, else the stand-in that imports it."""
