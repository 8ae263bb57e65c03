"""Python source parsed once for everyone who reads it in one process.

A TorchScript archive's code files are Python: ``inspect`` parses them for the reader's class
table (:mod:`keishiki.formats.torchscript`) and again for the scan's verdict on its calls
(:mod:`keishiki._scan.torchscript`), the same text twice, and Python's parser is a fifth of
such an ``inspect`` (~30 ms each way for a module with 1024 parameters).  Both only read the
tree, so the second one gets the first one's.

A tree takes 40-75 times its source's size in memory: the last trees parsed are kept up to
:data:`KEPT_CHARS` characters of source in all (~40 MB of trees), a larger text is parsed
each time.
"""

from __future__ import annotations

import ast
import threading
from collections import OrderedDict

KEPT_CHARS = 512 * 1024

_kept: OrderedDict[str, ast.Module] = OrderedDict()
_lock = threading.Lock()  # (a server inspects from threads)


def parse(text: str) -> ast.Module:
    """``ast.parse(text)``, the same tree for the same text while it is kept.  The tree is
    shared: callers must not change it.

    Raises:
        SyntaxError, ValueError, RecursionError, MemoryError: as ``ast.parse`` (not kept).
    """
    with _lock:
        tree = _kept.get(text)
        if tree is not None:
            _kept.move_to_end(text)
            return tree
    tree = ast.parse(text)
    if len(text) <= KEPT_CHARS:
        with _lock:
            _kept[text] = tree
            total = sum(map(len, _kept))
            while total > KEPT_CHARS:
                oldest, _ = _kept.popitem(last=False)
                total -= len(oldest)
    return tree


def forget() -> None:
    """Drop every kept tree."""
    with _lock:
        _kept.clear()
