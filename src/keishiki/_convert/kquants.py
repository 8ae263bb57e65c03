"""llama.cpp's k-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) quantized in numpy.

Why our own code: gguf-py (the ``gguf`` package, llama.cpp's Python side) *dequantizes* the
k-quants but has no quantizer for them (0.19: ``NotImplementedError``), and llama.cpp's C
quantizer is only reachable through ``llama-quantize`` or llama-cpp-python, neither of which
installs from PyPI without a ~10 minute C++ build.  So this module follows llama.cpp's
*reference* quantization (``ggml/src/ggml-quants.c``: ``quantize_row_q{2,3,4,5,6}_K_ref``,
``make_qkx2_quants``, ``make_qx_quants``, ``make_q3_quants``: the path ``llama-quantize``
takes without an importance matrix) step for step, written over all blocks at once: every
loop of the C code that runs per block is an array operation here; the loops left in Python
are the C code's fixed search steps (at most 21) and, for Q3_K, its per-element refinement (16
elements x 5 passes), each over every block of the chunk at once.

Values are float32 as in the C code; rounding is round-half-to-even (``np.rint``, as the C
``nearest_int`` trick does) and scales go through float16 like ``GGML_FP32_TO_FP16``.  The
bytes are the C structs' layouts (``block_q4_K`` ...), so ``gguf.quants.dequantize`` (a port
of llama.cpp's dequantizers) reads them back; tests check that, the round-trip error against
llama.cpp's own bounds (``tests/test-quantize-fns.cpp``) and a line-by-line transcription of
the C functions on random blocks.
"""

from __future__ import annotations

import numpy as np

QK_K = 256
GROUP_MAX_EPS = 1e-15
# bytes per 256-value block (the C structs' sizes; gguf.GGML_QUANT_SIZES agrees)
BLOCK_BYTES = {"Q2_K": 84, "Q3_K": 110, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210}
CHUNK_BLOCKS = 4096  # blocks quantized at once: bounds the temporaries to a few tens of MB

_f32 = np.float32


def quantize(arr: np.ndarray, qtype: str) -> np.ndarray:
    """``arr`` (rows a multiple of 256 long) as the bytes of GGML type ``qtype`` (``"Q4_K"``
    ...): a uint8 array of shape ``(*arr.shape[:-1], row_bytes)``, as gguf's writer takes
    quantized tensors.

    Raises:
        ValueError: an unknown type, or rows that are not a multiple of 256 values.
    """
    fn = _QUANTIZERS.get(qtype)
    if fn is None:
        raise ValueError(f"no k-quant quantizer for {qtype!r}: one of {', '.join(_QUANTIZERS)}")
    if not arr.shape or arr.shape[-1] % QK_K:
        raise ValueError(
            f"{qtype} needs rows of a multiple of {QK_K} values, got shape {list(arr.shape)}"
        )
    flat = np.ascontiguousarray(arr, dtype=_f32).reshape(-1, QK_K)
    out = np.empty((flat.shape[0], BLOCK_BYTES[qtype]), dtype=np.uint8)
    for start in range(0, flat.shape[0], CHUNK_BLOCKS):
        stop = start + CHUNK_BLOCKS
        out[start:stop] = fn(flat[start:stop])
    row_bytes = arr.shape[-1] // QK_K * BLOCK_BYTES[qtype]
    return out.reshape(*arr.shape[:-1], row_bytes)


# ---- the search helpers of ggml-quants.c, over groups (one group per row of x) ----------


def _fp16(x: np.ndarray) -> np.ndarray:
    """float32 -> float16 -> float32 (``GGML_FP32_TO_FP16`` then back), and the fp16 bits."""
    h = np.asarray(x, dtype=_f32).astype(np.float16)
    return h.astype(_f32), h


def _sum(a: np.ndarray) -> np.ndarray:
    """Sums over the first axis of ``[n, G]``: numpy adds whole rows in order, so each
    group's values are added left to right in float32 as the C loops add them (a row sum
    would be pairwise, whose last-bit differences flip the searches' comparisons)."""
    return np.add.reduce(a, axis=0)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den != 0, num / np.where(den != 0, den, 1), 0).astype(_f32)


