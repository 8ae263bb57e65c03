"""What the view's JSON API answers: one model's facts, and two models' comparison.

Both are built once when the server starts (the page only reads them); tensor statistics,
which read data, are computed per request (:mod:`keishiki.view.stats`).
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..core.model import ModelInfo
from ..errors import InvalidRequest
from . import netron
from .stats import unavailable_reason

LAYERS_SCHEMA = "keishiki.compare.layers/"


def model_payload(info: ModelInfo) -> dict[str, Any]:
    """``info --json`` with its tensors, plus the ``view`` facts the page needs: whether
    the Netron link is offered, and whether tensor statistics can be computed (else why
    not)."""
    out = info.to_dict(with_tensors=True)
    reason = unavailable_reason(info)
    out["view"] = {
        "netron": netron.link_offered(info),
        "stats": reason is None,
        "stats_reason": reason,
    }
    return out


def compare_payload(
    a: ModelInfo,
    b: ModelInfo,
    *,
    atol: float = 0.0,
    rtol: float = 0.0,
    layers: dict[str, Any] | None = None,
    quiet: bool = True,
) -> dict[str, Any]:
    """``compare --json`` for ``a`` (the reference) and ``b``, with ``values_compared``.

    When either side has no tensor data (a remote ``hf://`` model, a format keishiki only
    names) the page still shows the name mapping: tensors are paired by name only
    (:func:`keishiki.mapping.map_names` with ``by_value=False``), ``values_compared`` is
    False and ``values_note`` says why.  ``layers`` is a ``compare --layers --json``
    document shown as the layer-by-layer table (None: not given).
    """
    from .._compare import compare
    from ..mapping import map_names

    missing = [
        (side, r) for side, m in (("A", a), ("B", b)) if (r := unavailable_reason(m)) is not None
    ]
    if missing:
        out = map_names(a, b, by_value=False).to_dict()
        out["tensors"] = out.pop("pairs")
        out.update(
            {
                "verdict": None,
                "values_compared": False,
                "values_note": "; ".join(f"{side}: {r}" for side, r in missing),
            }
        )
    else:
        out = compare(a, b, atol=atol, rtol=rtol, quiet=quiet).to_dict()
        out["values_compared"] = True
    out["layers"] = layers
    return out


def read_layers_json(path: str | os.PathLike) -> dict[str, Any]:
    """A ``keishiki compare A B --layers --json`` document, checked for its schema.

    Raises:
        InvalidRequest: unreadable, not JSON, or not that schema.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except OSError as exc:
        raise InvalidRequest(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise InvalidRequest(f"{path} is not JSON: {exc}") from None
    if not (
        isinstance(doc, dict)
        and str(doc.get("schema", "")).startswith(LAYERS_SCHEMA)
        and isinstance(doc.get("layers"), list)
    ):
        raise InvalidRequest(
            f"{path} is not the output of `keishiki compare A B --layers "
            f'--json` (expected "schema": "{LAYERS_SCHEMA}1" and a '
            f'"layers" list)'
        )
    return doc
