"""Parameter count and KV cache of a decoder LLM from its ``config.json`` alone.

A folder about to be downloaded into holds only ``config.json``; this module says how big
the weights will be and how much KV cache a context costs, without a tensor in sight.  Each
family's :class:`Layout` restates what transformers' ``modeling_<family>.py`` builds (which
projections, which biases, how many norms, tied or not), so for the dense families the count
equals ``sum(p.numel() for p in model.parameters())`` of ``from_config`` exactly (the tests
build each one).  Families without a layout here get no estimate rather than a guess:
DeepSeek's latent attention or a hybrid Mamba stack would make a Llama-shaped count wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# bytes per element of the KV cache (vLLM's kv_cache_dtype "auto" is the model's dtype)
KV_DTYPES = {"fp16": 2, "bf16": 2, "fp32": 4, "fp8": 1}
# the MLP width where a family names it differently; absent, it is 4 × hidden
WIDTH_4X = {"gpt2": "n_inner", "falcon": "ffn_hidden_size"}
# config.json names of each size, in the order families use them (GPT-2: n_embd, n_layer...)
SIZE_KEYS = {
    "layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "hidden": ("hidden_size", "n_embd", "n_embed"),
    "heads": ("num_attention_heads", "n_head"),
    "kv_heads": ("num_key_value_heads", "num_kv_heads"),
    "intermediate": ("intermediate_size",),
    "vocab": ("vocab_size",),
    "context": ("max_position_embeddings", "n_positions"),
}


@dataclass(frozen=True)
class Layout:
    """How one family builds a decoder layer; ``(key, default)`` pairs name the config.json
    switch and the config class's default when the file leaves it out."""

    layer_norm: bool = False  # LayerNorm (weight + bias), else RMSNorm (weight)
    norms_per_layer: int = 2
    qkv_bias: tuple[str | None, bool] = (None, False)
    o_bias: tuple[str | None, bool] = (None, False)
    gated_mlp: bool = True  # gate/up/down, else up/down (GPT-2, NeoX, Falcon)
    mlp_bias: tuple[str | None, bool] = (None, False)
    qk_norm: bool = False  # per-head RMSNorm on q and k (Qwen3, Gemma 3)
    learned_positions: bool = False  # GPT-2's wpe
    tie: bool = False  # tie_word_embeddings default of the config class
    head_dim: int | None = None  # head_dim default when it is not hidden/heads
    window: int | None = None  # sliding_window default (Gemma 2/3)
    moe: str | None = None  # "mixtral", "qwen2_moe", "qwen3_moe"


_LLAMA_BIAS = {"qkv_bias": ("attention_bias", False), "o_bias": ("attention_bias", False)}
LAYOUTS: dict[str, Layout] = {
    "llama": Layout(**_LLAMA_BIAS, mlp_bias=("mlp_bias", False)),
    "mistral": Layout(),
    "mixtral": Layout(moe="mixtral"),
    "qwen2": Layout(qkv_bias=(None, True)),
    "qwen2_moe": Layout(qkv_bias=("qkv_bias", True), moe="qwen2_moe"),
    "qwen3": Layout(**_LLAMA_BIAS, qk_norm=True, head_dim=128),
    "qwen3_moe": Layout(**_LLAMA_BIAS, qk_norm=True, moe="qwen3_moe"),
    "gemma": Layout(**_LLAMA_BIAS, tie=True, head_dim=256),
    "gemma2": Layout(**_LLAMA_BIAS, norms_per_layer=4, tie=True, head_dim=256, window=4096),
    "gemma3_text": Layout(
        **_LLAMA_BIAS, norms_per_layer=4, qk_norm=True, tie=True, head_dim=256, window=4096
    ),
    "phi3": Layout(),
    "gpt2": Layout(
        layer_norm=True,
        qkv_bias=(None, True),
        o_bias=(None, True),
        gated_mlp=False,
        mlp_bias=(None, True),
        learned_positions=True,
        tie=True,
    ),
    "gpt_neox": Layout(
        layer_norm=True,
        qkv_bias=("attention_bias", True),
        o_bias=("attention_bias", True),
        gated_mlp=False,
        mlp_bias=(None, True),
    ),
    "falcon": Layout(
        layer_norm=True,
        qkv_bias=("bias", False),
        o_bias=("bias", False),
        gated_mlp=False,
        mlp_bias=("bias", False),
        tie=True,
    ),
}


