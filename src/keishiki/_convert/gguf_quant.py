"""GGUF quantization types and llama.cpp's rules for which tensor gets which type.

``--quant`` names are ``llama-quantize``'s (lower case): the plain types ``q4_0 q4_1 q5_0
q5_1 q8_0`` and the k-quant mixes ``q2_K q3_K_M q4_K_S q4_K_M q5_K_M q6_K`` (``q3_K``,
``q4_K``, ``q5_K`` are llama-quantize's aliases of the ``_M`` mixes).  A mix is a default type
plus per-tensor exceptions, chosen as llama.cpp's ``llama_tensor_get_type``
(``src/llama-quant.cpp``) chooses them for a llama-like architecture (no experts, not falcon):

- only 2-D ``*.weight`` tensors are quantized; norms stay float32;
- ``output.weight`` (or ``token_embd.weight`` when the model ties them) gets Q6_K, or Q8_0
  when its rows are not a multiple of the default type's block;
- ``attn_v`` and ``ffn_down`` get more bits in the ``_M`` mixes on some layers
  (``use_more_bits``: the first and last eighth and every third layer between), Q3_K_M puts
  Q5_K on the first two ``attn_v`` and ``attn_output`` at Q4_K, Q2_K lifts ``attn_v``,
  ``ffn_down`` and ``attn_output`` to Q3_K/Q4_K;
- a tensor whose rows are not a multiple of 256 falls back (Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0,
  Q5_K -> Q5_1, Q6_K -> Q8_0), and to F16 when not even a multiple of 32.

Q4_0..Q8_0 bytes come from gguf-py (``gguf.quants.quantize``), the k-quants from
:mod:`.kquants` (gguf-py has no k-quant quantizer).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .base import GGUF_QUANTS

# --quant name -> (default GGML type, llama_ftype value written as general.file_type)
MIXES: dict[str, tuple[str, int]] = {
    "q4_0": ("Q4_0", 2),
    "q4_1": ("Q4_1", 3),
    "q5_0": ("Q5_0", 8),
    "q5_1": ("Q5_1", 9),
    "q2_K": ("Q2_K", 10),
    "q3_K_M": ("Q3_K", 12),
    "q4_K_S": ("Q4_K", 14),
    "q4_K_M": ("Q4_K", 15),
    "q5_K_M": ("Q5_K", 17),
    "q6_K": ("Q6_K", 18),
}
# llama-quantize's aliases (tools/quantize/quantize.cpp: "alias for Q4_K_M" ...)
ALIASES = {"q3_K": "q3_K_M", "q4_K": "q4_K_M", "q5_K": "q5_K_M"}

BLOCK = {
    "Q4_0": 32,
    "Q4_1": 32,
    "Q5_0": 32,
    "Q5_1": 32,
    "Q8_0": 32,
    "Q2_K": 256,
    "Q3_K": 256,
    "Q4_K": 256,
    "Q5_K": 256,
    "Q6_K": 256,
}
QUANTIZED = frozenset(BLOCK)
K_QUANTS = frozenset({"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"})
_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}

# the worst relative RMS error (|w - dequant(q(w))|_2 / |w|_2) the read-back accepts per
# tensor: ~2x what each type gives on Gaussian weights (Q4_K 0.071, Q2_K 0.30: measured,
# docs/quantize.md), so a packing or scale bug fails and an outlier-heavy tensor does not
WEIGHT_REL_RMSE = {
    "Q8_0": 0.01,
    "Q6_K": 0.05,
    "Q5_0": 0.1,
    "Q5_1": 0.1,
    "Q5_K": 0.1,
    "Q4_0": 0.2,
    "Q4_1": 0.2,
    "Q4_K": 0.2,
    "Q3_K": 0.35,
    "Q2_K": 0.6,
}

_LAYER = re.compile(r"^blk\.(\d+)\.")


def canonical(quant: str) -> str | None:
    """The --quant value as written in :data:`GGUF_QUANTS` (case-insensitive), or None."""
    by_lower = {q.lower(): q for q in GGUF_QUANTS}
    return by_lower.get(str(quant).lower())


def resolve(quant: str) -> str:
    """An alias's mix (``q4_K`` -> ``q4_K_M``); other names unchanged."""
    return ALIASES.get(quant, quant)


def file_type(quant: str) -> int:
    """``general.file_type`` (llama_ftype) for a --quant value."""
    base = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}
    return base[quant] if quant in base else MIXES[resolve(quant)][1]


