"""A line-by-line transcription of llama.cpp's reference k-quant functions (ggml-quants.c:
make_qkx2_quants, make_qx_quants, make_q3_quants, quantize_row_q{2..6}_K_ref), one block at
a time in float32 with sequential sums as the C loops do: slow, for checking that
keishiki._convert.kquants (the same algorithm over all blocks at once) produces the same bytes.
"""

from __future__ import annotations

import numpy as np

f32 = np.float32
QK_K = 256
EPS = f32(1e-15)


def nearest_int(v) -> int:
    return int(np.rint(f32(v)))


def fp16(v) -> tuple[float, bytes]:
    h = np.float16(f32(v))
    return f32(h), h.tobytes()


def make_qkx2(x, w, nmax, rmin, rdelta, nstep, use_mad):
    n = len(x)
    mn, mx = x[0], x[0]
    sum_w = w[0]
    sum_x = f32(sum_w * x[0])
    for i in range(1, n):
        mn = min(mn, x[i])
        mx = max(mx, x[i])
        sum_w = f32(sum_w + w[i])
        sum_x = f32(sum_x + f32(w[i] * x[i]))
    if mn > 0:
        mn = f32(0)
    if mx == mn:
        return f32(0), f32(-mn), [0] * n
    iscale = f32(f32(nmax) / f32(mx - mn))
    scale = f32(1 / iscale)
    L = [0] * n
    best = f32(0)
    for i in range(n):
        L[i] = max(0, min(nmax, nearest_int(f32(iscale * f32(x[i] - mn)))))
        diff = f32(f32(scale * L[i]) + mn - x[i])
        diff = abs(diff) if use_mad else f32(diff * diff)
        best = f32(best + f32(w[i] * diff))
    for step in range(nstep + 1):
        iscale = f32(f32(f32(rmin + rdelta * step) + f32(nmax)) / f32(mx - mn))
        laux = [0] * n
        sum_l = sum_l2 = sum_xl = f32(0)
        for i in range(n):
            l = max(0, min(nmax, nearest_int(f32(iscale * f32(x[i] - mn)))))
            laux[i] = l
            sum_l = f32(sum_l + f32(w[i] * l))
            sum_l2 = f32(sum_l2 + f32(f32(w[i] * l) * l))
            sum_xl = f32(sum_xl + f32(f32(w[i] * l) * x[i]))
        D = f32(f32(sum_w * sum_l2) - f32(sum_l * sum_l))
        if D > 0:
            this_scale = f32(f32(f32(sum_w * sum_xl) - f32(sum_x * sum_l)) / D)
            this_min = f32(f32(f32(sum_l2 * sum_x) - f32(sum_l * sum_xl)) / D)
            if this_min > 0:
                this_min = f32(0)
                this_scale = f32(sum_xl / sum_l2)
            cur = f32(0)
            for i in range(n):
                diff = f32(f32(this_scale * laux[i]) + this_min - x[i])
                diff = abs(diff) if use_mad else f32(diff * diff)
                cur = f32(cur + f32(w[i] * diff))
            if cur < best:
                L, best, scale, mn = list(laux), cur, this_scale, this_min
    return scale, f32(-mn), L


def make_qx(x, nmax):
    n = len(x)
    mx = amax = f32(0)
    for v in x:
        if abs(v) > amax:
            amax, mx = abs(v), v
    if amax < EPS:
        return f32(0), [0] * n
    iscale = f32(f32(-nmax) / mx)
    sumlx = suml2 = f32(0)
    L = [0] * n
    for i in range(n):
        l = max(-nmax, min(nmax - 1, nearest_int(f32(iscale * x[i]))))
        L[i] = l + nmax
        w = f32(x[i] * x[i])
        sumlx = f32(sumlx + f32(f32(w * x[i]) * l))
        suml2 = f32(suml2 + f32(f32(w * l) * l))
    scale = f32(sumlx / suml2) if suml2 else f32(0)
    best = f32(scale * sumlx)
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = f32(-f32(f32(nmax) + f32(f32(0.1) * step)) / mx)
        sumlx = suml2 = f32(0)
        for i in range(n):
            l = max(-nmax, min(nmax - 1, nearest_int(f32(iscale * x[i]))))
            w = f32(x[i] * x[i])
            sumlx = f32(sumlx + f32(f32(w * x[i]) * l))
            suml2 = f32(suml2 + f32(f32(w * l) * l))
        if suml2 > 0 and f32(sumlx * sumlx) > f32(best * suml2):
            for i in range(n):
                L[i] = nmax + max(-nmax, min(nmax - 1, nearest_int(f32(iscale * x[i]))))
            scale = f32(sumlx / suml2)
            best = f32(scale * sumlx)
    return scale, L


