""":func:`map_names`: runs the matchers in order (exact, gguf, prefix, value, folded; see the
package doc), each on what the previous ones left unpaired, and notices weights stored
transposed."""

from __future__ import annotations

import json
from typing import Callable

from ..core.model import ModelInfo
from .folding import folded_pairs
from .gguf import gguf_pairs
from .names import prefix_pairs
from .result import NameMap, TensorPair
from .values import value_pairs


def map_names(
    a: ModelInfo, b: ModelInfo, by_value: bool = True, on_load: Callable[[str], None] | None = None
) -> NameMap:
    """Pair the tensors of ``a`` with those of ``b`` (see the package doc for the matchers).

    Args:
        a, b: models from :func:`keishiki.inspect` (any formats).
        by_value: also pair what names cannot, by hashing tensor contents (reads data,
            one tensor at a time; skipped for a side whose format cannot load data).
        on_load: called with each tensor name whose data is read for hashing (progress).

    Returns:
        A :class:`NameMap`; pairs are listed in A's tensor order.
    """
    left = {t.name: t for t in a.tensors}
    right = {t.name: t for t in b.tensors}
    pairs: list[TensorPair] = []

    stored_transposed = _declared_transposed(a), _declared_transposed(b)
    # a reversed shape under one name is a layout only where a side's format stores
    # [in, out]: between two PyTorch-layout files it is a different tensor
    in_out = layouts_differ(a.format, b.format)

    def add(a_name: str, b_name: str, how: str, transform: str | None = None, **extra) -> None:
        ta, tb = left.pop(a_name), right.pop(b_name)
        if (
            transform is None
            and len(ta.shape) == 2
            and tb.shape == ta.shape[::-1]
            and (
                (in_out and ta.shape[0] != ta.shape[1])
                or a_name in stored_transposed[0]
                or b_name in stored_transposed[1]
            )
        ):
            # named after the parameter but stored as the MatMul operand (keishiki's ONNX
            # export records these in its metadata; in an [in, out] format a non-square
            # shape says so by itself)
            transform = "transpose"
        pairs.append(TensorPair.of(ta, tb, how, transform, extra))

    for name in [n for n in left if n in right]:
        add(name, name, "exact")
    # GGUF names before prefixes, so that a dropped prefix never pairs an HF name with a
    # GGUF name that merely looks like its tail
    for a_name, b_name, transform, extra in gguf_pairs(a, b, left, right):
        add(a_name, b_name, "gguf", transform, **extra)
    for a_name, b_name in prefix_pairs(left, right):
        add(a_name, b_name, "prefix")
    folded_into: dict[str, str] = {}
    folded_into_b: dict[str, str] = {}
    if by_value and (left or right) and a.tensor_loader and b.tensor_loader:
        if left and (right or pairs):
            value_pairs(a, b, left, right, pairs, on_load)
        # the checkpoint with the BatchNorm may be either side: compare model.onnx model.pt
        _pair_folds(a, b, left, right, pairs, add, folded_into, on_load, reverse=False)
        _pair_folds(b, a, right, left, pairs, add, folded_into_b, on_load, reverse=True)

    order = {t.name: i for i, t in enumerate(a.tensors)}
    pairs.sort(key=lambda p: order[p.a])
    return NameMap(
        str(a.path),
        str(b.path),
        a.format,
        b.format,
        pairs,
        list(left.values()),
        list(right.values()),
        {n: t for n, t in folded_into.items() if n in left},
        {n: t for n, t in folded_into_b.items() if n in right},
    )


def _pair_folds(
    bn_side: ModelInfo,
    other: ModelInfo,
    bn_left: dict,
    other_left: dict,
    pairs: list[TensorPair],
    add,
    absorbed_into: dict[str, str],
    on_load,
    reverse: bool,
) -> None:
    """Pair the layers of ``bn_side`` whose BatchNorm ``other`` holds folded in (see
    :mod:`.folding`), adding new pairs or turning name pairs into ``folded`` ones.
    ``reverse``: ``bn_side`` is model B (``extra["fold"]["side"] = "B"``)."""

    def key(p: TensorPair) -> tuple[str, str]:
        return (p.b, p.a) if reverse else (p.a, p.b)

    named = dict(key(p) for p in pairs if p.how in ("exact", "prefix") and not p.transform)
    by_name = {key(p): p for p in pairs}
    for bn_name, other_name, fold, absorbed in list(
        folded_pairs(bn_side, other, bn_left, other_left, on_load, named)
    ):
        if reverse:
            fold = dict(fold, side="B")
        if bn_name in bn_left and other_name in other_left:
            add(*((other_name, bn_name) if reverse else (bn_name, other_name)), "folded", fold=fold)
        elif (bn_name, other_name) in by_name:  # same name, folded values (dynamo exporter)
            by_name[bn_name, other_name].how = "folded"
            by_name[bn_name, other_name].extra["fold"] = fold
        else:
            continue
        for name in absorbed:
            absorbed_into.setdefault(name, other_name)


def layouts_differ(a_format: str, b_format: str) -> bool:
    """Whether either format may store dense weights as [in, out]
    (:data:`keishiki.formats.registry.IN_OUT_WEIGHTS`): then a 2-D weight may line up only
    transposed, against PyTorch's [out, in] or between two exporters (a MatMul operand
    against a Gemm's ``transB`` weight)."""
    from ..formats.registry import IN_OUT_WEIGHTS

    return a_format in IN_OUT_WEIGHTS or b_format in IN_OUT_WEIGHTS


def _declared_transposed(info: ModelInfo) -> set[str]:
    """Initializers an ONNX file declares as stored transposed (metadata key written by
    :func:`keishiki._convert.names.rename_initializers`)."""
    from .._convert.names import TRANSPOSED_KEY

    raw = (info.metadata or {}).get(TRANSPOSED_KEY)
    try:
        return set(json.loads(raw)) if raw else set()
    except (TypeError, ValueError):
        return set()