@dataclass
class MixState:
    """What llama.cpp's ``quantize_state_impl`` counts before choosing types: how many
    ``attn_v`` and ``ffn_down`` tensors the model has, whether ``output.weight`` is there
    (otherwise the embedding doubles as the output), and the head counts."""

    n_attention_wv: int = 0
    n_ffn_down: int = 0
    tied: bool = True
    n_gqa: int = 1
    n_layer: int = 0
    i_attention_wv: int = 0
    i_ffn_down: int = 0

    @classmethod
    def for_names(
        cls, names: list[str], n_head: int = 0, n_head_kv: int = 0, n_layer: int = 0
    ) -> "MixState":
        return cls(
            n_attention_wv=sum(_is_attn_v(n) for n in names),
            n_ffn_down=sum("ffn_down" in n for n in names),
            tied="output.weight" not in names,
            n_gqa=n_head // n_head_kv if n_head and n_head_kv else 1,
            n_layer=n_layer,
        )


def _is_attn_v(name: str) -> bool:
    return any(k in name for k in ("attn_v.weight", "attn_qkv.weight", "attn_kv_b.weight"))


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def allows_quantization(name: str, shape: tuple[int, ...]) -> bool:
    """llama.cpp's ``tensor_allows_quantization`` for the tensors of llama-like models."""
    if len(shape) < 2 or not name.endswith("weight") or "_norm.weight" in name:
        return False
    return not any(
        k in name
        for k in (
            "ffn_gate_inp.weight",
            "position_embd.weight",
            "token_types.weight",
            "attn_rel_b.weight",
        )
    )


def tensor_type(
    name: str, shape: tuple[int, ...], quant: str, state: MixState, generic: bool = False
) -> str:
    """The GGML type llama.cpp's ``llama_tensor_get_type`` gives tensor ``name`` (row-major
    ``shape``) under ``quant``, updating ``state``'s layer counters as llama.cpp does (call
    it for the tensors in file order).  Tensors it does not quantize: ``"F32"`` for 1-D,
    ``"F16"`` otherwise (what ``convert_hf_to_gguf.py`` writes before llama-quantize).
    ``generic``: tensors under their own names (not llama.cpp's), so no name rule applies:
    every 2-D tensor gets the mix's type, with the row-size fallback."""
    ftype = resolve(quant)
    new = MIXES[ftype][0]
    if generic:
        return "F32" if len(shape) < 2 else fallback(new, shape[-1])
    if not allows_quantization(name, shape):
        return "F32" if len(shape) < 2 else "F16"
    nx = shape[-1]
    if name == "output.weight" or (state.tied and name == "token_embd.weight"):
        if nx % BLOCK[new]:
            new = "Q8_0"
        elif new != "Q8_0":
            new = "Q6_K"
    elif name == "token_embd.weight":
        pass
    elif _is_attn_v(name):
        i, n = state.i_attention_wv, state.n_attention_wv
        if ftype == "q2_K":
            new = "Q4_K" if state.n_gqa >= 4 else "Q3_K"
        elif ftype == "q3_K_M":
            new = "Q5_K" if i < 2 else "Q4_K"
        elif ftype in ("q4_K_M", "q5_K_M") and _use_more_bits(i, n):
            new = "Q6_K"
        elif ftype == "q4_K_S" and i < 4:
            new = "Q5_K"
        if state.n_layer == 80 and state.n_gqa > 1 and new in ("Q3_K", "Q4_K"):
            new = "Q5_K"  # llama.cpp's LLM_TYPE_70B: 8 heads share each attn_v
        state.i_attention_wv += 1
    elif "ffn_down" in name:
        i, n = state.i_ffn_down, state.n_ffn_down
        if ftype == "q2_K":
            new = "Q3_K"
        elif ftype == "q3_K_M":
            new = "Q5_K" if i < n // 16 else "Q4_K"
        elif ftype in ("q4_K_M", "q5_K_M") and _use_more_bits(i, n):
            new = "Q6_K"
        elif ftype == "q4_K_S" and i < n // 8:
            new = "Q5_K"
        state.i_ffn_down += 1
    elif "attn_output.weight" in name:
        if ftype == "q2_K":
            new = "Q3_K"
        elif ftype == "q3_K_M":
            new = "Q4_K"
    return fallback(new, nx)


def fallback(qtype: str, nx: int) -> str:
    """llama.cpp's ``tensor_type_fallback``: a type whose block divides the row length."""
    if nx % BLOCK[qtype] == 0:
        return qtype
    qtype = _FALLBACK.get(qtype, "F16")
    return qtype if qtype in BLOCK and nx % BLOCK[qtype] == 0 else "F16"


F16_MAX = 65504.0


F32_MAX = float(np.finfo(np.float32).max)


