"""Hugging Face ↔ GGUF naming for the llama family: tensor names (the table ``keishiki map``
and ``compare`` use) and the rotary Q/K permutation.  The conversion edges take names and
config ↔ metadata keys of every architecture from :mod:`.gguf_archs`.

llama.cpp's ``convert_hf_to_gguf.py`` (``LlamaModel.permute``) reorders the rows of
``q_proj``/``k_proj`` (weights and biases) so that rotary embedding pairs are interleaved
((re, im) adjacent) instead of split in halves as in Hugging Face.  The inverse here restores
the HF order exactly, so HF → GGUF → HF round-trips bit for bit at f32.
"""

from __future__ import annotations

import re

import numpy as np

_TOP = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.bias": "attn_output.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_TOP_BACK = {v: k for k, v in _TOP.items()}
_LAYER_BACK = {v: k for k, v in _LAYER.items()}
_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_GGUF_LAYER = re.compile(r"^blk\.(\d+)\.(.+)$")
# tensors llama.cpp does not store (recomputed at load time)
SKIPPED_HF = re.compile(r"\.rotary_emb\.inv_freq$")


def hf_to_gguf_name(name: str) -> str | None:
    """``model.layers.3.self_attn.q_proj.weight`` → ``blk.3.attn_q.weight``; None if unknown."""
    if name in _TOP:
        return _TOP[name]
    m = _HF_LAYER.match(name)
    if m and m.group(2) in _LAYER:
        return f"blk.{m.group(1)}.{_LAYER[m.group(2)]}"
    return None


def gguf_to_hf_name(name: str) -> str | None:
    """``blk.3.attn_q.weight`` → ``model.layers.3.self_attn.q_proj.weight``; None if unknown."""
    if name in _TOP_BACK:
        return _TOP_BACK[name]
    m = _GGUF_LAYER.match(name)
    if m and m.group(2) in _LAYER_BACK:
        return f"model.layers.{m.group(1)}.{_LAYER_BACK[m.group(2)]}"
    return None


def rotary_heads(gguf_name: str, n_head: int, n_head_kv: int) -> int | None:
    """How many heads the Q/K permutation groups by for this tensor (None: not permuted)."""
    kind = gguf_name.split(".")[-2] if gguf_name.startswith("blk.") else ""
    if kind == "attn_q":
        return n_head
    if kind == "attn_k":
        return n_head_kv
    return None


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute``: HF half-split rotary rows → interleaved pairs."""
    return (w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of :func:`permute`: interleaved rotary rows → HF half-split order."""
    return (w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))
