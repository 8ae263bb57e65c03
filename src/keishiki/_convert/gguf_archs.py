"""What keishiki knows about each GGUF architecture it converts to and from, in one table.

One :class:`GGUFArch` per llama.cpp architecture, written the way llama.cpp's
``convert_hf_to_gguf.py`` writes it (``LlamaModel``, ``Qwen2Model``, ``Qwen3Model``,
``GemmaModel``, ``Gemma2Model``, ``Phi3MiniModel``):

- ``llama`` (model_type llama, mistral): Q/K rows permuted for llama.cpp's interleaved rotary.
- ``qwen2``: q/k/v biases, no permutation (llama.cpp's qwen2 graph uses NEOX rotary, HF's order).
- ``qwen3``: like qwen2 without biases, plus per-head ``q_norm``/``k_norm`` → ``attn_q_norm``/
  ``attn_k_norm``; ``head_dim`` is independent of hidden/heads, so ``attention.key_length``.
- ``phi3``: fused ``qkv_proj`` → ``attn_qkv`` and ``gate_up_proj`` → ``ffn_up`` as they are;
  ``rope.dimension_count`` from ``partial_rotary_factor``; no sliding window written as 0.
  LongRoPE checkpoints (``long_factor``/``short_factor``) are refused.
- ``gemma``/``gemma2``: RMSNorm weights stored as ``w + 1`` (HF's GemmaRMSNorm multiplies by
  ``1 + w``, llama.cpp's by ``w``); the tied ``lm_head`` is not stored; gemma2's extra
  post-attention/post-FFN norms and soft-capping/sliding-window metadata.

Tensor names come from the ``gguf`` package's own table (``gguf.get_tensor_name_map``); this
module only lists which Hugging Face tensors each architecture has, so GGUF → HF knows what to
produce.  Config ↔ metadata keys are :class:`Key` rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidRequest


@dataclass(frozen=True)
class Key:
    """One ``<arch>.<gguf>`` metadata key and the config.json entry it comes from.

    ``kind`` is the GGUF value type (``u32`` or ``f32``); ``required`` marks keys llama.cpp's
    loader refuses the file without (checked after writing); ``only_if_in_config`` writes it
    only when config.json has the entry (llama.cpp does so for ``head_dim`` → key_length);
    ``none_as`` is written for a null entry and read back as null (phi3's sliding_window 0).
    """

    gguf: str
    hf: str
    kind: str = "u32"
    required: bool = True
    only_if_in_config: bool = False
    none_as: int | None = None


_COMMON = (
    Key("block_count", "num_hidden_layers"),
    Key("context_length", "max_position_embeddings"),
    Key("embedding_length", "hidden_size"),
    Key("feed_forward_length", "intermediate_size"),
    Key("attention.head_count", "num_attention_heads"),
    Key("attention.head_count_kv", "num_key_value_heads"),
)
_ROPE_BASE = Key("rope.freq_base", "rope_theta", "f32")
_RMS_EPS = Key("attention.layer_norm_rms_epsilon", "rms_norm_eps", "f32")
_KEY_LEN = (Key("attention.key_length", "head_dim"), Key("attention.value_length", "head_dim"))

# Hugging Face layer tensors (``model.layers.N.<part>.weight|bias``) per architecture
_ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
_MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
_LLAMA_PARTS = ("input_layernorm", *_ATTN, "post_attention_layernorm", *_MLP)
_GEMMA2_PARTS = (*_LLAMA_PARTS, "pre_feedforward_layernorm", "post_feedforward_layernorm")
_PHI3_PARTS = (
    "input_layernorm",
    "self_attn.qkv_proj",
    "self_attn.o_proj",
    "post_attention_layernorm",
    "mlp.gate_up_proj",
    "mlp.down_proj",
)
_TOP_PARTS = ("model.embed_tokens", "model.norm", "lm_head")

# defaults llama.cpp / transformers assume when a config.json omits an entry
_DEFAULTS = {"max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}
DEFAULTS = _DEFAULTS  # read by gguf_edges: keys a GGUF may omit


@dataclass(frozen=True)
class GGUFArch:
    """How one architecture is written: GGUF name, HF classes, tensor changes, metadata.

    ``norm_offset`` is added to every ``*norm.weight`` on the way to GGUF (subtracted on the
    way back); ``permute_qk`` applies llama.cpp's rotary row permutation to attn_q/attn_k;
    ``store_lm_head`` False drops ``lm_head.weight`` (always tied to the embedding there);
    ``config_extra`` are fixed config.json entries for GGUF → HF; ``config_copies`` set one
    config entry from another on the way back (gemma2's ``query_pre_attn_scalar``: llama.cpp
    scales queries by ``head_dim``); ``bpe_pre_from_transformers`` names a byte-level BPE
    vocabulary's pre-tokenizer after the split transformers really applies to the folder
    (transformers 5 gives a qwen2 folder ``Qwen2Tokenizer``'s split whatever tokenizer.json
    says; llama.cpp calls it ``qwen2``; GPT-2's own split is ``gpt-2``). The llama path keeps
    gguf_vocab's choice.
    ``refuse_rope`` lists rope parameters keishiki cannot write for it (phi3's LongRoPE
    factors, which llama.cpp stores as extra ``rope_factors_*`` tensors).
    """

    name: str
    model_types: tuple[str, ...]
    hf_class: str
    hf_model_type: str
    layer_parts: tuple[str, ...]
    keys: tuple[Key, ...]
    permute_qk: bool = False
    norm_offset: float = 0.0
    store_lm_head: bool = True
    config_extra: dict[str, Any] = field(default_factory=dict)
    config_copies: tuple[tuple[str, str], ...] = ()
    bpe_pre_from_transformers: bool = True
    refuse_rope: tuple[str, ...] = ()

    def required_keys(self) -> list[str]:
        """Metadata keys llama.cpp's loader requires for this architecture."""
        return [
            "general.architecture",
            *(f"{self.name}.{k.gguf}" for k in self.keys if k.required and not k.only_if_in_config),
        ]

    def name_maps(self, n_blocks: int) -> tuple[dict[str, str], dict[str, str]]:
        """(HF → GGUF, GGUF → HF) tensor names for ``n_blocks`` layers, from gguf's table."""
        import gguf

        arch_enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}.get(self.name)
        if arch_enum is None:  # an old gguf package (qwen3 came in 2025)
            raise InvalidRequest(
                f"the installed gguf package does not know architecture "
                f"{self.name!r}: pip install -U gguf"
            )
        table = gguf.get_tensor_name_map(arch_enum, n_blocks)
        hf_bases = [
            *_TOP_PARTS,
            *(f"model.layers.{b}.{p}" for b in range(n_blocks) for p in self.layer_parts),
        ]
        forward = {}
        for base in hf_bases:
            gguf_base = table.get_name(base)
            if gguf_base is None:
                continue  # e.g. gemma's lm_head: not stored
            for suffix in (".weight", ".bias"):
                forward[base + suffix] = gguf_base + suffix
        return forward, {v: k for k, v in forward.items()}

    def offset_of(self, hf_name: str) -> float:
        """What is added to tensor ``hf_name`` on the way to GGUF (0.0: nothing)."""
        return self.norm_offset if hf_name.endswith("norm.weight") else 0.0


ARCHS: dict[str, GGUFArch] = {
    a.name: a
    for a in (
        GGUFArch(
            "llama",
            ("llama", "mistral"),
            "LlamaForCausalLM",
            "llama",
            _LLAMA_PARTS,
            (*_COMMON, Key("rope.dimension_count", "head_dim"), _ROPE_BASE, _RMS_EPS),
            permute_qk=True,
            config_extra={"hidden_act": "silu", "attention_bias": False},
            bpe_pre_from_transformers=False,
        ),
        GGUFArch(
            "qwen2",
            ("qwen2",),
            "Qwen2ForCausalLM",
            "qwen2",
            _LLAMA_PARTS,
            (
                *_COMMON,
                _ROPE_BASE,
                _RMS_EPS,
                *(Key(k.gguf, k.hf, only_if_in_config=True) for k in _KEY_LEN),
            ),
            config_extra={"hidden_act": "silu"},
        ),
        GGUFArch(
            "qwen3",
            ("qwen3",),
            "Qwen3ForCausalLM",
            "qwen3",
            (*_LLAMA_PARTS, "self_attn.q_norm", "self_attn.k_norm"),
            (
                *_COMMON,
                _ROPE_BASE,
                _RMS_EPS,
                *(Key(k.gguf, k.hf, only_if_in_config=True) for k in _KEY_LEN),
            ),
            config_extra={"hidden_act": "silu", "attention_bias": False},
        ),
        GGUFArch(
            "gemma",
            ("gemma",),
            "GemmaForCausalLM",
            "gemma",
            _LLAMA_PARTS,
            (
                *_COMMON,
                _RMS_EPS,
                *_KEY_LEN,
                Key("rope.freq_base", "rope_theta", "f32", required=False),
            ),
            norm_offset=1.0,
            store_lm_head=False,
            config_extra={
                "hidden_act": "gelu_pytorch_tanh",
                "hidden_activation": "gelu_pytorch_tanh",
            },
        ),
        GGUFArch(
            "gemma2",
            ("gemma2",),
            "Gemma2ForCausalLM",
            "gemma2",
            _GEMMA2_PARTS,
            (
                *_COMMON,
                _RMS_EPS,
                *_KEY_LEN,
                Key("rope.freq_base", "rope_theta", "f32", required=False),
                Key("attention.sliding_window", "sliding_window", required=False),
                Key("attn_logit_softcapping", "attn_logit_softcapping", "f32", required=False),
                Key("final_logit_softcapping", "final_logit_softcapping", "f32", required=False),
            ),
            norm_offset=1.0,
            store_lm_head=False,
            config_extra={
                "hidden_act": "gelu_pytorch_tanh",
                "hidden_activation": "gelu_pytorch_tanh",
            },
            config_copies=(("query_pre_attn_scalar", "head_dim"),),
        ),
        GGUFArch(
            "phi3",
            ("phi3",),
            "Phi3ForCausalLM",
            "phi3",
            _PHI3_PARTS,
            (
                *_COMMON,
                _RMS_EPS,
                Key("rope.dimension_count", "partial_rotary_factor"),
                _ROPE_BASE,
                Key(
                    "rope.scaling.original_context_length",
                    "original_max_position_embeddings",
                    required=False,
                ),
                Key("attention.sliding_window", "sliding_window", none_as=0),
            ),
            config_extra={"hidden_act": "silu"},
            refuse_rope=("long_factor", "short_factor"),
        ),
    )
}


def for_config(config: dict[str, Any], where: Any = "") -> GGUFArch:
    """The architecture a config.json is written as.

    Raises:
        InvalidRequest: the model_type is not one keishiki writes as GGUF.
    """
    model_type = config.get("model_type")
    classes = set(config.get("architectures") or [])
    for arch in ARCHS.values():
        if model_type in arch.model_types or (not model_type and arch.hf_class in classes):
            return arch
    if "MistralForCausalLM" in classes:
        return ARCHS["llama"]
    supported = ", ".join(t for a in ARCHS.values() for t in a.model_types)
    raise InvalidRequest(
        f"{where}: model_type {model_type!r}: keishiki writes GGUF for "
        f"{supported} only; use to=safetensors, or llama.cpp's "
        f"convert_hf_to_gguf.py"
    )


def for_gguf(kv: dict[str, Any]) -> GGUFArch | None:
    """The architecture of a GGUF file's metadata (None: keishiki does not map it)."""
    return ARCHS.get(kv.get("general.architecture"))


def config_value(config: dict[str, Any], hf_key: str) -> Any:
    """A config.json entry with the fallbacks llama.cpp and transformers use."""
    value = config.get(hf_key)
    if value is not None:
        return value
    if hf_key == "num_key_value_heads":
        return config["num_attention_heads"]
    if hf_key == "head_dim":
        return int(config["hidden_size"]) // int(config["num_attention_heads"])
    if hf_key in ("rope_theta", "partial_rotary_factor"):  # transformers 5: rope_parameters
        value = _rope(config).get(hf_key)
    if value is None and hf_key == "partial_rotary_factor":
        value = 1.0
    return value if value is not None else _DEFAULTS.get(hf_key)


def _rope(config: dict[str, Any]) -> dict[str, Any]:
    return config.get("rope_parameters") or config.get("rope_scaling") or {}


def _to_gguf_value(config: dict[str, Any], key: Key) -> Any:
    """The value of ``key`` for a config.json (None: not written)."""
    value = config_value(config, key.hf)
    if value is None:
        return key.none_as
    if key.hf == "partial_rotary_factor":  # llama.cpp stores the rotated dims per head
        return int(float(value) * int(config["hidden_size"])) // int(config["num_attention_heads"])
    return value


def _to_hf_value(config: dict[str, Any], key: Key, value: Any) -> Any:
    """The config.json value of GGUF ``value`` for ``key`` (None: leave the entry out)."""
    if key.none_as is not None and value == key.none_as:
        return None
    if key.hf == "partial_rotary_factor":
        return int(value) * config["num_attention_heads"] / config["hidden_size"]
    return float(value) if key.kind == "f32" else int(value)


def config_problems(arch: GGUFArch, config: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(refusals, warnings) for writing ``config`` as ``arch``: what the GGUF cannot carry.

    Refusals: entries llama.cpp's loader needs that config.json lacks (the file would fail
    verification, or the conversion crash, after the whole write); rope parameters the
    architecture needs extra tensors for (``refuse_rope``).
    Warnings: a rope scaling type keishiki does not write (the GGUF computes as unscaled), and
    an entry llama.cpp derives from another one set to something else (``config_copies``).
    """
    missing = [hf_key for hf_key in _needed_entries(arch) if _lookup(config, hf_key) is None]
    if missing:
        return [
            f"config.json has no {', '.join(missing)}, which the GGUF metadata needs; add "
            f"{'it' if len(missing) == 1 else 'them'} to config.json"
        ], []
    rope = _rope(config)
    refusals = [
        f"rope {k!r} (rope_type {rope.get('rope_type')!r}) needs llama.cpp's "
        f"rope_factors tensors, which keishiki does not write; use llama.cpp's "
        f"convert_hf_to_gguf.py"
        for k in arch.refuse_rope
        if rope.get(k)
    ]
    warnings = []
    rope_type = rope.get("rope_type") or rope.get("type")
    if rope_type not in (None, "default", "linear") and not refusals:
        warnings.append(
            f"rope_type {rope_type!r}: not written to the GGUF (llama.cpp will use unscaled rope)"
        )
    for dst, src in arch.config_copies:
        if config.get(dst) is not None and config[dst] != config_value(config, src):
            warnings.append(
                f"{dst} {config[dst]} != {src} {config_value(config, src)}: "
                f"llama.cpp uses {src} for it ({arch.name}), so the GGUF computes "
                f"differently"
            )
    return refusals, warnings


def needed_tensors(arch: GGUFArch, n_blocks: int) -> list[str]:
    """HF names of the weights a model of ``arch`` cannot run without (llama.cpp refuses a
    GGUF lacking them; transformers would random-initialise them). ``lm_head`` is not among
    them: without it both tie the head to the embedding."""
    return [
        "model.embed_tokens.weight",
        "model.norm.weight",
        *(f"model.layers.{i}.{part}.weight" for i in range(n_blocks) for part in arch.layer_parts),
    ]


def _needed_entries(arch: GGUFArch) -> list[str]:
    """config.json entries a GGUF of ``arch`` cannot be written without."""
    base = ["num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size"]
    return list(
        dict.fromkeys(
            base
            + [
                k.hf
                for k in arch.keys
                if k.required and not k.only_if_in_config and k.none_as is None
            ]
        )
    )


def _lookup(config: dict[str, Any], hf_key: str) -> Any:
    """:func:`config_value`, None where a fallback's own entry is missing too."""
    try:
        return config_value(config, hf_key)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def metadata_from_config(arch: GGUFArch, config: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """``(key, kind, value)`` of every ``<arch>.*`` key to write, from a config.json
    (kind ``u32``, ``f32`` or ``str``)."""
    out = []
    rope = _rope(config)
    if (rope.get("rope_type") or rope.get("type")) == "linear" and rope.get("factor"):
        # llama.cpp divides positions by rope.scaling.factor for type "linear", as HF does
        out += [
            (f"{arch.name}.rope.scaling.type", "str", "linear"),
            (f"{arch.name}.rope.scaling.factor", "f32", float(rope["factor"])),
        ]
    for key in arch.keys:
        if key.only_if_in_config and config.get(key.hf) is None:
            continue
        value = _to_gguf_value(config, key)
        if value is None:
            continue
        out.append(
            (f"{arch.name}.{key.gguf}", key.kind, float(value) if key.kind == "f32" else int(value))
        )
    return out


def config_from_metadata(
    arch: GGUFArch, kv: dict[str, Any], vocab_size: int, tied: bool, dtype: str
) -> dict[str, Any]:
    """A config.json for ``arch.hf_class`` from GGUF metadata (``kv``: ``<arch>.*`` keys)."""
    config: dict[str, Any] = {"architectures": [arch.hf_class], "model_type": arch.hf_model_type}
    late = []
    for key in arch.keys:
        value = kv.get(f"{arch.name}.{key.gguf}")
        if value is None:
            continue
        if key.hf == "partial_rotary_factor":
            late.append((key, value))  # needs hidden_size and heads first
        elif (hf_value := _to_hf_value(config, key, value)) is not None:
            config[key.hf] = hf_value
    for key, value in late:
        config[key.hf] = _to_hf_value(config, key, value)
    if kv.get(f"{arch.name}.rope.scaling.type") == "linear":
        config["rope_scaling"] = {
            "rope_type": "linear",
            "factor": float(kv[f"{arch.name}.rope.scaling.factor"]),
        }
    heads = config["num_attention_heads"]
    config.setdefault("num_key_value_heads", heads)
    config.setdefault("head_dim", config["hidden_size"] // heads)
    for hf_key, default in _DEFAULTS.items():
        config.setdefault(hf_key, default)
    for dst, src in arch.config_copies:
        config[dst] = config[src]
    config.update(vocab_size=vocab_size, tie_word_embeddings=tied, **arch.config_extra)
    config["dtype"] = dtype
    for key, hf_key in (
        ("tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
        ("tokenizer.ggml.padding_token_id", "pad_token_id"),
    ):
        if key in kv:
            config[hf_key] = int(kv[key])
    return config
