"""Pairing by content: tensor data as numpy (GGML quant types dequantized), a digest of the
values that survives dtype widening and transposition, and the value matcher that pairs
what names could not (ranking equal-valued candidates by name similarity)."""

from __future__ import annotations

import hashlib
import math
import re
from collections import defaultdict
from typing import Callable, Iterable

import numpy as np

from ..core.model import ModelInfo
from ..core.tensor import TensorInfo
from .names import name_similarity
from .result import TensorPair

FLOAT_FOR_HASH = {"float16", "bfloat16", "float32"}  # exactly representable as float32
GGML_QUANT = re.compile(r"^(q\d|iq\d|tq\d)")

# a digest table's entry: B's tensor name and what makes it line up (None | "transpose")
Candidate = tuple[str, str | None]


def load_array(model: ModelInfo, info: TensorInfo) -> np.ndarray:
    """Tensor ``info`` of ``model`` as a numpy array of ``info.shape``; GGML block-quantized
    types are dequantized to float32 with the gguf package.

    Raises:
        InvalidRequest: ``model``'s format has no tensor loader.
        MissingDependency: a quantized tensor and no ``gguf`` package.
        CorruptFile: the bytes cannot be the declared tensor (see ModelInfo.load_tensor).
    """
    arr = model.load_tensor(info)
    if GGML_QUANT.match(info.dtype):
        arr = _dequantize(arr, info)
    return arr


def _dequantize(raw: np.ndarray, info: TensorInfo) -> np.ndarray:
    from .._optional import require

    gguf = require("gguf", extra="gguf", purpose=f"dequantize {info.dtype} tensors")
    qtype = gguf.GGMLQuantizationType[info.dtype.upper()]
    rows = math.prod(info.shape[:-1]) if len(info.shape) > 1 else 1
    data = np.ascontiguousarray(raw).view(np.uint8).reshape(rows, -1)
    return gguf.quants.dequantize(data, qtype).reshape(info.shape)


def content_digest(arr: np.ndarray) -> tuple:
    """Hash of an array's values: floats exactly representable as float32 are hashed as
    float32 (a bfloat16 tensor and its float32 copy hash alike); others by dtype + bytes."""
    arr = np.asarray(arr)
    name = arr.dtype.name
    if name in FLOAT_FOR_HASH:
        arr, name = arr.astype(np.float32), "float"
    data = np.ascontiguousarray(arr).tobytes()
    return (name, tuple(arr.shape), hashlib.blake2b(data, digest_size=16).digest())


def _hashable(info: TensorInfo) -> bool:
    # a 1-element tensor (a step counter, a scale) would pair with any equal scalar constant
    return not GGML_QUANT.match(info.dtype) and info.numel > 1


def _load_for_digest(
    model: ModelInfo, t: TensorInfo, on_load: Callable[[str], None] | None
) -> np.ndarray:
    if on_load:
        on_load(t.name)
    return load_array(model, t)


def _digest_table(
    model: ModelInfo,
    infos: Iterable[TensorInfo],
    numels: set[int],
    on_load: Callable[[str], None] | None,
) -> dict[tuple, list[Candidate]]:
    """{content digest: [(name, None | "transpose")]} of ``infos`` whose size is in
    ``numels`` (2-D tensors also under their transpose's digest)."""
    table: dict[tuple, list[Candidate]] = defaultdict(list)
    for t in infos:
        if not _hashable(t) or t.numel not in numels:
            continue
        arr = _load_for_digest(model, t, on_load)
        table[content_digest(arr)].append((t.name, None))
        if arr.ndim == 2:
            table[content_digest(arr.T)].append((t.name, "transpose"))
        del arr
    return table


def _rank_candidates(name: str, candidates: list[Candidate]) -> list[tuple[Candidate, float]]:
    """Candidates best first: untransposed before transposed, then by name similarity."""
    scored = [(c, name_similarity(name, c[0])) for c in candidates]
    scored.sort(key=lambda cs: (cs[0][1] is not None, -cs[1]))
    return scored


def _value_pair(ta: TensorInfo, tb: TensorInfo, transform: str | None, extra: dict) -> TensorPair:
    return TensorPair.of(ta, tb, "value-transposed" if transform else "value", transform, extra)


def value_pairs(
    a: ModelInfo,
    b: ModelInfo,
    left: dict[str, TensorInfo],
    right: dict[str, TensorInfo],
    pairs: list[TensorPair],
    on_load: Callable[[str], None] | None,
) -> None:
    """Pair what is left by content.  Several tensors of A may share one tensor of B: tied
    weights stored once, or equal tensors (all-ones norms) an exporter merged into one.

    Args:
        a, b: the two models (their tensor loaders are used, one tensor at a time).
        left, right: A's and B's unpaired tensors by name; paired ones are removed.
        pairs: the pairs so far; the new pairs are appended.
        on_load: called with each tensor name whose data is read (progress).
    """
    right_numels = {t.numel for t in right.values() if _hashable(t)}
    left_numels = {t.numel for t in left.values() if _hashable(t)}
    table = _digest_table(b, list(right.values()), left_numels, on_load)
    # sizes a tensor of A can match: B's unpaired tensors, or (shared) B's paired ones
    wanted = right_numels | {math.prod(p.b_shape) for p in pairs}
    leftovers: list[tuple[TensorInfo, tuple]] = []
    for t in list(left.values()):
        if not _hashable(t) or t.numel not in wanted:
            continue
        digest = content_digest(_load_for_digest(a, t, on_load))
        candidates = table.get(digest, [])
        free = _rank_candidates(t.name, [c for c in candidates if c[0] in right])
        if free:
            (b_name, transform), score = free[0]
            # equal tensors (zero biases, unit norms) tie on value: the names decide
            ambiguous = len(free) > 1 and free[1][1] == score
            pair = _value_pair(
                t, right.pop(b_name), transform, {"ambiguous": True} if ambiguous else {}
            )
        elif candidates:  # B's tensor was paired by value already: shared
            b_name, transform = candidates[0]
            pair = _value_pair(t, b.tensor(b_name), transform, {"shared": True})
        else:
            leftovers.append((t, digest))
            continue
        del left[t.name]
        pairs.append(pair)
    if not leftovers:
        return
    # B's tensors paired by name may hold what the leftovers hold as well
    named = {p.b: b.tensor(p.b) for p in pairs if not p.how.startswith("value")}
    table = _digest_table(b, named.values(), {t.numel for t, _ in leftovers}, on_load)
    for t, digest in leftovers:
        candidates = sorted(table.get(digest, []), key=lambda c: c[1] is not None)
        if candidates:
            b_name, transform = candidates[0]
            del left[t.name]
            pairs.append(_value_pair(t, named[b_name], transform, {"shared": True}))