def check_representable(name: str, arr: np.ndarray, qtype: str) -> None:
    """Refuse values ``qtype`` cannot hold, instead of writing garbage.

    Every GGML block type keeps float16 scales: one NaN/inf makes its block's scale NaN/inf
    and every value of the block garbage, and a magnitude past float16's 65504 overflows the
    scale (llama.cpp's ``ggml_validate_row_data`` rejects such rows when it loads them).
    F16 itself turns finite values past 65504 into inf.  F32/BF16 hold every float32 value,
    NaN and inf included, and an F16 keeps a NaN/inf already there: those are written as
    they are.

    Raises:
        InvalidRequest: naming the tensor, the count of bad values and the types that keep
            them.
    """
    from ..core import dtypes
    from ..errors import InvalidRequest
    from .weights import FLOATING, cast_array

    if arr.dtype == np.float64 and qtype != "keep" and arr.size:
        # every GGML type but F64 computes from float32: a finite float64 past its range
        # would be written as inf
        big = float(np.max(np.abs(arr[np.isfinite(arr)]), initial=0.0))
        if big > F32_MAX:
            raise InvalidRequest(
                f"{name}: a float64 weight of magnitude {big:.3g}, past float32's "
                f"{F32_MAX:.3g}; {qtype} would hold inf"
            )
    if (
        qtype not in QUANTIZED
        and qtype != "F16"
        or dtypes.from_numpy(arr.dtype) not in FLOATING
        or qtype == "F16"
        and arr.dtype == np.float16
    ):  # kept as it is: nothing to check
        return
    values = cast_array(arr, "float32")  # bfloat16 (ml_dtypes) and float16 sources
    if values.size:
        # the common case in two passes without temporaries: a finite min and max within
        # float16's range mean no NaN/inf and no value past it (NaN makes both NaN)
        low, high = float(np.min(values)), float(np.max(values))
        if -F16_MAX <= low and high <= F16_MAX:
            return
    finite = np.isfinite(values)
    n_bad = int(values.size - np.count_nonzero(finite))
    if n_bad and qtype in QUANTIZED:
        raise InvalidRequest(
            f"{name}: {n_bad} NaN/inf value(s); {qtype} cannot hold them (a "
            f"block's float16 scale becomes NaN/inf and the whole block "
            f"garbage): fix the weights, or keep them as they are with "
            f"quant=f32 or bf16"
        )
    big = float(np.max(np.abs(values[finite]), initial=0.0))
    if big > F16_MAX:
        what = "rounds it to inf" if qtype == "F16" else "overflows its float16 block scales"
        raise InvalidRequest(
            f"{name}: a weight of magnitude {big:.3g}, past float16's "
            f"{F16_MAX:g}; {qtype} {what}: keep it with quant=f32 or bf16"
        )


def quantize(arr: np.ndarray, qtype: str) -> np.ndarray:
    """``arr`` (float32) as the bytes of GGML type ``qtype``: gguf-py's quantizer for
    Q4_0..Q8_0, :mod:`.kquants` for the k-quants."""
    import gguf

    if arr.size == 0:  # a tensor with no rows (or columns): its empty bytes, in the GGUF's
        # byte shape (the block quantizers' reshapes cannot infer a size from 0 elements)
        return np.zeros(
            gguf.quant_shape_to_byte_shape(arr.shape, getattr(gguf.GGMLQuantizationType, qtype)),
            dtype=np.uint8,
        )
    if qtype in K_QUANTS:
        from . import kquants

        return kquants.quantize(arr, qtype)
    return gguf.quants.quantize(arr, getattr(gguf.GGMLQuantizationType, qtype))


def dequantize(data: np.ndarray, ggml_type, shape: tuple[int, ...]) -> np.ndarray:
    """gguf-py's dequantizer of GGUF bytes, as float32 of ``shape``; an empty tensor (0 rows
    or columns) directly, since gguf-py's row grouping cannot reshape 0 bytes."""
    import gguf

    if not int(np.prod(shape)):
        return np.zeros(shape, dtype=np.float32)
    return gguf.quants.dequantize(data, ggml_type).reshape(shape)


def weight_error(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Relative RMS and max abs error of dequantized ``got`` against ``ref`` (float64)."""
    ref = ref.astype(np.float64).reshape(-1)
    diff = got.astype(np.float64).reshape(-1) - ref
    norm = float(np.sqrt(np.mean(ref * ref))) if ref.size else 0.0
    rmse = float(np.sqrt(np.mean(diff * diff))) if diff.size else 0.0
    return {
        "rel_rmse": rmse / norm if norm else rmse,
        "max_abs": float(np.max(np.abs(diff))) if diff.size else 0.0,
    }
