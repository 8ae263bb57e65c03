"""Hugging Face ↔ GGUF naming for the llama family: tensor names, the rotary Q/K permutation,
and config.json ↔ GGUF metadata.

llama.cpp's ``convert_hf_to_gguf.py`` (``LlamaModel.permute``) reorders the rows of
``q_proj``/``k_proj`` (weights and biases) so that rotary embedding pairs are interleaved
((re, im) adjacent) instead of split in halves as in Hugging Face.  The inverse here restores
the HF order exactly, so HF → GGUF → HF round-trips bit for bit at f32.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

LLAMA_ARCHES = {"llama", "mistral"}  # model_type values written as GGUF architecture "llama"
LLAMA_CLASSES = {"LlamaForCausalLM", "MistralForCausalLM"}

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


def is_llama(config: dict[str, Any]) -> bool:
    """True for a config.json of the llama family (llama, mistral)."""
    return (config.get("model_type") in LLAMA_ARCHES
            or bool(LLAMA_CLASSES & set(config.get("architectures") or [])))


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


def config_to_gguf_kv(config: dict[str, Any]) -> dict[str, Any]:
    """The ``llama.*`` metadata llama.cpp needs, from a config.json."""
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    return {
        "block_count": int(config["num_hidden_layers"]),
        "context_length": int(config.get("max_position_embeddings", 2048)),
        "embedding_length": hidden,
        "feed_forward_length": int(config["intermediate_size"]),
        "head_count": heads,
        "head_count_kv": int(config.get("num_key_value_heads") or heads),
        "rope_dimension_count": head_dim,
        "rope_freq_base": float(config.get("rope_theta")
                                or (config.get("rope_parameters") or {}).get("rope_theta")
                                or 10000.0),
        "rms_eps": float(config.get("rms_norm_eps", 1e-5)),
        "vocab_size": int(config["vocab_size"]),
    }


def gguf_kv_to_config(kv: dict[str, Any], vocab_size: int, tied: bool,
                      dtype: str) -> dict[str, Any]:
    """A llama config.json from GGUF metadata (``kv`` holds ``llama.*`` and ``general.*``)."""
    hidden = int(kv["llama.embedding_length"])
    heads = int(kv["llama.attention.head_count"])
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(kv["llama.feed_forward_length"]),
        "num_hidden_layers": int(kv["llama.block_count"]),
        "num_attention_heads": heads,
        "num_key_value_heads": int(kv.get("llama.attention.head_count_kv", heads)),
        "head_dim": int(kv.get("llama.rope.dimension_count", hidden // heads)),
        "max_position_embeddings": int(kv.get("llama.context_length", 2048)),
        "rms_norm_eps": float(kv.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(kv.get("llama.rope.freq_base", 10000.0)),
        "vocab_size": vocab_size,
        "hidden_act": "silu",
        "tie_word_embeddings": tied,
        "attention_bias": False,
        "dtype": dtype,
    }
    for key, hf_key in (("tokenizer.ggml.bos_token_id", "bos_token_id"),
                        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
                        ("tokenizer.ggml.padding_token_id", "pad_token_id")):
        if key in kv:
            config[hf_key] = int(kv[key])
    return config
