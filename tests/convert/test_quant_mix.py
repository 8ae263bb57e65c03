"""Which tensor gets which GGML type: llama.cpp's llama_tensor_get_type for a llama model."""

from __future__ import annotations

import pytest

from keishiki._convert import gguf_quant as gq

N_LAYER = 32  # Llama-3-8B's shapes: 32 heads, 8 KV heads (n_gqa 4), ffn 14336, vocab 128256
MORE_BITS = [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]  # use_more_bits(i, 32)


def llama_tensors(
    n_layer: int = N_LAYER,
    tied: bool = False,
    hidden: int = 4096,
    ffn: int = 14336,
    kv: int = 1024,
    vocab: int = 128256,
):
    """(name, row-major shape) in convert_hf_to_gguf's order."""
    out = [("token_embd.weight", (vocab, hidden))]
    for i in range(n_layer):
        b = f"blk.{i}."
        out += [
            (b + "attn_norm.weight", (hidden,)),
            (b + "attn_q.weight", (hidden, hidden)),
            (b + "attn_k.weight", (kv, hidden)),
            (b + "attn_v.weight", (kv, hidden)),
            (b + "attn_output.weight", (hidden, hidden)),
            (b + "ffn_norm.weight", (hidden,)),
            (b + "ffn_gate.weight", (ffn, hidden)),
            (b + "ffn_up.weight", (ffn, hidden)),
            (b + "ffn_down.weight", (hidden, ffn)),
        ]
    out.append(("output_norm.weight", (hidden,)))
    if not tied:
        out.append(("output.weight", (vocab, hidden)))
    return out


def assign(quant: str, tensors=None, n_head: int = 32, n_head_kv: int = 8) -> dict[str, str]:
    tensors = tensors or llama_tensors()
    state = gq.MixState.for_names([n for n, _ in tensors], n_head, n_head_kv, N_LAYER)
    return {n: gq.tensor_type(n, shape, quant, state) for n, shape in tensors}


def layers_with(types: dict[str, str], kind: str, qtype: str) -> list[int]:
    return [i for i in range(N_LAYER) if types[f"blk.{i}.{kind}.weight"] == qtype]


@pytest.mark.parametrize(
    "quant, kind, qtype, layers",
    [
        ("q4_K_M", "attn_v", "Q6_K", MORE_BITS),
        ("q4_K_M", "ffn_down", "Q6_K", MORE_BITS),
        ("q5_K_M", "attn_v", "Q6_K", MORE_BITS),
        ("q5_K_M", "ffn_down", "Q6_K", MORE_BITS),
        ("q4_K_S", "attn_v", "Q5_K", [0, 1, 2, 3]),
        ("q4_K_S", "ffn_down", "Q5_K", [0, 1, 2, 3]),
        ("q3_K_M", "attn_v", "Q5_K", [0, 1]),
        ("q3_K_M", "ffn_down", "Q5_K", [0, 1]),
        ("q3_K_M", "attn_output", "Q4_K", list(range(N_LAYER))),
        ("q2_K", "attn_v", "Q4_K", list(range(N_LAYER))),  # n_gqa 4
        ("q2_K", "ffn_down", "Q3_K", list(range(N_LAYER))),
        ("q2_K", "attn_output", "Q3_K", list(range(N_LAYER))),
    ],
)
def test_layers_kept_higher(quant, kind, qtype, layers):
    assert layers_with(assign(quant), kind, qtype) == layers


@pytest.mark.parametrize(
    "quant, default, rest",
    [
        ("q4_K_M", "Q4_K", {"attn_v": "Q4_K", "ffn_down": "Q4_K"}),
        ("q4_K_S", "Q4_K", {"attn_v": "Q4_K", "ffn_down": "Q4_K"}),
        ("q5_K_M", "Q5_K", {"attn_v": "Q5_K", "ffn_down": "Q5_K"}),
        ("q3_K_M", "Q3_K", {"attn_v": "Q4_K", "ffn_down": "Q4_K"}),
        ("q2_K", "Q2_K", {}),
        ("q6_K", "Q6_K", {"attn_v": "Q6_K", "ffn_down": "Q6_K"}),
        ("q4_0", "Q4_0", {"attn_v": "Q4_0", "ffn_down": "Q4_0"}),
        ("q5_1", "Q5_1", {"attn_v": "Q5_1", "ffn_down": "Q5_1"}),
    ],
)
def test_default_type_output_embedding_and_norms(quant, default, rest):
    types = assign(quant)
    assert types["output.weight"] == "Q6_K"  # kept higher for every type but q8_0
    assert types["token_embd.weight"] == default  # untied: the mix's own type
    assert types["blk.5.attn_q.weight"] == types["blk.5.ffn_up.weight"] == default
    assert types["blk.5.attn_norm.weight"] == types["output_norm.weight"] == "F32"
    for kind, qtype in rest.items():
        assert types[f"blk.10.{kind}.weight"] == qtype  # a layer use_more_bits skips


