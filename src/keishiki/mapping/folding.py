"""BatchNorm folded into the layer before it: the ONNX exporters' constant folding.

``torch.onnx.export`` of a model in eval mode (``do_constant_folding=True``, the default)
merges each ``Conv``/``Linear`` → ``BatchNorm`` pair into one layer, as
``torch.nn.utils.fusion.fuse_conv_bn_weights`` does::

    scale = gamma / sqrt(running_var + eps)
    W' = W * scale (along the output channels, dim 0)
    b' = (b - running_mean) * scale + beta         (b = 0 when the layer has no bias)

The folded tensors get generated names (``onnx::Conv_16``, ``onnx::Conv_17``) and equal no
tensor of the checkpoint, so neither names nor content hashes can pair them.  This module
recomputes the fold from the checkpoint's tensors and pairs a generated tensor when the
values agree, trying the ``eps`` values PyTorch's layers default to.  The BatchNorm's own
tensors are then accounted for ("folded into ..."), not reported as missing.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from ..core.model import ModelInfo
from ..core.tensor import TensorInfo

EPS_CANDIDATES = (1e-5, 1e-3, 1e-4)  # BatchNorm's default, then Keras/TF-ported models
RTOL, ATOL = 1e-4, 1e-6               # float32 rounding of the fold, not a loose match
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


def _layers(left: dict[str, TensorInfo], channels: int) -> Iterator[tuple[str, str | None]]:
    """(weight name, bias name or None) of unpaired layers with ``channels`` outputs."""
    for name, info in left.items():
        if (name.endswith(".weight") and len(info.shape) >= 2 and info.shape[0] == channels
                and info.dtype in FLOATS):
            bias = name[: -len("weight")] + "bias"
            yield name, bias if bias in left and left[bias].shape == (channels,) else None


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
        return w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    bias = arrays(fold["layer"]).astype(np.float64) if fold.get("layer") else 0.0
    shift = arrays(bn + ".bias").astype(np.float64) if fold.get("affine", True) else 0.0
    return (bias - mean) * scale + shift


def folded_pairs(a: ModelInfo, b: ModelInfo, left: dict[str, TensorInfo],
                 right: dict[str, TensorInfo],
                 on_load: Callable[[str], None] | None = None
                 ) -> Iterator[tuple[str, str, Fold, list[str]]]:
    """Yield ``(a_name, b_name, fold, absorbed)`` for each folded weight and bias found:
    ``a_name`` is the layer's tensor (or the BatchNorm's bias for a layer without one),
    ``absorbed`` the BatchNorm tensors the fold consumed.  The caller pops paired names."""
    from .values import load_array

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

    for bn, channels in list(_batchnorms(left)):
        affine = bn + ".weight" in left and bn + ".bias" in left
        for layer, layer_bias in list(_layers(left, channels)):
            if layer.startswith(bn + "."):
                continue  # the BatchNorm's own weight
            weights = candidates(left[layer].shape)
            if not weights:
                continue
            found = _first_match(weights, lambda eps: fold_values(
                lambda n: arr(a, n), {"batchnorm": bn, "eps": eps, "affine": affine,
                                      "role": "weight", "layer": layer}),
                lambda n: arr(b, n))
            if found is None:
                continue
            b_weight, eps = found
            fold = {"batchnorm": bn, "eps": eps, "affine": affine}
            absorbed = [bn + "." + p for p in BN_PARTS if bn + "." + p in left]
            bias_fold = dict(fold, role="bias", layer=layer_bias)
            b_bias = _first_match([n for n in candidates((channels,)) if n != b_weight],
                                  lambda _eps: fold_values(lambda n: arr(a, n), bias_fold),
                                  lambda n: arr(b, n), eps_values=(eps,))
            yield layer, b_weight, dict(fold, role="weight", layer=layer), absorbed
            if b_bias is not None:
                # a layer without a bias gets one from the fold: pair it with BN's bias
                a_bias = layer_bias or (bn + ".bias" if affine else None)
                if a_bias is not None:
                    yield a_bias, b_bias[0], bias_fold, absorbed
            break  # this BatchNorm is folded; one layer feeds it


def _first_match(names: list[str], expected: Callable[[float], np.ndarray],
                 actual: Callable[[str], np.ndarray],
                 eps_values: tuple[float, ...] = EPS_CANDIDATES) -> tuple[str, float] | None:
    """The first B tensor in ``names`` equal to ``expected(eps)`` for some ``eps``."""
    for eps in eps_values:
        want = expected(eps)
        for name in names:
            got = actual(name)
            if got.shape == want.shape and np.allclose(got.astype(np.float64), want,
                                                       rtol=RTOL, atol=ATOL):
                return name, eps
    return None