def make_q3(x, nmax):
    n = len(x)
    mx = amax = f32(0)
    for v in x:
        if abs(v) > amax:
            amax, mx = abs(v), v
    if amax < EPS:
        return f32(0), [0] * n
    iscale = f32(f32(-nmax) / mx)
    L = [0] * n
    sumlx = suml2 = f32(0)
    for i in range(n):
        l = max(-nmax, min(nmax - 1, nearest_int(f32(iscale * x[i]))))
        L[i] = l
        w = f32(x[i] * x[i])
        sumlx = f32(sumlx + f32(f32(w * x[i]) * l))
        suml2 = f32(suml2 + f32(f32(w * l) * l))
    for _ in range(5):
        changed = 0
        for i in range(n):
            w = f32(x[i] * x[i])
            slx = f32(sumlx - f32(f32(w * x[i]) * L[i]))
            if slx > 0:
                sl2 = f32(suml2 - f32(f32(w * L[i]) * L[i]))
                new_l = max(-nmax, min(nmax - 1, nearest_int(f32(f32(x[i] * sl2) / slx))))
                if new_l != L[i]:
                    slx = f32(slx + f32(f32(w * x[i]) * new_l))
                    sl2 = f32(sl2 + f32(f32(w * new_l) * new_l))
                    if sl2 > 0 and f32(f32(slx * slx) * suml2) > f32(f32(sumlx * sumlx) * sl2):
                        L[i], sumlx, suml2 = new_l, slx, sl2
                        changed += 1
        if not changed:
            break
    return (f32(sumlx / suml2) if suml2 > 0 else f32(0)), [v + nmax for v in L]


def pack2(L) -> bytes:
    out = bytearray(64)
    for j in range(0, QK_K, 128):
        for l in range(32):
            out[j // 4 + l] = (
                L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6)
            )
    return bytes(out)


def q2_k(x) -> bytes:
    L = [0] * QK_K
    scales, mins = [], []
    for j in range(16):
        g = x[16 * j : 16 * j + 16]
        s, m, l = make_qkx2(g, np.abs(g), 3, -0.5, 0.1, 15, True)
        scales.append(s)
        mins.append(m)
        L[16 * j : 16 * j + 16] = l
    max_scale, max_min = max(max(scales), f32(0)), max(max(mins), f32(0))
    sc = [0] * 16
    if max_scale > 0:
        iscale = f32(f32(15) / max_scale)
        sc = [nearest_int(f32(iscale * s)) for s in scales]
        d, d_b = fp16(f32(max_scale / f32(15)))
    else:
        d, d_b = fp16(0)
    if max_min > 0:
        iscale = f32(f32(15) / max_min)
        sc = [s | (nearest_int(f32(iscale * m)) << 4) for s, m in zip(sc, mins)]
        dmin, dmin_b = fp16(f32(max_min / f32(15)))
    else:
        dmin, dmin_b = fp16(0)
    for j in range(16):
        dd = f32(d * (sc[j] & 0xF))
        if not dd:
            continue
        dm = f32(dmin * (sc[j] >> 4))
        for i in range(16):
            L[16 * j + i] = max(0, min(3, nearest_int(f32(f32(x[16 * j + i] + dm) / dd))))
    return bytes(sc) + pack2(L) + d_b + dmin_b


