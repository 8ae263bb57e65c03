"""BatchNorm folded into the layer before it: the ONNX exporters' constant folding.

``torch.onnx.export`` of a model in eval mode (``do_constant_folding=True``, the default)
merges each ``Conv``/``Linear`` → ``BatchNorm`` pair into one layer, as
``torch.nn.utils.fusion.fuse_conv_bn_weights`` does::

    scale = gamma / sqrt(running_var + eps)
    W' = W * scale (along the output channels, dim 0)
    b' = (b - running_mean) * scale + beta         (b = 0 when the layer has no bias)

The TorchScript-based exporter gives the folded tensors generated names (``onnx::Conv_16``,
``onnx::Conv_17``); the dynamo exporter (``dynamo=True``) keeps the conv's own names
(``0.weight``, ``0.bias``, and ``<weight>_bias`` for a conv that had none) over folded
values.  Either way they equal no tensor of the checkpoint, so neither content hashes nor
a plain name pair line them up.  This module recomputes the fold from the checkpoint's
tensors and pairs a B tensor when the values agree, trying the ``eps`` values PyTorch's
layers default to and the one solved from the data (a BatchNorm built with ``eps=0.01``).
A ConvTranspose weight ``[in, out, ...]`` is scaled along dim 1.  The BatchNorm's own
tensors are then accounted for ("folded into ..."), not reported as missing.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from ..core.model import ModelInfo
from ..core.tensor import TensorInfo

EPS_CANDIDATES = (1e-5, 1e-3, 1e-4)  # BatchNorm's default, then Keras/TF-ported models
RTOL, ATOL = 1e-4, 1e-6  # float32 rounding of the fold, not a loose match
STRICT_RTOL, STRICT_ATOL = 1e-6, 1e-9  # a few float32 ulps: tells eps 1e-5 from 1e-6
FLOATS = ("float16", "bfloat16", "float32", "float64")
BN_PARTS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

# what a pair's ``extra["fold"]`` holds: the A tensors the folded value is computed from
Fold = dict


def _batchnorms(left: dict[str, TensorInfo]) -> Iterator[tuple[str, int]]:
    """(prefix, channels) of each BatchNorm whose statistics are still unpaired in A."""
    for name, info in left.items():
        if not name.endswith(".running_mean") or len(info.shape) != 1:
            continue
        prefix = name[: -len(".running_mean")]
        var = left.get(prefix + ".running_var")
        if var is not None and var.shape == info.shape:
            yield prefix, info.shape[0]


def _layers(left: dict[str, TensorInfo], channels: int) -> Iterator[tuple[str, str | None, int]]:
    """(weight name, bias name or None, output axis) of layers with ``channels`` outputs:
    axis 0 for Conv/Linear ``[out, in, ...]``, axis 1 for ConvTranspose ``[in, out, ...]``."""
    for name, info in left.items():
        if not name.endswith(".weight") or info.dtype not in FLOATS or len(info.shape) < 2:
            continue
        bias = name[: -len("weight")] + "bias"
        bias = bias if bias in left and left[bias].shape == (channels,) else None
        if info.shape[0] == channels:
            yield name, bias, 0
        if len(info.shape) >= 3 and info.shape[1] == channels:
            yield name, bias, 1


def fold_values(arrays: Callable[[str], np.ndarray], fold: Fold) -> np.ndarray:
    """The folded weight or bias described by ``fold`` (``extra["fold"]`` of a pair), in
    float64, from A's arrays fetched by name with ``arrays``."""
    bn, eps = fold["batchnorm"], float(fold["eps"])
    mean = arrays(bn + ".running_mean").astype(np.float64)
    scale = 1.0 / np.sqrt(arrays(bn + ".running_var").astype(np.float64) + eps)
    if fold.get("affine", True):
        scale = scale * arrays(bn + ".weight").astype(np.float64)
    if fold["role"] == "weight":
        w = arrays(fold["layer"]).astype(np.float64)
        axis = int(fold.get("axis", 0))  # 1: a ConvTranspose weight [in, out, ...]
        return w * scale.reshape((1,) * axis + (-1,) + (1,) * (w.ndim - 1 - axis))
    bias = arrays(fold["layer"]).astype(np.float64) if fold.get("layer") else 0.0
    shift = arrays(bn + ".bias").astype(np.float64) if fold.get("affine", True) else 0.0
    return (bias - mean) * scale + shift