@pytest.mark.parametrize("alias, mix", [("q4_K", "q4_K_M"), ("q5_K", "q5_K_M"), ("q3_K", "q3_K_M")])
def test_llama_quantize_aliases(alias, mix):
    assert assign(alias) == assign(mix)
    assert gq.file_type(alias) == gq.file_type(mix)


@pytest.mark.parametrize(
    "quant, ftype",
    [
        ("q4_0", 2),
        ("q4_1", 3),
        ("q8_0", 7),
        ("q5_0", 8),
        ("q5_1", 9),
        ("q2_K", 10),
        ("q3_K_M", 12),
        ("q4_K_S", 14),
        ("q4_K_M", 15),
        ("q5_K_M", 17),
        ("q6_K", 18),
        ("f16", 1),
        ("bf16", 32),
    ],
)
def test_general_file_type_is_llama_ftype(quant, ftype):
    import gguf

    assert gq.file_type(quant) == ftype
    if quant not in ("f16", "bf16", "q8_0"):
        assert gguf.LlamaFileType[f"MOSTLY_{quant.upper()}"] == ftype


def test_tied_embedding_takes_the_output_type():
    types = assign("q4_K_M", llama_tensors(tied=True))
    assert "output.weight" not in types
    assert types["token_embd.weight"] == "Q6_K"


def test_q2_k_attn_v_without_gqa():
    assert assign("q2_K", n_head=32, n_head_kv=32)["blk.3.attn_v.weight"] == "Q3_K"


@pytest.mark.parametrize(
    "quant, width, expected",
    [
        ("q4_K_M", 96, "Q5_0"),
        ("q5_K_M", 96, "Q5_1"),
        ("q6_K", 96, "Q8_0"),
        ("q3_K_M", 96, "Q4_0"),
        ("q2_K", 96, "Q4_0"),
        ("q4_K_M", 100, "F16"),
        ("q4_0", 100, "F16"),
        ("q4_K_M", 512, "Q4_K"),
    ],
)
def test_rows_not_a_multiple_of_256_fall_back(quant, width, expected):
    tensors = [("blk.0.ffn_gate.weight", (64, width))]
    assert assign(quant, tensors)["blk.0.ffn_gate.weight"] == expected


@pytest.mark.parametrize("width, expected", [(96, "Q8_0"), (512, "Q6_K"), (100, "F16")])
def test_output_rows_not_whole_blocks_get_q8_0(width, expected):
    tensors = [("output.weight", (1000, width))]
    assert assign("q4_K_M", tensors)["output.weight"] == expected


def test_70b_attn_v_gets_q5_k():
    tensors = llama_tensors(n_layer=80, hidden=512, ffn=1024, kv=128, vocab=1000)
    state = gq.MixState.for_names([n for n, _ in tensors], 64, 8, 80)
    types = {n: gq.tensor_type(n, s, "q3_K_M", state) for n, s in tensors}
    assert types["blk.40.attn_v.weight"] == "Q5_K"  # Q4_K lifted for LLM_TYPE_70B


@pytest.mark.parametrize(
    "name, shape",
    [
        ("blk.0.attn_norm.weight", (4096,)),
        ("blk.0.attn_q.bias", (64, 4096)),
        ("blk.0.ffn_gate_inp.weight", (8, 4096)),
        ("position_embd.weight", (512, 4096)),
    ],
)
def test_not_quantized(name, shape):
    assert not gq.allows_quantization(name, shape)
