"""Rules on tensor names alone: wrapper and dotted-prefix pairing, which unpaired tensors
count as a difference, and how alike two names are across naming styles."""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

from ..core.tensor import TensorInfo

# prefixes that wrappers add and that never mean a different tensor
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

# buffers a model recomputes at load time (transformers registers them non-persistent, so a
# state_dict has none, while TorchScript archives and ONNX graphs carry them)
COMPUTED_BUFFERS = re.compile(
    r"(^|\.)(rotary_emb\.(original_)?inv_freq|embeddings\.position_ids"
    r"|attn\.masked_bias)$"
)

_NAME_SPLIT = re.compile(r"[./:_\-]+")
# leaf names other frameworks give a PyTorch ``weight`` / ``bias`` (Flax, Keras, TF)
_LEAF_ALIASES = {
    "kernel": "weight",
    "scale": "weight",
    "embedding": "weight",
    "embeddings": "weight",
    "gamma": "weight",
    "beta": "bias",
    "0": "",
}


# ---- prefix ------------------------------------------------------------------------------------


def strip_wrappers(name: str) -> str:
    """``module._orig_mod.fc.weight`` -> ``fc.weight`` (wrapper prefixes, repeatedly)."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    return name


def prefix_pairs(
    left: dict[str, TensorInfo], right: dict[str, TensorInfo]
) -> list[tuple[str, str]]:
    """Pairs equal after dropping wrapper prefixes, then after dropping one dotted prefix
    that only one side has (the most common such prefix first, so ``model.`` wins over a
    coincidence).

    Args:
        left, right: A's and B's unpaired tensors by name (read, not changed).

    Returns:
        ``(a_name, b_name)`` pairs; each name appears at most once.
    """
    out: list[tuple[str, str]] = []
    canon_right: dict[str, str] = {}
    for name in right:
        canon_right.setdefault(strip_wrappers(name), name)
    used_b: set[str] = set()
    canon_left: dict[str, str] = {}
    for name in left:
        canon = strip_wrappers(name)
        b_name = canon_right.get(canon)
        if b_name is not None and b_name not in used_b and (canon != name or b_name != canon):
            out.append((name, b_name))
            used_b.add(b_name)
        else:
            canon_left.setdefault(canon, name)
    used_a = {a for a, _ in out}
    canon_left = {c: n for c, n in canon_left.items() if n not in used_a}
    canon_right = {c: n for c, n in canon_right.items() if n not in used_b}

    # one side carries an extra leading prefix: count each candidate prefix, apply by count
    candidates: Counter = Counter()
    for side, names, other in (("b", canon_right, canon_left), ("a", canon_left, canon_right)):
        for canon in names:
            for prefix, rest in _dotted_splits(canon):
                if rest in other:
                    candidates[(side, prefix)] += 1
    for (side, prefix), _count in candidates.most_common():
        longer, shorter = (canon_right, canon_left) if side == "b" else (canon_left, canon_right)
        for canon in [c for c in longer if c.startswith(prefix)]:
            rest = canon[len(prefix) :]
            if rest not in shorter or canon not in longer:
                continue
            a_name, b_name = (
                (shorter[rest], longer[canon]) if side == "b" else (longer[canon], shorter[rest])
            )
            if left[a_name].numel != right[b_name].numel:
                continue
            out.append((a_name, b_name))
            del longer[canon], shorter[rest]
    return out


def _dotted_splits(name: str) -> Iterable[tuple[str, str]]:
    """``a.b.c`` -> (``a.``, ``b.c``), (``a.b.``, ``c``)."""
    idx = name.find(".")
    while idx != -1:
        yield name[: idx + 1], name[idx + 1 :]
        idx = name.find(".", idx + 1)


# ---- what an unpaired tensor means -------------------------------------------------------------


def uncounted_reason(t: TensorInfo, fmt: str) -> str | None:
    """Why an unpaired tensor does not count as a difference, or None when it does.

    ``"graph constant"``: ONNX tensors that are graph plumbing, not weights: integer/bool
    tensors (shapes, axes), scalars, and Constant-node values (a PyTorch model computes
    them; a Constant that holds a weight is paired by value first).  ``"computed buffer"``:
    rotary ``inv_freq``, BERT ``position_ids`` and the like, in any format.
    ``"training counter"``: a BatchNorm's ``num_batches_tracked`` (unused at inference, so
    exporters drop it even where they keep the BatchNorm)."""
    if COMPUTED_BUFFERS.search(t.name):
        return "computed buffer"
    if t.name.rsplit(".", 1)[-1] == "num_batches_tracked" and t.numel <= 1:
        return "training counter"
    if fmt == "onnx" and (
        not t.dtype.startswith(("float", "bfloat"))
        or t.numel <= 1
        or t.extra.get("source") == "constant"
    ):
        return "graph constant"
    return None


def is_uncounted(t: TensorInfo, fmt: str) -> bool:
    """True when an unpaired ``t`` is listed but not counted (see :func:`uncounted_reason`)."""
    return uncounted_reason(t, fmt) is not None


# ---- similarity --------------------------------------------------------------------------------


def _name_tokens(name: str) -> list[str]:
    parts = [_LEAF_ALIASES.get(p, p) for p in _NAME_SPLIT.split(name.lower())]
    return [p for p in parts if p]


def name_similarity(a: str, b: str) -> float:
    """How alike two tensor names are across naming styles: the length of their common
    tail of tokens (``encoder.layer.0.output.dense.bias`` vs
    ``encoder/layer/0/output/dense/bias`` share all six), plus a little for shared tokens."""
    ta, tb = _name_tokens(a), _name_tokens(b)
    tail = 0
    while tail < min(len(ta), len(tb)) and ta[-1 - tail] == tb[-1 - tail]:
        tail += 1
    return tail + 0.01 * len(set(ta) & set(tb))
