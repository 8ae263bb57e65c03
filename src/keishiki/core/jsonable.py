"""Any result as values JSON can hold: what ``--json`` prints and what the viewer's page is
sent (``cli/plain.py``, ``view/server.py``)."""

from __future__ import annotations

import json
import math
from typing import Any


def _default(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "backslashreplace")
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    return str(obj)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def jsonable(obj: Any) -> Any:
    """``obj`` as dicts, lists, strings, numbers and None: results by their ``to_dict``,
    sets and tuples as lists, bytes as text, numpy scalars as numbers, anything else as its
    ``str``; NaN and infinities as strings (JSON has none, and every consumer must parse
    the output)."""
    return _finite(json.loads(json.dumps(obj, default=_default)))
