"""Command lines that start another Python for keishiki without the working folder on its
import path.

``python -c CODE`` and ``python -m MODULE`` put the working folder first on ``sys.path``,
and the working folder is often the model's own (``keishiki convert . out.gguf``): a
``json/`` package, a ``json.pyc`` or a ``keishiki/`` folder shipped with the model would be
imported by the child before the standard library or keishiki itself, with no
``--trust-remote-code`` asked.  ``-P`` (Python 3.11+) leaves that entry out; on 3.10 the
child removes it itself before its first import.
"""

from __future__ import annotations

import sys


def python_code(code: str, *args: str) -> list[str]:
    """``[python, -c, code, *args]`` that never imports from the working folder."""
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P", "-c", code, *args]
    return [sys.executable, "-c", "import sys; del sys.path[0]\n" + code, *args]


def python_module(module: str, *args: str) -> list[str]:
    """``[python, -m, module, *args]`` that never imports from the working folder."""
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P", "-m", module, *args]
    run = f"import runpy; runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    return python_code(run, *args)