def folded_pairs(
    a: ModelInfo,
    b: ModelInfo,
    left: dict[str, TensorInfo],
    right: dict[str, TensorInfo],
    on_load: Callable[[str], None] | None = None,
    named: dict[str, str] | None = None,
) -> Iterator[tuple[str, str, Fold, list[str]]]:
    """Yield ``(a_name, b_name, fold, absorbed)`` for each folded weight and bias found:
    ``a_name`` is the layer's tensor (or the BatchNorm's bias for a layer without one),
    ``absorbed`` the BatchNorm tensors the fold consumed.  The caller pops paired names.

    ``named`` ({A name: B name}, pairs made by name) are layers the fold may also have
    kept the names of: ``torch.onnx.export(dynamo=True)`` folds a BatchNorm into the conv
    and stores the result under the conv's own ``0.weight`` / ``0.bias`` (a conv without
    a bias gets ``<weight name>_bias``).  Such a layer is checked against its named
    counterpart only; the caller turns that pair into a ``folded`` one."""
    from .values import load_array

    batchnorms = list(_batchnorms(left))
    if not batchnorms:
        return
    named = named or {}
    pool = dict(left)  # the layers a fold may start from: unpaired, or paired by name
    pool.update({t.name: t for t in a.tensors if t.name in named and t.name not in pool})

    cache: dict[tuple[str, str], np.ndarray] = {}

    def arr(model: ModelInfo, name: str) -> np.ndarray:
        key = (model.path, name)
        if key not in cache:
            if on_load is not None:
                on_load(name)
            cache[key] = load_array(model, model.tensor(name))
        return cache[key]

    def candidates(shape: tuple[int, ...]) -> list[str]:
        return [n for n, t in right.items() if t.shape == shape and t.dtype in FLOATS]

    for bn, channels in batchnorms:
        affine = bn + ".weight" in left and bn + ".bias" in left
        for layer, layer_bias, axis in list(_layers(pool, channels)):
            if layer.startswith(bn + "."):
                continue  # the BatchNorm's own weight
            weights = [named[layer]] if layer in named else candidates(pool[layer].shape)
            if not weights:
                continue
            weight_fold = {"batchnorm": bn, "affine": affine, "role": "weight", "layer": layer}
            if axis:
                weight_fold["axis"] = axis
            solved = tuple(
                e
                for w in weights[:4]
                for e in _solve_eps(lambda n: arr(a, n), weight_fold, arr(b, w))  # noqa: B023 (called here)
                if e not in EPS_CANDIDATES
            )
            found = _first_match(
                weights,
                lambda eps: fold_values(lambda n: arr(a, n), dict(weight_fold, eps=eps)),  # noqa: B023
                lambda n: arr(b, n),
                eps_values=EPS_CANDIDATES + tuple(dict.fromkeys(solved)),
            )
            if found is None:
                continue
            b_weight, eps = found
            fold = {"batchnorm": bn, "eps": eps, "affine": affine}
            absorbed = [bn + "." + p for p in BN_PARTS if bn + "." + p in left]
            bias_fold = dict(fold, role="bias", layer=layer_bias)
            biases = (
                [named[layer_bias]]
                if layer_bias in named
                else [n for n in candidates((channels,)) if n != b_weight]
            )
            b_bias = _first_match(
                biases,
                lambda _eps: fold_values(lambda n: arr(a, n), bias_fold),  # noqa: B023 (called at once)
                lambda n: arr(b, n),
                eps_values=(eps,),
            )
            yield layer, b_weight, dict(weight_fold, eps=eps), absorbed
            if b_bias is not None:
                # a layer without a bias gets one from the fold: pair it with BN's bias
                # (its running_mean when the BatchNorm has no affine part)
                a_bias = layer_bias or bn + (".bias" if affine else ".running_mean")
                yield a_bias, b_bias[0], bias_fold, absorbed
            break  # this BatchNorm is folded; one layer feeds it


def _solve_eps(
    arrays: Callable[[str], np.ndarray], fold: Fold, got: np.ndarray
) -> tuple[float, ...]:
    """The ``eps`` that turns A's layer into ``got`` (B's candidate), rounded to 1, 2 and 3
    significant digits (float32 data pins a small eps only roughly), or ``()``: per output
    channel, ``var + eps = (w·γ / w')²`` at the
    element of largest ``|w'|``; the median over channels.  A BatchNorm built with an
    unusual ``eps`` (0.01, 1e-6) is found this way; :func:`_first_match` then checks it."""
    try:
        w = arrays(fold["layer"]).astype(np.float64)
        if got.shape != w.shape:
            return ()
        axis = int(fold.get("axis", 0))
        w, folded = np.moveaxis(w, axis, 0), np.moveaxis(got.astype(np.float64), axis, 0)
        w, folded = w.reshape(w.shape[0], -1), folded.reshape(folded.shape[0], -1)
        at = np.argmax(np.abs(folded), axis=1)
        rows = np.arange(w.shape[0])
        gamma = (
            arrays(fold["batchnorm"] + ".weight").astype(np.float64)
            if fold.get("affine", True)
            else 1.0
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            eps = np.median(
                (w[rows, at] * gamma / folded[rows, at]) ** 2
                - arrays(fold["batchnorm"] + ".running_var").astype(np.float64)
            )
    except (KeyError, ValueError):
        return ()
    if not np.isfinite(eps) or not 0 < eps < 1:
        return ()
    return tuple(dict.fromkeys(float(f"{eps:.{digits}g}") for digits in (1, 2, 3)))


def _first_match(
    names: list[str],
    expected: Callable[[float], np.ndarray],
    actual: Callable[[str], np.ndarray],
    eps_values: tuple[float, ...] = EPS_CANDIDATES,
) -> tuple[str, float] | None:
    """The first B tensor in ``names`` equal to ``expected(eps)`` for some ``eps``.  Within
    RTOL more than one ``eps`` can pass (1e-5 and 1e-6 both do): the first that also holds
    at :data:`STRICT_RTOL` (float32 rounding of the fold) wins, else the closest one."""
    best: tuple[float, str, float] | None = None
    for eps in eps_values:
        want = expected(eps)
        for name in names:
            got = actual(name).astype(np.float64)
            if got.shape != want.shape or not np.allclose(got, want, rtol=RTOL, atol=ATOL):
                continue
            if np.allclose(got, want, rtol=STRICT_RTOL, atol=STRICT_ATOL):
                return name, eps
            error = float(np.max(np.abs(got - want) - STRICT_RTOL * np.abs(want), initial=0.0))
            if best is None or error < best[0]:
                best = (error, name, eps)
            break  # this eps has its tensor
    return None if best is None else (best[1], best[2])