def q3_k(x) -> bytes:
    L = [0] * QK_K
    scales = []
    for j in range(16):
        s, l = make_q3(x[16 * j : 16 * j + 16], 4)
        scales.append(s)
        L[16 * j : 16 * j + 16] = l
    max_scale = amax = f32(0)
    for s in scales:
        if abs(s) > amax:
            amax, max_scale = abs(s), s
    packed = bytearray(12)
    if max_scale:
        iscale = f32(f32(-32) / max_scale)
        for j in range(16):
            l = max(-32, min(31, nearest_int(f32(iscale * scales[j])))) + 32
            if j < 8:
                packed[j] = l & 0xF
            else:
                packed[j - 8] |= (l & 0xF) << 4
            packed[j % 4 + 8] |= (l >> 4) << (2 * (j // 4))
        d, d_b = fp16(f32(1 / iscale))
    else:
        d, d_b = fp16(0)
    for j in range(16):
        sc = packed[j] & 0xF if j < 8 else packed[j - 8] >> 4
        sc = (sc | (((packed[8 + j % 4] >> (2 * (j // 4))) & 3) << 4)) - 32
        dd = f32(d * sc)
        if not dd:
            continue
        for i in range(16):
            L[16 * j + i] = max(-4, min(3, nearest_int(f32(x[16 * j + i] / dd)))) + 4
    hmask = bytearray(32)
    m, hm = 0, 1
    for j in range(QK_K):
        if L[j] > 3:
            hmask[m] |= hm
            L[j] -= 4
        m += 1
        if m == 32:
            m, hm = 0, hm << 1
    return bytes(hmask) + pack2(L) + bytes(packed) + d_b


def _q45(x, nmax, rmin, nstep):
    L = [0] * QK_K
    scales, mins = [], []
    for j in range(8):
        g = x[32 * j : 32 * j + 32]
        sum_x2 = f32(0)
        for v in g:
            sum_x2 = f32(sum_x2 + f32(v * v))
        av_x = f32(np.sqrt(f32(sum_x2 / f32(32))))
        s, m, l = make_qkx2(g, (av_x + np.abs(g)).astype(f32), nmax, rmin, 0.1, nstep, False)
        scales.append(s)
        mins.append(m)
        L[32 * j : 32 * j + 32] = l
    max_scale, max_min = max(max(scales), f32(0)), max(max(mins), f32(0))
    inv_scale = f32(f32(63) / max_scale) if max_scale > 0 else f32(0)
    inv_min = f32(f32(63) / max_min) if max_min > 0 else f32(0)
    packed = bytearray(12)
    ls_all, lm_all = [], []
    for j in range(8):
        ls = min(63, nearest_int(f32(inv_scale * scales[j])))
        lm = min(63, nearest_int(f32(inv_min * mins[j])))
        ls_all.append(ls)
        lm_all.append(lm)
        if j < 4:
            packed[j], packed[j + 4] = ls, lm
        else:
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
            packed[j - 4] |= (ls >> 4) << 6
            packed[j] |= (lm >> 4) << 6
    d, d_b = fp16(f32(max_scale / f32(63)))
    dmin, dmin_b = fp16(f32(max_min / f32(63)))
    for j in range(8):
        dd = f32(d * ls_all[j])
        if not dd:
            continue
        dm = f32(dmin * lm_all[j])
        for i in range(32):
            L[32 * j + i] = max(0, min(nmax, nearest_int(f32(f32(x[32 * j + i] + dm) / dd))))
    return L, bytes(packed), d_b, dmin_b


def q4_k(x) -> bytes:
    L, packed, d_b, dmin_b = _q45(x, 15, -1.0, 20)
    qs = bytearray(128)
    for k, j in enumerate(range(0, QK_K, 64)):
        for l in range(32):
            qs[32 * k + l] = L[j + l] | (L[j + l + 32] << 4)
    return d_b + dmin_b + packed + bytes(qs)


def q5_k(x) -> bytes:
    L, packed, d_b, dmin_b = _q45(x, 31, -0.5, 15)
    qh, ql = bytearray(32), bytearray(128)
    m1, m2 = 1, 2
    for k, n in enumerate(range(0, QK_K, 64)):
        for j in range(32):
            l1, l2 = L[n + j], L[n + j + 32]
            if l1 > 15:
                l1 -= 16
                qh[j] |= m1
            if l2 > 15:
                l2 -= 16
                qh[j] |= m2
            ql[32 * k + j] = l1 | (l2 << 4)
        m1, m2 = m1 << 2, m2 << 2
    return d_b + dmin_b + packed + bytes(qh) + bytes(ql)


def q6_k(x) -> bytes:
    L = [0] * QK_K
    scales = []
    max_scale = max_abs = f32(0)
    for ib in range(16):
        s, l = make_qx(x[16 * ib : 16 * ib + 16], 32)
        scales.append(s)
        L[16 * ib : 16 * ib + 16] = l
        if abs(s) > max_abs:
            max_abs, max_scale = abs(s), s
    if max_abs < EPS:
        return bytes(210)
    iscale = f32(f32(-128) / max_scale)
    d, d_b = fp16(f32(1 / iscale))
    sc = [min(127, nearest_int(f32(iscale * s))) for s in scales]
    for j in range(16):
        dd = f32(d * sc[j])
        if not dd:
            continue
        for i in range(16):
            L[16 * j + i] = max(-32, min(31, nearest_int(f32(x[16 * j + i] / dd)))) + 32
    ql, qh = bytearray(128), bytearray(64)
    for h, j in enumerate(range(0, QK_K, 128)):
        for l in range(32):
            q1, q2 = L[j + l] & 0xF, L[j + l + 32] & 0xF
            q3, q4 = L[j + l + 64] & 0xF, L[j + l + 96] & 0xF
            ql[64 * h + l] = q1 | (q3 << 4)
            ql[64 * h + l + 32] = q2 | (q4 << 4)
            qh[32 * h + l] = (
                (L[j + l] >> 4)
                | ((L[j + l + 32] >> 4) << 2)
                | ((L[j + l + 64] >> 4) << 4)
                | ((L[j + l + 96] >> 4) << 6)
            )
    return bytes(ql) + bytes(qh) + bytes(np.array(sc, np.int8).view(np.uint8)) + d_b


REFERENCE = {"Q2_K": q2_k, "Q3_K": q3_k, "Q4_K": q4_k, "Q5_K": q5_k, "Q6_K": q6_k}