def _get(config: dict[str, Any], name: str) -> Any:
    return next((config[k] for k in SIZE_KEYS[name] if config.get(k) is not None), None)


def _switch(config: dict[str, Any], spec: tuple[str | None, bool]) -> bool:
    key, default = spec
    return bool(config.get(key, default)) if key else default


MAX_LAYERS = 100_000  # the largest published models have a few hundred


@dataclass(frozen=True)
class _Dims:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    context: int | None


def _dims(family: str, config: dict[str, Any]) -> tuple[_Dims | None, list[str]]:
    """The sizes the count needs, with each family's defaults; (None, missing) when
    config.json leaves out one transformers would fill from its class default."""
    layout = LAYOUTS[family]
    sizes = {name: _get(config, name) for name in SIZE_KEYS}
    if family in WIDTH_4X and isinstance(sizes["hidden"], int):
        # GPT-2 and Falcon ignore intermediate_size: their own key, or 4 × hidden
        sizes["intermediate"] = config.get(WIDTH_4X[family]) or 4 * sizes["hidden"]
    missing = [
        n
        for n in ("layers", "hidden", "heads", "intermediate", "vocab")
        if not isinstance(sizes[n], int) or isinstance(sizes[n], bool)
    ]
    if family in ("mixtral", "qwen2_moe", "qwen3_moe") and "intermediate" in missing:
        missing.remove("intermediate")  # MoE-only layers need no dense MLP width
        sizes["intermediate"] = 0
    if missing:
        return None, missing
    heads, hidden = sizes["heads"], sizes["hidden"]
    head_dim = config.get("head_dim") or layout.head_dim or hidden // heads
    return _Dims(
        sizes["layers"],
        hidden,
        heads,
        _kv_heads(family, config, heads),
        head_dim,
        sizes["intermediate"],
        sizes["vocab"],
        sizes["context"],
    ), []


def _kv_heads(family: str, config: dict[str, Any], heads: int) -> int:
    """Heads of K and V: GQA's num_key_value_heads; Falcon's three attention variants."""
    if family == "falcon":
        if config.get("new_decoder_architecture"):
            return config.get("num_kv_heads") or heads
        return 1 if config.get("multi_query", True) else heads
    if family in ("gpt2", "gpt_neox"):
        return heads  # plain multi-head attention
    return _get(config, "kv_heads") or heads


def _attention(layout: Layout, config: dict[str, Any], d: _Dims) -> int:
    """q/k/v/o projections (fused or not, the count is the same) with their biases."""
    q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    n = d.hidden * (q + 2 * kv) + q * d.hidden
    if _switch(config, layout.qkv_bias):
        n += q + 2 * kv
    if _switch(config, layout.o_bias):
        n += d.hidden
    return n + (2 * d.head_dim if layout.qk_norm else 0)


def _dense_mlp(layout: Layout, config: dict[str, Any], hidden: int, inner: int) -> int:
    if layout.gated_mlp:
        n, bias = 3 * hidden * inner, 2 * inner + hidden
    else:
        n, bias = 2 * hidden * inner, inner + hidden
    return n + (bias if _switch(config, layout.mlp_bias) else 0)


def _norms_per_layer(family: str, layout: Layout, config: dict[str, Any]) -> int:
    if family == "falcon":
        # modeling_falcon: two norms unless attention and MLP run in parallel off one norm
        n_ln = config.get("num_ln_in_parallel_attn") or (
            2 if config.get("new_decoder_architecture") else None
        )
        return 1 if config.get("parallel_attn", True) and n_ln != 2 else 2
    return layout.norms_per_layer


def _moe(layout: Layout, config: dict[str, Any], d: _Dims) -> dict[str, Any] | None:
    """Experts, their width, which layers are sparse, and the shared expert (Qwen2-MoE)."""
    if layout.moe is None:
        return None
    # transformers 5 writes num_local_experts for Qwen-MoE too; Hub files say num_experts
    experts = config.get("num_local_experts") or config.get("num_experts")
    width = d.intermediate if layout.moe == "mixtral" else config.get("moe_intermediate_size")
    shared = config.get("shared_expert_intermediate_size", 0) if layout.moe == "qwen2_moe" else 0
    if not experts or not width or shared is None:
        return None
    step = config.get("decoder_sparse_step") or 1
    dense = set(config.get("mlp_only_layers") or [])
    sparse = [i for i in range(d.layers) if i not in dense and (i + 1) % step == 0]
    return {
        "experts": experts,
        "experts_per_token": config.get("num_experts_per_tok"),
        "expert_width": width,
        "shared_width": shared,
        "sparse_layers": sparse,
    }