def _columns(x: np.ndarray) -> np.ndarray:
    """``[G, n]`` groups as a C-contiguous float32 ``[n, G]``: the helpers below work on
    groups as columns, so per-group values broadcast over rows and sums stay in order."""
    return np.ascontiguousarray(x.T, dtype=_f32)


def _round_clip(v: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """``MAX(lo, MIN(hi, nearest_int(v)))`` in place on the float32 array ``v``."""
    np.rint(v, out=v)
    return np.clip(v, lo, hi, out=v)


def make_qkx2_quants(
    x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``make_qkx2_quants`` for every row of ``x`` (``[G, n]``) with weights ``w``: (scale
    ``[G]``, the_min ``[G]`` (positive: subtracted), L ``[G, n]`` in 0..nmax)."""
    x, w = _columns(x), _columns(w)
    mn = np.minimum(x.min(axis=0), 0).astype(_f32)
    mx = x.max(axis=0)
    flat = mx == mn
    sum_w = _sum(w)
    sum_x = _sum(w * x)

    def err(scale, mins, L):
        diff = scale * L
        diff += mins
        diff -= x
        if use_mad:
            np.abs(diff, out=diff)
        else:
            diff *= diff
        diff *= w
        return _sum(diff)

    def levels(iscale):
        v = x - mn
        v *= iscale
        return _round_clip(v, 0, nmax)

    scale = (1 / (_f32(nmax) / np.where(flat, 1, mx - mn))).astype(_f32)
    L = levels(_f32(nmax) / np.where(flat, 1, mx - mn).astype(_f32))
    best = err(scale, mn, L)
    for step in range(nstep + 1):
        span = mx - mn
        iscale = (_f32(rmin + rdelta * step) + _f32(nmax)) / np.where(span == 0, 1, span)
        laux = levels(iscale.astype(_f32))
        wl = w * laux
        sum_l, sum_l2, sum_xl = _sum(wl), _sum(wl * laux), _sum(wl * x)
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = _safe_div(sum_w * sum_xl - sum_x * sum_l, D)
        this_min = _safe_div(sum_l2 * sum_x - sum_l * sum_xl, D)
        pos = this_min > 0
        this_scale = np.where(pos, _safe_div(sum_xl, sum_l2), this_scale)
        this_min = np.where(pos, 0, this_min).astype(_f32)
        cur = err(this_scale, this_min, laux)
        better = (D > 0) & (cur < best) & ~flat
        if better.any():
            np.copyto(L, laux, where=better)
            best = np.where(better, cur, best)
            scale = np.where(better, this_scale, scale)
            mn = np.where(better, this_min, mn)
    L[:, flat] = 0
    scale = np.where(flat, 0, scale).astype(_f32)
    return scale, (-mn).astype(_f32), L.T


def _signed_max(x: np.ndarray) -> np.ndarray:
    """Per column of ``[n, G]``: the value of largest magnitude (the first one on ties)."""
    idx = np.abs(x).argmax(axis=0)
    return np.take_along_axis(x, idx[None, :], axis=0)[0]


def make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """``make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL)`` for every row of ``x``:
    (scale ``[G]`` (signed), L ``[G, n]`` in 0..2*nmax-1)."""
    x = _columns(x)
    mx = _signed_max(x)
    zero = np.abs(mx) < GROUP_MAX_EPS
    mx = np.where(zero, 1, mx).astype(_f32)
    w = x * x
    wx = w * x

    def attempt(iscale):
        l = _round_clip(iscale * x, -nmax, nmax - 1)
        wl = w * l
        wl *= l
        return l, _sum(wx * l), _sum(wl)

    L, sumlx, suml2 = attempt(_f32(-nmax) / mx)
    scale = _safe_div(sumlx, suml2)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        l, sumlx, suml2 = attempt(-(_f32(nmax) + _f32(0.1) * _f32(step)) / mx)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        if better.any():
            np.copyto(L, l, where=better)
            new_scale = _safe_div(sumlx, suml2)
            scale = np.where(better, new_scale, scale)
            best = np.where(better, new_scale * sumlx, best)
    L += nmax
    L[:, zero] = 0
    return np.where(zero, 0, scale).astype(_f32), L.T


def make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """``make_q3_quants(n, nmax, x, L, do_rmse=true)`` for every row of ``x``: (scale, L in
    0..2*nmax-1).  The C code refines one element at a time (each change moves the sums the
    next one sees), so the element loop stays; it runs over all groups at once."""
    x = _columns(x)
    mx = _signed_max(x)
    zero = np.abs(mx) < GROUP_MAX_EPS
    iscale = _f32(-nmax) / np.where(zero, 1, mx).astype(_f32)
    L = _round_clip(iscale * x, -nmax, nmax - 1)
    w = x * x
    sumlx = _sum(w * x * L)
    suml2 = _sum(w * L * L)
    active = ~zero
    for _ in range(5):
        changed = np.zeros(x.shape[1], dtype=bool)
        for i in range(x.shape[0]):
            wi, xi, li = w[i], x[i], L[i]
            slx = sumlx - wi * xi * li
            sl2 = suml2 - wi * li * li
            ok = active & (slx > 0)
            new_l = _round_clip(_safe_div(xi * sl2, slx), -nmax, nmax - 1)
            ok &= new_l != li
            slx = slx + wi * xi * new_l
            sl2 = sl2 + wi * new_l * new_l
            ok &= (sl2 > 0) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            if ok.any():
                L[i] = np.where(ok, new_l, li)
                sumlx = np.where(ok, slx, sumlx)
                suml2 = np.where(ok, sl2, suml2)
                changed |= ok
        active &= changed
        if not active.any():
            break
    L += nmax
    L[:, zero] = 0
    return np.where(zero, 0, _safe_div(sumlx, suml2)).astype(_f32), L.T


# ---- bit packing shared by several types -------------------------------------------------


def _pack_2bit(L: np.ndarray) -> np.ndarray:
    """``qs[j/4 + l] = L[j+l] | L[j+l+32] << 2 | L[j+l+64] << 4 | L[j+l+96] << 6`` for
    j in (0, 128): ``[nb, 256]`` values 0..3 -> ``[nb, 64]`` bytes."""
    q = L.astype(np.uint8).reshape(-1, 2, 4, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(-1, 64)


def _pack_scale_min_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """The 12-byte 6-bit scale/min packing of Q4_K and Q5_K (``get_scale_min_k4``'s inverse):
    ``ls``, ``lm`` ``[nb, 8]`` values 0..63."""
    ls, lm = ls.astype(np.uint8), lm.astype(np.uint8)
    out = np.zeros((ls.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    out[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    return out


def _f16_bytes(h: np.ndarray) -> np.ndarray:
    return h.astype(np.float16).reshape(-1, 1).view(np.uint8)


def _requant(
    x: np.ndarray, d: np.ndarray, dm: np.ndarray, L: np.ndarray, lo: int, hi: int
) -> np.ndarray:
    """``L = clamp(nearest_int((x + dm) / d), lo, hi)`` per sub-block where ``d != 0``; the
    search's L is kept where the scale rounded to 0 (the C code's ``if (!d) continue``).
    ``x``, ``L`` ``[nb, S, n]``; ``d``, ``dm`` ``[nb, S]``."""
    nz = d != 0
    q = np.clip(np.rint((x + dm[..., None]) / np.where(nz, d, 1)[..., None]), lo, hi)
    return np.where(nz[..., None], q, L).astype(_f32)


# ---- the five types ----------------------------------------------------------------------


def _q2_k(x: np.ndarray) -> np.ndarray:
    """``quantize_row_q2_K_ref``: 16 sub-blocks of 16, 2-bit values with a 4-bit scale and
    min each; block = scales[16] qs[64] d dmin (84 bytes)."""
    nb = x.shape[0]
    g = x.reshape(-1, 16)
    scales, mins, L = make_qkx2_quants(g, np.abs(g), 3, -0.5, 0.1, 15, True)
    scales, mins = scales.reshape(nb, 16), mins.reshape(nb, 16)
    max_scale, max_min = scales.max(axis=1), mins.max(axis=1)
    ls = np.where(
        max_scale[:, None] > 0, np.rint(_safe_div(_f32(15), max_scale)[:, None] * scales), 0
    ).astype(np.uint8)
    lm = np.where(
        max_min[:, None] > 0, np.rint(_safe_div(_f32(15), max_min)[:, None] * mins), 0
    ).astype(np.uint8)
    d, dh = _fp16(np.where(max_scale > 0, max_scale / _f32(15), 0))
    dmin, dminh = _fp16(np.where(max_min > 0, max_min / _f32(15), 0))
    sc = ls | (lm << 4)
    L = _requant(
        x.reshape(nb, 16, 16),
        d[:, None] * (sc & 0xF),
        dmin[:, None] * (sc >> 4),
        L.reshape(nb, 16, 16),
        0,
        3,
    )
    return np.concatenate(
        [sc, _pack_2bit(L.reshape(nb, 256)), _f16_bytes(dh), _f16_bytes(dminh)], axis=1
    )


def _q3_k(x: np.ndarray) -> np.ndarray:
    """``quantize_row_q3_K_ref``: 16 sub-blocks of 16, 3-bit values (low 2 bits in qs, the
    high bit in hmask) with a 6-bit signed scale; block = hmask[32] qs[64] scales[12] d."""
    nb = x.shape[0]
    scales, L = make_q3_quants(x.reshape(-1, 16), 4)
    scales = scales.reshape(nb, 16)
    idx = np.abs(scales).argmax(axis=1)
    max_scale = np.take_along_axis(scales, idx[:, None], axis=1)[:, 0]
    has = max_scale != 0
    iscale = _safe_div(_f32(-32), max_scale)
    l = (np.clip(np.rint(iscale[:, None] * scales), -32, 31) + 32).astype(np.uint8)
    l = np.where(has[:, None], l, 0).astype(np.uint8)
    packed = np.zeros((nb, 12), dtype=np.uint8)
    packed[:, 0:8] = (l[:, 0:8] & 0xF) | ((l[:, 8:16] & 0xF) << 4)
    hi = (l >> 4).reshape(nb, 4, 4)  # [nb, j // 4, j % 4]
    packed[:, 8:12] = hi[:, 0] | (hi[:, 1] << 2) | (hi[:, 2] << 4) | (hi[:, 3] << 6)
    d, dh = _fp16(np.where(has, _safe_div(_f32(1), iscale), 0))
    sc = np.where(has[:, None], l.astype(np.int16) - 32, -32)  # what the packing holds back
    dl = d[:, None] * sc
    L = _requant(x.reshape(nb, 16, 16), dl, np.zeros_like(dl), L.reshape(nb, 16, 16) - 4, -4, 3) + 4
    L = L.reshape(nb, 256).astype(np.uint8)
    # the high bit of value j goes to hmask[j % 32], bit j // 32
    high = (L > 3).reshape(nb, 8, 32).astype(np.uint8)
    hmask = (high << np.arange(8, dtype=np.uint8)[None, :, None]).sum(axis=1, dtype=np.uint8)
    L = np.where(L > 3, L - 4, L)
    return np.concatenate([hmask, _pack_2bit(L), packed, _f16_bytes(dh)], axis=1)


def _q45_k(x: np.ndarray, nmax: int, rmin: float, nstep: int) -> tuple:
    """The part Q4_K and Q5_K share: 8 sub-blocks of 32 with a 6-bit scale and min each.
    Returns (L ``[nb, 256]``, scale bytes ``[nb, 12]``, d bits, dmin bits)."""
    nb = x.shape[0]
    g = x.reshape(-1, 32)
    av_x = np.sqrt(_sum(_columns(g * g)) / _f32(32))
    scales, mins, L = make_qkx2_quants(g, av_x[:, None] + np.abs(g), nmax, rmin, 0.1, nstep, False)
    scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
    max_scale, max_min = scales.max(axis=1), mins.max(axis=1)
    inv_scale = np.where(max_scale > 0, _safe_div(_f32(63), max_scale), 0).astype(_f32)
    inv_min = np.where(max_min > 0, _safe_div(_f32(63), max_min), 0).astype(_f32)
    ls = np.minimum(63, np.rint(inv_scale[:, None] * scales)).astype(np.uint8)
    lm = np.minimum(63, np.rint(inv_min[:, None] * mins)).astype(np.uint8)
    d, dh = _fp16(max_scale / _f32(63))
    dmin, dminh = _fp16(max_min / _f32(63))
    L = _requant(
        x.reshape(nb, 8, 32), d[:, None] * ls, dmin[:, None] * lm, L.reshape(nb, 8, 32), 0, nmax
    )
    return L.reshape(nb, 256).astype(np.uint8), _pack_scale_min_k4(ls, lm), dh, dminh


def _q4_k(x: np.ndarray) -> np.ndarray:
    """``quantize_row_q4_K_ref``; block = d dmin scales[12] qs[128] (144 bytes)."""
    L, scales, dh, dminh = _q45_k(x, 15, -1.0, 20)
    q = L.reshape(-1, 4, 2, 32)
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([_f16_bytes(dh), _f16_bytes(dminh), scales, qs], axis=1)


def _q5_k(x: np.ndarray) -> np.ndarray:
    """``quantize_row_q5_K_ref``; block = d dmin scales[12] qh[32] qs[128] (176 bytes)."""
    L, scales, dh, dminh = _q45_k(x, 31, -0.5, 15)
    q = L.reshape(-1, 4, 2, 32)  # [nb, n / 64, first or second 32, j]
    high = (q > 15).astype(np.uint8)
    # bit 2k of qh[j] is value 64k + j's high bit, bit 2k+1 value 64k + 32 + j's
    shifts = (2 * np.arange(4, dtype=np.uint8))[None, :, None, None] + np.arange(2, dtype=np.uint8)[
        None, None, :, None
    ]
    qh = (high << shifts).reshape(-1, 8, 32).sum(axis=1, dtype=np.uint8)
    low = q & 0xF
    qs = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([_f16_bytes(dh), _f16_bytes(dminh), scales, qh, qs], axis=1)


def _q6_k(x: np.ndarray) -> np.ndarray:
    """``quantize_row_q6_K_ref``: 16 sub-blocks of 16, 6-bit values with an 8-bit signed
    scale; block = ql[128] qh[64] scales[16] d (210 bytes)."""
    nb = x.shape[0]
    scales, L = make_qx_quants(x.reshape(-1, 16), 32)
    scales = scales.reshape(nb, 16)
    idx = np.abs(scales).argmax(axis=1)
    max_scale = np.take_along_axis(scales, idx[:, None], axis=1)[:, 0]
    empty = np.abs(max_scale) < GROUP_MAX_EPS
    iscale = _safe_div(_f32(-128), np.where(empty, 1, max_scale))
    d, dh = _fp16(np.where(empty, 0, _safe_div(_f32(1), iscale)))
    sc = np.minimum(127, np.rint(iscale[:, None] * scales)).astype(np.int8)
    sc[empty] = 0
    L = (
        _requant(
            x.reshape(nb, 16, 16),
            d[:, None] * sc,
            np.zeros((nb, 16), _f32),
            L.reshape(nb, 16, 16) - 32,
            -32,
            31,
        )
        + 32
    )
    L = L.reshape(nb, 2, 4, 32).astype(np.uint8)  # [nb, half of 128, quarter, l]
    L[empty] = 0
    lo, hi = L & 0xF, L >> 4
    ql = np.concatenate(
        [lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)], axis=2
    ).reshape(nb, 128)
    qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)
    qh = qh.reshape(nb, 64)
    return np.concatenate([ql, qh, sc.view(np.uint8), _f16_bytes(dh)], axis=1)


_QUANTIZERS = {"Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k}
TYPES = tuple(_QUANTIZERS)
