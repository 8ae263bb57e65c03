"""Packages that are also the public function of the same name.

``keishiki.scan``, ``keishiki.convert`` and ``keishiki.compare`` are each a package and the
function users call.  Importing any submodule (``keishiki.convert.paths``) makes Python bind
the *package* to the attribute ``keishiki.convert``, replacing the lazily exported function;
making the package callable keeps ``keishiki.convert(src, out, to=...)`` working either way.
"""

from __future__ import annotations

import sys
import types
from typing import Any, Callable


def make_package_callable(module_name: str, function: Callable[..., Any]) -> None:
    """Calling the module ``module_name`` calls ``function`` with the same arguments."""

    class _CallablePackage(types.ModuleType):
        __doc__ = sys.modules[module_name].__doc__

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return function(*args, **kwargs)

    sys.modules[module_name].__class__ = _CallablePackage