def _mlp_totals(
    layout: Layout, config: dict[str, Any], d: _Dims, moe: dict[str, Any] | None
) -> tuple[int, int, int]:
    """(MLP parameters over all layers, router parameters, parameters of the experts a token
    skips)."""
    if moe is None:
        return d.layers * _dense_mlp(layout, config, d.hidden, d.intermediate), 0, 0
    n_sparse = len(moe["sparse_layers"])
    expert = 3 * d.hidden * moe["expert_width"]
    per_sparse = moe["experts"] * expert
    if moe["shared_width"]:
        per_sparse += 3 * d.hidden * moe["shared_width"] + d.hidden  # + shared_expert_gate
    mlp = n_sparse * per_sparse + (d.layers - n_sparse) * _dense_mlp(
        layout, config, d.hidden, d.intermediate
    )
    skipped = n_sparse * (moe["experts"] - (moe["experts_per_token"] or moe["experts"])) * expert
    return mlp, n_sparse * d.hidden * moe["experts"], skipped


# transformers writes a multimodal model's text_config as a diff from the text config class's
# defaults (LLaVA 1.5's holds little more than vocab_size), so a key it leaves out has the
# class default: these, per family (checked against transformers by the tests)
_SIZES = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
)
_DEFAULT_SIZES = {
    "llama": (32000, 4096, 11008, 32, 32, None, 2048),  # no KV heads: as many as heads
    "mistral": (32000, 4096, 14336, 32, 32, 8, 131072),
    "qwen2": (151936, 4096, 22016, 32, 32, 32, 32768),
    "gemma": (256000, 3072, 24576, 28, 16, 16, 8192),
    "gemma2": (256000, 2304, 9216, 26, 8, 4, 8192),
    "gemma3_text": (262208, 2304, 9216, 26, 8, 4, 131072),
}
TEXT_CONFIG_DEFAULTS = {
    family: {k: v for k, v in zip(_SIZES, values) if v is not None}
    for family, values in _DEFAULT_SIZES.items()
}


def _family(config: dict[str, Any]) -> tuple[str | None, dict[str, Any], str]:
    """(family, the config part that describes the decoder, what the figures cover)."""
    model_type = config.get("model_type")
    if model_type in LAYOUTS:
        return model_type, config, "whole model"
    text = config.get("text_config")
    family = text.get("model_type") if isinstance(text, dict) else None
    if family in LAYOUTS:
        # Gemma 3, LLaVA...: the language model is a known family; the towers are not
        scope = (
            "language model only (text_config): the vision or audio encoder and "
            "projector are not counted"
        )
        if family in TEXT_CONFIG_DEFAULTS:
            text = {**TEXT_CONFIG_DEFAULTS[family], **text}
            scope += f"; sizes text_config leaves out are transformers' {family} defaults"
        return family, text, scope
    return None, config, f"no layout known for model_type {model_type!r}"


def _prepare(config: dict[str, Any]) -> tuple[str, dict[str, Any], str, _Dims] | dict[str, Any]:
    """The family, its config part, scope and sizes, or the "not estimated" answer."""
    family, part, scope = _family(config)
    if family is None:
        return {"estimated": False, "reason": scope}
    dims, missing = _dims(family, part)
    if dims is not None and not 0 < dims.layers <= MAX_LAYERS:
        # the per-layer lists below (sliding windows, MoE layers) are one item per layer: a
        # config.json of 200 bytes claiming 10**9 layers took gigabytes to count
        return {
            "estimated": False,
            "reason": f"config.json gives {dims.layers} layers: not a model keishiki counts "
            f"(at most {MAX_LAYERS})",
        }
    if dims is None:
        keys = ", ".join(SIZE_KEYS[name][0] for name in missing)
        return {
            "estimated": False,
            "reason": f"config.json gives no {keys}: transformers would use its class defaults",
        }
    return family, part, scope, dims


def parameters_from_config(config: dict[str, Any]) -> dict[str, Any]:
    """Estimate the parameter count of the model a config.json describes.

    Returns ``{"estimated": True, "total", "family", "scope", "breakdown"}`` (plus ``moe``
    with ``active_parameters`` per token for mixture-of-experts models), or
    ``{"estimated": False, "reason"}`` for a family without a layout or a config that
    leaves out a size.

    >>> parameters_from_config({"model_type": "llama", "vocab_size": 10, "hidden_size": 4,
    ...     "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2})["total"]
    252
    """
    prepared = _prepare(config)
    if isinstance(prepared, dict):
        return prepared
    family, part, scope, d = prepared
    layout = LAYOUTS[family]
    moe = _moe(layout, part, d)
    if layout.moe and moe is None:
        return {"estimated": False, "reason": "config.json gives no expert count or width"}
    if layout.learned_positions and not d.context:
        return {"estimated": False, "reason": "config.json gives no n_positions"}
    norm = d.hidden * (2 if layout.layer_norm else 1)
    mlp, router, skipped = _mlp_totals(layout, part, d, moe)
    tied = part.get("tie_word_embeddings", layout.tie)
    breakdown = {
        "embeddings": d.vocab * d.hidden
        + (d.context * d.hidden if layout.learned_positions else 0),
        "attention": d.layers * _attention(layout, part, d),
        "mlp": mlp,
        "router": router,
        "norms": (d.layers * _norms_per_layer(family, layout, part) + 1) * norm,
        "lm_head": 0 if tied else d.vocab * d.hidden,
    }
    total = sum(breakdown.values())
    result = {
        "total": total,
        "estimated": True,
        "family": family,
        "scope": scope,
        "tie_word_embeddings": bool(tied),
        "breakdown": breakdown,
    }
    if moe:
        result["moe"] = {
            "experts": moe["experts"],
            "experts_per_token": moe["experts_per_token"],
            "sparse_layers": len(moe["sparse_layers"]),
            "active_parameters": total - skipped,
        }
    return result


def _sliding_layers(
    family: str, config: dict[str, Any], layers: int
) -> tuple[int | None, list[int]]:
    """(window, indices of the layers that keep only the last ``window`` tokens)."""
    window = config["sliding_window"] if "sliding_window" in config else LAYOUTS[family].window
    if not window:
        return None, []
    types = config.get("layer_types")
    if isinstance(types, list) and len(types) == layers:
        sliding = [i for i, t in enumerate(types) if t == "sliding_attention"]
    elif family == "gemma2":
        sliding = [i for i in range(layers) if (i + 1) % 2]  # local, global, local, ...
    elif family == "gemma3_text":
        pattern = config.get("sliding_window_pattern") or 6  # five local, one global
        sliding = [i for i in range(layers) if (i + 1) % pattern]
    elif family.startswith("qwen") and config.get("use_sliding_window"):
        first = config.get("max_window_layers", 28)
        sliding = [i for i in range(layers) if i >= first]
    else:
        # Mistral v0.1 and Phi-3 name a window for every layer; whether a vLLM version
        # honours it varies, so the full context (the upper bound) is what is reported
        sliding = []
    return (window, sliding) if sliding else (None, [])


def kv_cache(config: dict[str, Any]) -> dict[str, Any]:
    """The KV cache one sequence needs: per token, and at the full context length.

    K and V of every attention layer: ``2 × layers × kv_heads × head_dim × dtype bytes``
    per token; a sliding-window layer (Gemma 2/3, ``layer_types``) stops growing at its
    window.  ``bytes_at_context`` is one sequence of ``max_position_embeddings`` tokens,
    the size vLLM must fit at ``max_model_len`` before it starts.

    >>> kv_cache({"model_type": "llama", "vocab_size": 10, "hidden_size": 64,
    ...     "intermediate_size": 8, "num_hidden_layers": 2, "num_attention_heads": 4,
    ...     "num_key_value_heads": 2})["bytes_per_token"]["fp16"]
    256
    """
    prepared = _prepare(config)
    if isinstance(prepared, dict):
        return prepared
    family, part, scope, d = prepared
    window, sliding = _sliding_layers(family, part, d.layers)
    per_layer = 2 * d.kv_heads * d.head_dim  # K and V elements for one token in one layer
    at_context = None
    if d.context:
        tokens = (d.layers - len(sliding)) * d.context + len(sliding) * min(window or 0, d.context)
        at_context = {k: tokens * per_layer * b for k, b in KV_DTYPES.items()}
    return {
        "bytes_per_token": {k: d.layers * per_layer * b for k, b in KV_DTYPES.items()},
        "bytes_at_context": at_context,
        "context_length": d.context,
        "sliding_window": window,
        "sliding_layers": len(sliding),
        "layers": d.layers,
        "kv_heads": d.kv_heads,
        "head_dim": d.head_dim,
        "estimated": True,
        "scope": scope,
    }
